"""Key-loss recovery between real nodes: announce, level-7 validation, re-binding, re-pairing.

Wiring only (the rules are :mod:`modbatt.protocol.validation.key_loss`; docs/lifecycle.md §7 has
the flow and why each step is authenticated the way it is):

* the device that lost its keys: :meth:`EntityNode.announce_key_loss
  <modbatt.nodes.entity.EntityNode.announce_key_loss>` erases what relied on them and signs the
  level-1 ``key_loss_announce`` with its identity key; any announce carrier moves it (CAN
  broadcast fragments, MQTT, HTTP: :mod:`modbatt.transport.announce`);
* the controller: :class:`KeyLossIntake` is an announce sink (it only verifies and queues, so it
  may run in a carrier's thread) and :meth:`KeyLossIntake.validate` records the level-7
  ``validation`` statement (event ``key_loss``) and builds the offline-checkable bundle;
* the partner: :func:`accept_key_loss` checks the bundle with the controller's public key alone
  and moves its :class:`~modbatt.protocol.pack_state.PackSecurity` of the relationship to
  ``key_lost`` (isolate, erase its half of the void pairings);
* :func:`recover` re-binds the two entities with a fresh grant (the old binding revoked in the
  ledger) and re-pairs them through any :class:`~modbatt.transport.http.EntityClient`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..crypto.suite import PublicKey, sha256
from ..encoding import strict_loads
from ..errors import ModbattError, Reason, VerificationError
from ..model.binding import BindingAuthorization, BindingRecord
from ..model.statements import sign_statement
from ..protocol.pack_state import PackEvent, PackSecurity, Step
from ..protocol.validation._common import MAX_MESSAGE_BYTES
from ..protocol.validation.key_loss import (
    KEY_LOSS_EVENT,
    KeyLossAnnounce,
    KeyLossAuthority,
    KeyLossResult,
    KeyLossVerifier,
)
from ..transport.announce import AnnounceSink
from ..transport.http import EntityClient
from .controller import AuthController, BindingOutcome
from .entity import EntityNode, binding_of_key_name
from .pairing_flow import PairingOutcome, pair_over

__all__ = [
    "KeyLossClaim",
    "KeyLossIntake",
    "Recovery",
    "accept_key_loss",
    "announce_router",
    "lose_binding_keys",
    "recover",
]

#: Verified claims waiting for validation; more are refused (``rate_limited``) until they are taken.
MAX_PENDING_CLAIMS = 64


@dataclass(frozen=True)
class KeyLossClaim:
    """A verified key-loss announce: who, which binding, the announce bytes (kept for the bundle)."""

    device_id: str
    binding_id: str
    announce: bytes
    source: str


class KeyLossIntake:
    """The controller's intake of key-loss announces and their level-7 validation."""

    def __init__(self, controller: AuthController, *, clock: Callable[[], float] | None = None) -> None:
        self.controller = controller
        self._clock = clock or controller._clock
        self.authority = KeyLossAuthority(controller_key=controller.controller_key)
        self._lock = threading.Lock()
        #: Verified claims, oldest first (bounded by :data:`MAX_PENDING_CLAIMS`).
        self.pending: collections.deque[KeyLossClaim] = collections.deque()

    @property
    def rejections(self) -> collections.Counter[Reason]:
        """Refused announces by reason (the level-1 key-loss machine's counters)."""
        return self.authority.rejections

    def offer(self, data: bytes, source: str = "in-process") -> Reason | None:
        """The announce sink: verify and queue a claim; never raises, returns the reason if refused."""
        try:
            claim = self._verify(bytes(data), source)
        except VerificationError as exc:
            return exc.reason
        except ModbattError:
            self.authority.rejections[Reason.MALFORMED] += 1
            return Reason.MALFORMED
        with self._lock:
            if len(self.pending) >= MAX_PENDING_CLAIMS:
                self.authority.rejections[Reason.RATE_LIMITED] += 1
                return Reason.RATE_LIMITED
            self.pending.append(claim)
        return None

    def _verify(self, data: bytes, source: str) -> KeyLossClaim:
        try:
            claimed = KeyLossAnnounce.decode(data)
        except VerificationError as exc:
            self.authority.rejections[exc.reason] += 1
            raise
        binding_id = claimed.binding_id or self._live_binding(claimed.sender)
        record = self.controller.record(binding_id)
        if record is None:
            self.authority.rejections[Reason.UNKNOWN_BINDING] += 1
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
        try:
            identity = self.controller.identity_key(binding_id, claimed.sender)
        except VerificationError as exc:
            self.authority.rejections[exc.reason] += 1
            raise
        with self._lock:
            announce = self.authority.check(
                data, record=record, identity_key=identity, revoked=self.controller.is_revoked(binding_id),
                now=self._clock(),
            )  # fmt: skip
        return KeyLossClaim(announce.sender, binding_id, data, source)

    def _live_binding(self, device_id: str) -> str:
        live = [b for b in self.controller.bindings_of(device_id) if not self.controller.is_revoked(b)]
        if len(live) != 1:
            self.authority.rejections[Reason.UNKNOWN_BINDING] += 1
            raise VerificationError(Reason.UNKNOWN_BINDING, f"{device_id} names no binding and has {len(live)} live")
        return live[0]

    def take(self) -> KeyLossClaim | None:
        """The oldest verified claim, or None."""
        with self._lock:
            return self.pending.popleft() if self.pending else None

    def validate(self, claim: KeyLossClaim) -> bytes:
        """Level 7: record the validated claim in the ledger and return the signed bundle for the partner."""
        record = self.controller.record(claim.binding_id)
        if record is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {claim.binding_id}")
        identity = self.controller.identity_key(claim.binding_id, claim.device_id)
        with self.controller._exclusive():  # the status read and the statement appended together
            return self._validate(claim, record, identity)

    def _validate(self, claim: KeyLossClaim, record: BindingRecord, identity: PublicKey) -> bytes:
        revoked = self.controller.is_revoked(claim.binding_id)
        status = "revoked" if revoked else "active"
        ledger = self.controller.ledger
        now = self._clock()
        statement = sign_statement(
            self.controller.controller_key,
            "validation",
            {
                "level": 7,
                "event": KEY_LOSS_EVENT,
                "binding_id": claim.binding_id,
                "subject": claim.device_id,
                "announce_hash": sha256(claim.announce),
                "identity_key_id": identity.key_id(),
                "status": status,
            },
            now,
        )
        statement_index = ledger.append(statement)
        sth = ledger.signed_tree_head()
        index = record_index(ledger, record.ledger_entry())
        return self.authority.bundle(
            announce=claim.announce, binding_id=claim.binding_id, subject=claim.device_id,
            record_entry=ledger.entry(index), record_index=index,
            audit_path=ledger.inclusion_proof(index, sth.tree_size), sth=sth, status=status,
            statement_index=statement_index, now=now,
        )  # fmt: skip


