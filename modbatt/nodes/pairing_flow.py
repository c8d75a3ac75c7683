"""Run a pairing between two entities over any transport: certificate to both, halves swapped,
completion to the controller.

The wiring the seed's flow implies (2.3): the controller issues the certificate; both entities
receive all of it; entity ``a`` starts the half exchange; entity ``b`` answers; ``a`` hands the
completion proof to the controller's callback, which records it, and ``a`` learns the outcome.

Each entity serves these steps as ops of its :class:`PairingService` (``pairing-accept``,
``pairing-start``, ``pairing-offer``, ``pairing-confirm``), so the same flow runs over HTTP, MQTT,
CAN or in process — whatever :class:`~modbatt.transport.http.EntityClient` reaches the entity
its access data names. The ops need no controller signature of their own: the certificate is
controller-signed and every offer is signed with a binding key, and the entity checks both.
"""

from __future__ import annotations

import base64
import collections
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import EncodingError, Reason, VerificationError
from ..model._fields import b64, b64_bytes, expect_map, uuid_text
from ..model.access import AccessData
from ..model.pairing import MAX_CERTIFICATE_BYTES, PairingCertificate
from ..protocol.pairing import CompletionProof, PairingSecrets
from ..transport.http import EntityClient, InProcessEntityClient
from .controller import AuthController
from .entity import EntityNode, rejection
from .errors_http import http_status

__all__ = ["PAIRING_OPS", "PairingOutcome", "PairingService", "pair_entities", "pair_over"]

PAIRING_OPS = ("pairing-accept", "pairing-start", "pairing-offer", "pairing-confirm")
_MAX_OFFER_BYTES = 1024


@dataclass(frozen=True)
class PairingOutcome:
    """A completed pairing: its certificate, where completion sits in the ledger, the offer sizes.

    ``secrets`` (by device id) is filled only where the entities are in this process.
    """

    certificate: PairingCertificate
    ledger_index: int
    offer_sizes: tuple[int, int]
    secrets: dict[str, PairingSecrets] = field(default_factory=dict)


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
            return {"pairing_id": participant.pairing_id, "role": participant.role}
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


def pair_over(controller: AuthController, client: EntityClient, binding_id: str, **issue: Any) -> PairingOutcome:
    """Issue a certificate for ``binding_id`` and pair its two entities through ``client``."""
    cert = controller.issue_pairing(binding_id, **issue)
    meta = cert.metadata
    pid = meta.pairing_id
    encoded = b64(cert.encode())
    for end in (meta.entity_a, meta.entity_b):  # the whole certificate to both (seed 2.3)
        client.call(end.endpoint, "pairing-accept", {"certificate": encoded})
    offer_a = _answer_bytes(client.call(meta.entity_a.endpoint, "pairing-start", {"pairing_id": pid}), "offer")
    answer_b = client.call(meta.entity_b.endpoint, "pairing-offer", {"pairing_id": pid, "offer": b64(offer_a)})
    offer_b = _answer_bytes(answer_b, "reply")
    answer_a = client.call(meta.entity_a.endpoint, "pairing-offer", {"pairing_id": pid, "offer": b64(offer_b)})
    if not isinstance(answer_a, Mapping) or answer_a.get("completion") is None:
        raise VerificationError(Reason.MALFORMED, "entity a returned no completion proof")
    index = controller.complete_pairing(CompletionProof.from_json(answer_a["completion"]))
    client.call(meta.entity_a.endpoint, "pairing-confirm", {"pairing_id": pid})
    return PairingOutcome(cert, index, (len(offer_a), len(offer_b)))


def pair_entities(
    controller: AuthController, a: EntityNode, b: EntityNode, binding_id: str, **issue: Any
) -> PairingOutcome:
    """Pair two entity nodes of this process (the same flow as :func:`pair_over`, no sockets)."""
    client = InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in (a, b)})
    outcome = pair_over(controller, client, binding_id, **issue)
    pid = outcome.certificate.metadata.pairing_id
    secrets = {}
    for node in (a, b):
        s = node.pairing_secrets(pid)
        if s is not None:
            secrets[node.access_data.device_id] = s
    return PairingOutcome(outcome.certificate, outcome.ledger_index, outcome.offer_sizes, secrets)
