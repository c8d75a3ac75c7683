"""Run a pairing between two entities over any transport: certificate to both, halves swapped,
completion to the controller.

The wiring the seed's flow implies (docs/seed.md §2.3): the controller issues the certificate; both entities
receive all of it; entity ``a`` starts the half exchange; entity ``b`` answers; ``a`` hands the
completion proof to the controller's callback, which records it, and ``a`` learns the outcome.

Each entity serves these steps as ops of its :class:`PairingService` (``pairing-accept``,
``pairing-start``, ``pairing-offer``, ``pairing-confirm``), so the same flow runs over HTTP, MQTT,
CAN or in process — whatever :class:`~modbatt.transport.http.EntityClient` reaches the entity
its access data names. The ops need no controller signature of their own: the certificate is
controller-signed and every offer is signed with a binding key, and the entity checks both.
``pairing-accept`` is idempotent and counts no use (anyone who saw the certificate can send it
again); its answer reports the sessions the entity derived, so the controller can tell uses that
were burned (derived by an entity, never recorded as completed: :meth:`AuthController.burned_uses`).

:func:`pair_over` issues a certificate and runs its first session; :func:`run_session` runs one
more session of a multi-use certificate (new session secrets, new traffic keys); :func:`renew_over`
issues the renewal of a pairing on the old certificate's terms and runs it (the switch itself is
each entity's :meth:`~modbatt.nodes.entity.EntityNode.handover`, docs/lifecycle.md §6).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import EncodingError, Reason, VerificationError
from ..model._fields import b64, b64_bytes, expect_map, uuid_text
from ..model.access import AccessData
from ..model.pairing import MAX_CERTIFICATE_BYTES, PairingCertificate, PairingMetadata
from ..protocol.pairing import SESSION_NONCE_BYTES, CompletionProof, PairingSecrets, transcript_of_offers
from ..transport.http import EntityClient, InProcessEntityClient
from .controller import AuthController
from .entity import EntityNode, rejection
from .errors_http import http_status
from .killpoints import kill_point

__all__ = [
    "PAIRING_OPS",
    "PairingOutcome",
    "PairingService",
    "pair_entities",
    "pair_over",
    "renew_entities",
    "renew_over",
    "renewal_terms",
    "run_session",
]

PAIRING_OPS = ("pairing-accept", "pairing-start", "pairing-offer", "pairing-confirm")
_MAX_OFFER_BYTES = 1024


@dataclass(frozen=True)
class PairingOutcome:
    """A completed pairing session: its certificate, where completion sits in the ledger, the offers.

    ``transcript`` is the session transcript hash (public: whoever relays both offers computes
    it). ``burned`` (by device id) counts sessions an entity derived before this one that the
    controller never recorded. ``secrets`` (by device id) is filled only where the entities are
    in this process.
    """

    certificate: PairingCertificate
    ledger_index: int
    offer_sizes: tuple[int, int]
    secrets: dict[str, PairingSecrets] = field(default_factory=dict)
    transcript: bytes = b""
    burned: dict[str, int] = field(default_factory=dict)


class PairingService:
    """An entity's pairing endpoint in the ``EntityClient`` contract (``handle(op, json)``)."""

    def __init__(self, node: EntityNode) -> None:
        self.node = node
        self.rejections: collections.Counter[Reason] = collections.Counter()

    @property
    def access_data(self) -> AccessData:
        return self.node.access_data

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]:
        """Answer one pairing op; never raises for bad input (4xx with the classified reason)."""
        # Kill point (docs/delivery.md §5); the offer, the one op that stores, has ``.stored`` too.
        kill_point("entity." + op.replace("-", "_") + ".received")
        try:
            return 200, self._handle(op, payload)
        except (VerificationError, EncodingError) as exc:
            reason = exc.reason
            self.rejections[reason] += 1
            return http_status(reason), rejection(reason, str(exc))

    def _handle(self, op: str, payload: Any) -> dict[str, Any]:
        if op == "pairing-accept":
            m = expect_map(payload, "pairing-accept", required={"certificate"})
            participant = self.node.accept_certificate(
                b64_bytes(m["certificate"], "certificate", max_len=MAX_CERTIFICATE_BYTES)
            )
            sessions = self.node.pairing_uses(participant.pairing_id)
            return {
                "pairing_id": participant.pairing_id,
                "role": participant.role,
                "uses": len(sessions),
                "sessions": [b64(n) for n in sessions],
            }
        if op not in PAIRING_OPS:
            raise VerificationError(Reason.MALFORMED, f"no pairing operation {op!r}")
        required = {"pairing_id", "offer"} if op == "pairing-offer" else {"pairing_id"}
        m = expect_map(payload, op, required=required)
        pairing_id = uuid_text(m["pairing_id"], "pairing_id")
        if op == "pairing-start":
            return {"offer": b64(self.node.pairing_start(pairing_id))}
        if op == "pairing-confirm":
            participant = self.node.pairings.get(pairing_id)
            if participant is None:
                raise VerificationError(Reason.WRONG_SESSION, "no pairing in progress with that id")
            if participant.completion is None or participant.state.value != "completing":
                raise VerificationError(Reason.WRONG_SESSION, "no completed session waiting for confirmation")
            participant.confirm()
            return {"pairing_id": pairing_id}
        reply = self.node.pairing_offer(pairing_id, b64_bytes(m["offer"], "offer", max_len=_MAX_OFFER_BYTES))
        completion = self.node.pairings[pairing_id].completion
        return {
            "reply": b64(reply) if reply is not None else None,
            "completion": completion.to_json() if completion is not None else None,
        }


