"""Level 2, Witness: an entity asks a witness to acknowledge an event and keeps the signed pair.

The requester signs a ``witness_request`` (binding key) naming the event, a fresh request id and
the witness it asks. The witness — any party holding the requester's semi-public key and a
signing key of its own: the bound partner or the controller — checks it and signs a
``witness_ack`` over the hash of the exact request bytes. The requester checks the ack against
the witness's public key and its outstanding request and produces a :class:`WitnessedEvent`: both
signatures and the request, JSON-ready for the ledger (a controller-signed ``validation``
statement) or the event log. Neither message is encrypted (the seed makes that optional).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import PrivateKey, PublicKey
from ...errors import Reason, VerificationError
from ._common import (
    CLOCK_SKEW_S,
    ID_BYTES,
    Counted,
    Message,
    SequenceGuard,
    authenticator,
    b,
    check_timestamp,
    counted,
    digest,
    message,
    opt,
    small_map,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = ["WitnessAck", "WitnessRequest", "WitnessRequester", "WitnessService", "WitnessedEvent"]

#: A witness answers within this long, or the request is dropped (``timeout``).
WITNESS_TIMEOUT_S = 5.0


@message("witness_request", 2)
class WitnessRequest(Message):
    binding_id: str = wire(text_field(64))
    sender: str = wire(text_field(64))
    witness: str = wire(text_field(64))
    request_id: bytes = wire(b(ID_BYTES))
    seq: int = wire(uint())
    ts_ms: int = wire(uint())
    event: str = wire(text_field(64))
    details: dict[str, Any] = wire(small_map)
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    sig: bytes = authenticator(64)


@message("witness_ack", 2)
class WitnessAck(Message):
    witness: str = wire(text_field(64))
    request_id: bytes = wire(b(ID_BYTES))
    request_hash: bytes = wire(b(32))
    ts_ms: int = wire(uint())
    sig: bytes = authenticator(64)


@dataclass(frozen=True, slots=True)
class WitnessedEvent:
    """A request and its witness signature: the record the audit trail keeps."""

    request: WitnessRequest
    ack: WitnessAck

    def verify(self, requester_key: PublicKey, witness_key: PublicKey) -> None:
        """Re-check both signatures (the controller does, with its recorded keys, before recording)."""
        requester_key.verify(labels.SIG_WITNESS_REQUEST, self.request.signed_bytes(), self.request.sig)
        witness_key.verify(labels.SIG_WITNESS_ACK, self.ack.signed_bytes(), self.ack.sig)
        if self.ack.request_id != self.request.request_id:
            raise VerificationError(Reason.HASH_MISMATCH, "ack and request do not belong together")

    def to_record(self) -> dict[str, Any]:
        """Fields for a ``validation`` ledger statement (level 2); bytes stay bytes (CBOR)."""
        return {
            "level": 2,
            "event": self.request.event,
            "binding_id": self.request.binding_id,
            "entity": self.request.sender,
            "witness": self.ack.witness,
            "request_id": self.request.request_id,
            "request_hash": self.ack.request_hash,
            "details": self.request.details,
            "entity_signature": self.request.sig,
            "witness_signature": self.ack.sig,
        }


class WitnessRequester(Counted):
    """The entity asking for a witness."""

    def __init__(
        self,
        *,
        binding_id: str,
        device_id: str,
        binding_key: PrivateKey,
        rng: RandomSource | None = None,
        timeout_s: float = WITNESS_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.binding_id = binding_id
        self.device_id = device_id
        self._key = binding_key
        self._rng = rng or SystemRandom()
        self.timeout_s = timeout_s
        self._seq = 0
        self._pending: dict[bytes, tuple[WitnessRequest, bytes, str, PublicKey, float]] = {}
        self._done: set[bytes] = set()

    def request(
        self,
        *,
        witness: str,
        witness_key: PublicKey,
        event: str,
        details: Mapping[str, Any],
        now: float,
        escalation: SignedEscalation | None = None,
    ) -> bytes:
        msg = WitnessRequest(
            self.binding_id, self.device_id, witness, self._rng.token_bytes(ID_BYTES), self._seq,
            int(now * 1000), event, dict(details), escalation,
        )  # fmt: skip
        self._seq += 1
        msg = msg.authenticated(self._key.sign(labels.SIG_WITNESS_REQUEST, msg.signed_bytes()))
        data = msg.encode()
        self._pending[msg.request_id] = (msg, digest(data), witness, witness_key, now + self.timeout_s)
        return data

    @counted
    def on_ack(self, data: bytes, now: float) -> WitnessedEvent:
        ack = WitnessAck.decode(data)
        if ack.request_id in self._done:
            raise VerificationError(Reason.REPLAY, "this request was already witnessed")
        pending = self._pending.get(ack.request_id)
        if pending is None:
            raise VerificationError(Reason.WRONG_SESSION, "ack for a request this entity did not send")
        request, request_hash, witness, witness_key, deadline = pending
        if ack.witness != witness:
            raise VerificationError(Reason.WRONG_PEER, f"ack from {ack.witness}, asked {witness}")
        witness_key.verify(labels.SIG_WITNESS_ACK, ack.signed_bytes(), ack.sig)
        if ack.request_hash != request_hash:
            raise VerificationError(Reason.HASH_MISMATCH, "ack signs other request bytes")
        if now > deadline:
            del self._pending[ack.request_id]
            raise VerificationError(Reason.TIMEOUT, "the witness answered after the deadline")
        del self._pending[ack.request_id]
        self._done.add(ack.request_id)
        return WitnessedEvent(request, ack)


class WitnessService(Counted):
    """A witness: acknowledges requests from the entities whose binding keys it holds.

    ``requesters`` maps device id → its semi-public key for a binding id:
    ``{(binding_id, device_id): key}``.
    """

    def __init__(
        self,
        *,
        witness_id: str,
        signing_key: PrivateKey,
        requesters: Mapping[tuple[str, str], PublicKey],
        skew_s: float = CLOCK_SKEW_S,
        max_age_s: float = WITNESS_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self.witness_id = witness_id
        self._key = signing_key
        self.requesters = dict(requesters)
        self.skew_s = skew_s
        self.max_age_s = max_age_s
        self._seq = SequenceGuard()
        self.last_request: WitnessRequest | None = None

    @counted
    def on_request(self, data: bytes, now: float) -> bytes:
        req = WitnessRequest.decode(data)
        if req.witness != self.witness_id:
            raise VerificationError(Reason.WRONG_PEER, f"request asks {req.witness}, not {self.witness_id}")
        key = self.requesters.get((req.binding_id, req.sender))
        if key is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"{req.sender} is not bound under {req.binding_id}")
        key.verify(labels.SIG_WITNESS_REQUEST, req.signed_bytes(), req.sig)
        check_timestamp(req.ts_ms, now, skew_s=self.skew_s, max_age_s=self.max_age_s)
        stream = (req.binding_id, req.sender)
        self._seq.check(stream, req.seq)
        self._seq.commit(stream, req.seq)
        self.last_request = req
        ack = WitnessAck(self.witness_id, req.request_id, digest(data), int(now * 1000))
        return ack.authenticated(self._key.sign(labels.SIG_WITNESS_ACK, ack.signed_bytes())).encode()
