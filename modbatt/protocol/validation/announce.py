"""Level 1, Announce: a clear broadcast signed with the binding private key.

It carries the sender's access data (how to reach it) and bound LCT, so a controller that does
not know where a device is learns it from the announce (dynamic discovery). Only holders of the
semi-public key — the bound partner and the controller — can verify it; anyone else sees a
signed but unverifiable claim. Freshness: a per-sender sequence number (replay window) and a
timestamp (±skew, and a maximum age so an old capture cannot be re-broadcast after a restart
that reset the window).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...crypto import labels
from ...crypto.suite import PrivateKey, PublicKey
from ...errors import Reason, VerificationError
from ...model.access import AccessData, LctRef
from ._common import (
    CLOCK_SKEW_S,
    Counted,
    Message,
    SequenceGuard,
    access,
    authenticator,
    b,
    check_timestamp,
    counted,
    message,
    opt,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = ["ANNOUNCE_MAX_AGE_S", "Announce", "AnnounceVerifier", "Announcer", "BindingKeyRef"]

#: An announce older than this is refused even if its sequence number looks new.
ANNOUNCE_MAX_AGE_S = 30.0


@message("announce", 1)
class Announce(Message):
    """``announce`` (level 1): who I am, where to reach me, which LCT I am bound to."""

    binding_id: str = wire(text_field(64))
    key_id: bytes = wire(b(8))
    sender: str = wire(text_field(64))
    seq: int = wire(uint())
    ts_ms: int = wire(uint())
    access_data: AccessData = wire(access)
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    sig: bytes = authenticator(64)

    @property
    def bound_lct(self) -> LctRef | None:
        return self.access_data.bound_lct


class Announcer:
    """The sending side: one binding key, a monotonic sequence number."""

    def __init__(self, *, binding_id: str, access_data: AccessData, binding_key: PrivateKey, seq: int = 0) -> None:
        self.binding_id = binding_id
        self.access_data = access_data
        self._key = binding_key
        self._seq = seq  # a device persists this (or a FreshnessCounter) across restarts

    def announce(self, now: float, escalation: SignedEscalation | None = None) -> bytes:
        msg = Announce(
            self.binding_id,
            self._key.public_key.key_id(),
            self.access_data.device_id,
            self._seq,
            int(now * 1000),
            self.access_data,
            escalation,
        )
        self._seq += 1
        return msg.authenticated(self._key.sign(labels.SIG_ANNOUNCE, msg.signed_bytes())).encode()


@dataclass(frozen=True, slots=True)
class BindingKeyRef:
    """A semi-public key the verifier holds, and the device it belongs to."""

    binding_id: str
    device_id: str
    key: PublicKey


class AnnounceVerifier(Counted):
    """Verifies announces from every binding key it holds (a partner holds one, the controller all).

    Rejections: a key id it holds none for (``unknown_binding``), a binding id that does not go
    with the key (``wrong_session``), a sender other than the key's device (``wrong_peer``), a bad
    signature (``bad_signature``), a timestamp off the clock (``stale``) or too old (``expired``),
    a repeated or old sequence number (``replay``/``stale``), another level (``wrong_level``).
    """

    def __init__(
        self, keys: list[BindingKeyRef], *, skew_s: float = CLOCK_SKEW_S, max_age_s: float = ANNOUNCE_MAX_AGE_S
    ) -> None:
        super().__init__()
        self._by_key_id = {ref.key.key_id(): ref for ref in keys}
        self.skew_s = skew_s
        self.max_age_s = max_age_s
        self._seq = SequenceGuard()

    def add(self, ref: BindingKeyRef) -> None:
        self._by_key_id[ref.key.key_id()] = ref

    @counted
    def receive(self, data: bytes, now: float) -> Announce:
        msg = Announce.decode(data)
        ref = self._by_key_id.get(msg.key_id)
        if ref is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, "announce signed by a key this verifier does not hold")
        if msg.binding_id != ref.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "announce names another binding than its key's")
        ref.key.verify(labels.SIG_ANNOUNCE, msg.signed_bytes(), msg.sig)
        if msg.sender != ref.device_id or msg.access_data.device_id != ref.device_id:
            raise VerificationError(Reason.WRONG_PEER, f"key of {ref.device_id} signed an announce for {msg.sender}")
        check_timestamp(msg.ts_ms, now, skew_s=self.skew_s, max_age_s=self.max_age_s)
        self._seq.check((ref.binding_id, ref.device_id), msg.seq)
        self._seq.commit((ref.binding_id, ref.device_id), msg.seq)
        return msg