def announce_router(ordinary: AnnounceSink, key_loss: AnnounceSink) -> AnnounceSink:
    """One announce sink for a carrier: key-loss announces to ``key_loss``, every other to ``ordinary``.

    Peeks at the message type only (bounded strict CBOR); each sink verifies what it gets.
    """

    def sink(data: bytes, source: str) -> Reason | None:
        try:
            kind = strict_loads(bytes(data), max_bytes=MAX_MESSAGE_BYTES).get("type")
        except (ModbattError, AttributeError):
            kind = None
        return (key_loss if kind == KeyLossAnnounce.TYPE else ordinary)(data, source)

    return sink


def lose_binding_keys(node: EntityNode) -> list[str]:
    """The fault this flow answers: erase every binding private key from ``node``'s key store.

    The binding records stay, as they would after a corrupted key partition; restart the node
    (a new :class:`EntityNode` on the same store) and it finds the loss
    (:attr:`EntityNode.lost_bindings`). For the simulator, tests and notebooks; key-store keys only.
    """
    lost = []
    store = node.keystore
    with store.transaction():
        for name in store.key_names():
            binding_id = binding_of_key_name(name)
            if binding_id is not None:
                store.delete(name)
                lost.append(binding_id)
    return sorted(lost)


def record_index(ledger: Any, entry: bytes) -> int:
    """Where ``entry`` sits in the ledger (newest first: a binding is recent when it matters)."""
    for i in range(ledger.size - 1, -1, -1):
        if ledger.entry(i) == entry:
            return i
    raise VerificationError(Reason.UNKNOWN_BINDING, "the binding record is not in the ledger")


def accept_key_loss(
    verifier: KeyLossVerifier, bundle: bytes, security: PackSecurity | None, now: float
) -> tuple[KeyLossResult, Step | None]:
    """The partner's side: check the level-7 bundle, then move its machine of the relationship to ``key_lost``.

    Only a bundle that verifies moves anything; ``security`` (the partner's
    :class:`~modbatt.protocol.pack_state.PackSecurity` of this relationship) takes ``key_loss`` and
    returns the effects to carry out (isolate, erase its half of the now void pairings).
    """
    result = verifier.verify(bundle, now)
    step = None
    if security is not None:
        step = security.handle(PackEvent.KEY_LOSS, now, binding_id=result.binding_id)
    return result, step


@dataclass(frozen=True)
class Recovery:
    """What a recovery did: the new binding and pairing, and the ledger entries it added."""

    old_binding_id: str
    binding: BindingOutcome
    pairing: PairingOutcome
    ledger_entries: tuple[int, int]  # [first, end) of what the recovery appended


def recover(
    controller: AuthController,
    claim: KeyLossClaim,
    authorization: BindingAuthorization,
    client: EntityClient,
    **issue: Any,
) -> Recovery:
    """Re-bind the two entities of the claim's binding with ``authorization`` and re-pair them.

    The old binding is revoked in the ledger first (its pairings are void on both entities: the
    one that lost its keys erased them when it announced, the partner erases its binding key and
    those pairings on the revocation request), then a new binding with fresh semi-public keys,
    then a new pairing (``issue`` as for :meth:`AuthController.issue_pairing`) run through
    ``client``, which reaches both entities (and the controller's binding calls go through the
    controller's own client).
    """
    first = controller.ledger.size
    binding = controller.rebind(claim.binding_id, authorization)
    pairing = pair_over(controller, client, binding.record.binding_id, **issue)
    return Recovery(claim.binding_id, binding, pairing, (first, controller.ledger.size))