def _answer_bytes(answer: Mapping[str, Any], key: str) -> bytes:
    value = answer.get(key) if isinstance(answer, Mapping) else None
    if not isinstance(value, str):
        raise VerificationError(Reason.MALFORMED, f"the entity's answer lacks {key!r}")
    return base64.b64decode(value, validate=True)


def _reported_sessions(answer: Any) -> list[bytes]:
    """Session nonces an entity's ``pairing-accept`` answer reports (empty if it reports none)."""
    sessions = answer.get("sessions") if isinstance(answer, Mapping) else None
    if not isinstance(sessions, list) or len(sessions) > 1024:
        return []
    return [b64_bytes(n, "sessions", size=SESSION_NONCE_BYTES) for n in sessions]


def run_session(controller: AuthController, client: EntityClient, certificate: PairingCertificate) -> PairingOutcome:
    """One session of ``certificate`` between its two entities through ``client`` (any use of it)."""
    meta = certificate.metadata
    pid = meta.pairing_id
    encoded = b64(certificate.encode())
    burned = {}
    for end in (meta.entity_a, meta.entity_b):  # the whole certificate to both (docs/seed.md §2.3)
        answer = client.call(end.endpoint, "pairing-accept", {"certificate": encoded})
        kill_point("controller.pair.accepted")
        burned[end.device_id] = controller.burned_uses(pid, _reported_sessions(answer))
    offer_a = _answer_bytes(client.call(meta.entity_a.endpoint, "pairing-start", {"pairing_id": pid}), "offer")
    kill_point("controller.pair.started")
    answer_b = client.call(meta.entity_b.endpoint, "pairing-offer", {"pairing_id": pid, "offer": b64(offer_a)})
    kill_point("controller.pair.offered_b")
    offer_b = _answer_bytes(answer_b, "reply")
    answer_a = client.call(meta.entity_a.endpoint, "pairing-offer", {"pairing_id": pid, "offer": b64(offer_b)})
    kill_point("controller.pair.offered_a")
    if not isinstance(answer_a, Mapping) or answer_a.get("completion") is None:
        raise VerificationError(Reason.MALFORMED, "entity a returned no completion proof")
    index = controller.complete_pairing(CompletionProof.from_json(answer_a["completion"]))
    kill_point("controller.pair.completed")
    client.call(meta.entity_a.endpoint, "pairing-confirm", {"pairing_id": pid})
    return PairingOutcome(
        certificate, index, (len(offer_a), len(offer_b)), transcript=transcript_of_offers(offer_a, offer_b),
        burned=burned,
    )  # fmt: skip


def pair_over(controller: AuthController, client: EntityClient, binding_id: str, **issue: Any) -> PairingOutcome:
    """Issue a certificate for ``binding_id`` and pair its two entities through ``client``."""
    return run_session(controller, client, controller.issue_pairing(binding_id, **issue))


def pair_entities(
    controller: AuthController,
    a: EntityNode,
    b: EntityNode,
    binding_id: str | None = None,
    *,
    certificate: PairingCertificate | None = None,
    **issue: Any,
) -> PairingOutcome:
    """Pair two entity nodes of this process (the same flow as :func:`pair_over`, no sockets).

    With ``certificate`` it runs the next session of that (multi-use) certificate instead of
    issuing a new one.
    """
    client = InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in (a, b)})
    if certificate is None:
        if binding_id is None:
            raise TypeError("pair_entities needs a binding_id or a certificate")
        certificate = controller.issue_pairing(binding_id, **issue)
    outcome = run_session(controller, client, certificate)
    pid = certificate.metadata.pairing_id
    secrets = {}
    for node in (a, b):
        s = node.pairing_secrets(pid)
        if s is not None:
            secrets[node.access_data.device_id] = s
    return dataclasses.replace(outcome, secrets=secrets)


def renewal_terms(metadata: PairingMetadata) -> dict[str, Any]:
    """:meth:`AuthController.issue_pairing` terms that reproduce a certificate (for its renewal)."""
    return {
        "context": metadata.context,
        "mode": metadata.controller_mode,
        "max_uses": metadata.max_uses,
        "policy": metadata.encryption_policy,
        "restrictions": metadata.restrictions,
        "profile": metadata.profile,
        "handshake_timeout_s": metadata.handshake_timeout_s,
        "valid_for_s": max((metadata.expires_at_ms - metadata.valid_from_ms) // 1000, 1),
    }


def renew_over(
    controller: AuthController, client: EntityClient, certificate: PairingCertificate, **overrides: Any
) -> PairingOutcome:
    """Renew ``certificate``'s pairing (same binding, its terms unless overridden) and run the new one."""
    meta = certificate.metadata
    renewal = controller.renew_pairing(meta.pairing_id, **{**renewal_terms(meta), **overrides})
    return run_session(controller, client, renewal)


def renew_entities(
    controller: AuthController, a: EntityNode, b: EntityNode, certificate: PairingCertificate, **overrides: Any
) -> PairingOutcome:
    """:func:`renew_over` between two entity nodes of this process."""
    client = InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in (a, b)})
    return renew_over(controller, client, certificate, **overrides)
