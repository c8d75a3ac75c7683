"""Key-loss recovery: a level-1 announce without the lost key, validated at level 7 against the ledger.

A device whose binding key is gone (flash corruption, a reset) cannot sign the ordinary level-1
announce, which needs that key. What it still holds is its **identity key**: provisioned at
manufacture, never used for traffic, and named by the binding authority in the grant that bound
it (:class:`~modbatt.model.binding.BindingAuthorization`). So (docs/lifecycle.md §7):

1. ``key_loss_announce`` (level 1, clear) — the device, its access data, the binding it lost (if
   its records survived) and its identity public key, signed with the identity key
   (label ``sig/validation/key-loss-announce``). Freshness as for every announce: a sequence
   number and a timestamp with a maximum age.
2. The controller (:class:`KeyLossAuthority`) checks it against what it recorded: the identity
   key must be the one the grant of that binding named (``key_mismatch``), the device a party of
   the binding (``wrong_peer``), the binding live (``revoked``).
3. ``key_loss_validation`` (level 7) — the controller appends a level-7 ``validation`` statement
   (event ``key_loss``) and answers with a signed bundle: the announce, the binding record's
   ledger entry with its inclusion proof under a signed tree head, the binding's status and the
   statement's index. Anyone holding only the controller's public key (the partner, a
   replacement pack, an auditor) checks it offline (:class:`KeyLossVerifier`): a partner acts on
   a key loss only with this bundle, never on an announce alone, which anyone could send.

Then the controller re-binds the two entities with a fresh grant (new semi-public keys, the old
binding revoked, its pairings void) and they re-pair; each step is a ledger entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Unpack

from ...crypto import labels
from ...crypto.suite import PrivateKey, PublicKey
from ...errors import Reason, VerificationError
from ...model.access import AccessData
from ...model.binding import BindingRecord
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
from .announce import ANNOUNCE_MAX_AGE_S
from .binding_validation import LedgerProof, LedgerProofFields, proven_binding_record, signed_bundle

__all__ = [
    "KeyLossAnnounce",
    "KeyLossAnnouncer",
    "KeyLossAuthority",
    "KeyLossResult",
    "KeyLossValidation",
    "KeyLossVerifier",
]

#: The level-7 statement event a validated key loss is recorded under.
KEY_LOSS_EVENT = "key_loss"


@message("key_loss_announce", 1)
class KeyLossAnnounce(Message):
    """``key_loss_announce`` (level 1): I lost the key of this binding; signed with my identity key."""

    binding_id: str | None = wire(opt(text_field(64)))
    sender: str = wire(text_field(64))
    identity_key: bytes = wire(b(33))
    seq: int = wire(uint())
    ts_ms: int = wire(uint())
    access_data: AccessData = wire(access)
    sig: bytes = authenticator(64)


class KeyLossAnnouncer:
    """The device that lost its binding key: signs with its identity key, a persisted sequence number."""

    def __init__(self, *, identity_key: PrivateKey, access_data: AccessData, seq: int = 0) -> None:
        self._key = identity_key
        self.access_data = access_data
        self.seq = seq

    def announce(self, now: float, binding_id: str | None = None) -> bytes:
        msg = KeyLossAnnounce(
            binding_id, self.access_data.device_id, self._key.public_key.to_bytes(), self.seq, int(now * 1000),
            self.access_data,
        )  # fmt: skip
        self.seq += 1
        return msg.authenticated(self._key.sign(labels.SIG_KEY_LOSS_ANNOUNCE, msg.signed_bytes())).encode()


def _read_announce(data: bytes) -> KeyLossAnnounce:
    """Decode and check the announce's own signature (by the identity key it names)."""
    msg = KeyLossAnnounce.decode(data)
    PublicKey.from_bytes(msg.identity_key).verify(labels.SIG_KEY_LOSS_ANNOUNCE, msg.signed_bytes(), msg.sig)
    if msg.access_data.device_id != msg.sender:
        raise VerificationError(Reason.WRONG_PEER, "the announce's access data names another device")
    return msg


@message("key_loss_validation", 7, then=LedgerProofFields)
class KeyLossValidation(Message):
    """``key_loss_validation`` (level 7): the controller's offline-checkable answer to a key-loss claim."""

    announce: bytes = wire(b(max_len=1024))
    binding_id: str = wire(text_field(64))
    subject: str = wire(text_field(64))
    sig: bytes = authenticator(64)


class KeyLossAuthority(Counted):
    """The controller's side: checks a claim against its records, then signs the level-7 bundle.

    Rejections: a key other than the grant's (``key_mismatch``), a bad identity signature
    (``bad_signature``), a device that is not a party of the binding (``wrong_peer``), an
    announce naming another binding (``wrong_session``), a revoked binding (``revoked``), an old
    or off-clock announce (``expired``/``stale``), a repeated sequence number (``replay``).
    """

    def __init__(
        self,
        *,
        controller_key: PrivateKey,
        skew_s: float = CLOCK_SKEW_S,
        max_age_s: float = ANNOUNCE_MAX_AGE_S,
    ) -> None:
        super().__init__()
        self._key = controller_key
        self.skew_s = skew_s
        self.max_age_s = max_age_s
        self._seq = SequenceGuard()

    @staticmethod
    def claimant(data: bytes) -> KeyLossAnnounce:
        """The announce's claim, its own signature checked (not yet against any record)."""
        return _read_announce(data)

    @counted
    def check(
        self, data: bytes, *, record: BindingRecord, identity_key: PublicKey, revoked: bool, now: float
    ) -> KeyLossAnnounce:
        """Verify a claim against the binding ``record`` and the identity key its grant named."""
        msg = _read_announce(data)
        if msg.identity_key != identity_key.to_bytes():
            raise VerificationError(Reason.KEY_MISMATCH, "signed by another identity key than the grant named")
        if msg.binding_id is not None and msg.binding_id != record.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "the announce names another binding")
        parties = {e.access_data.device_id for e in (record.entity_a, record.entity_b)}
        if msg.sender not in parties:
            raise VerificationError(Reason.WRONG_PEER, f"{msg.sender} is not a party of {record.binding_id}")
        if revoked:
            raise VerificationError(Reason.REVOKED, f"binding {record.binding_id} is revoked")
        check_timestamp(msg.ts_ms, now, skew_s=self.skew_s, max_age_s=self.max_age_s)
        stream = (record.binding_id, msg.sender)
        self._seq.check(stream, msg.seq)
        self._seq.commit(stream, msg.seq)
        return msg

    def bundle(
        self, *, announce: bytes, binding_id: str, subject: str, now: float, **proof: Unpack[LedgerProof]
    ) -> bytes:
        return signed_bundle(KeyLossValidation, self._key, now, proof, announce=announce, binding_id=binding_id,
                             subject=subject)  # fmt: skip


@dataclass(frozen=True, slots=True)
class KeyLossResult:
    """What a verifier established from a key-loss bundle."""

    binding_id: str
    subject: str
    record_index: int
    tree_size: int
    statement_index: int | None
    identity_key_id: bytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "binding_id": self.binding_id, "subject": self.subject, "record_index": self.record_index,
            "tree_size": self.tree_size, "statement_index": self.statement_index,
            "identity_key_id": self.identity_key_id.hex(),
        }  # fmt: skip


class KeyLossVerifier(Counted):
    """Checks a ``key_loss_validation`` bundle offline with only the controller's public key.

    Rejections: the controller's signature (``bad_signature``), the inclusion proof
    (``bad_proof``), a proven entry that is not a controller-signed binding record (``malformed``,
    ``bad_signature``), another binding or subject (``wrong_session``/``wrong_peer``), a revoked
    binding (``revoked``), a tree head older than the announce (``stale``), a bundle for an
    announce already acted on (``replay``).
    """

    def __init__(self, *, controller_key: PublicKey, skew_s: float = CLOCK_SKEW_S) -> None:
        super().__init__()
        self._controller_key = controller_key
        self.skew_s = skew_s
        self._seq = SequenceGuard()

    @counted
    def verify(self, data: bytes, now: float) -> KeyLossResult:
        bundle = KeyLossValidation.decode(data)
        self._controller_key.verify(labels.SIG_BINDING_VALIDATION, bundle.signed_bytes(), bundle.sig)
        announce = _read_announce(bundle.announce)
        if announce.sender != bundle.subject:
            raise VerificationError(Reason.WRONG_PEER, "the bundle's subject is not the announcing device")
        if announce.binding_id not in (None, bundle.binding_id):
            raise VerificationError(Reason.WRONG_SESSION, "the announce names another binding")
        record, sth = proven_binding_record(
            bundle, self._controller_key, binding_id=bundle.binding_id,
            not_before_ms=announce.ts_ms - self.skew_s * 1000, what="the announce",
        )  # fmt: skip
        parties = {record[s]["access_data"]["device_id"] for s in ("entity_a", "entity_b")}
        if bundle.subject not in parties:
            raise VerificationError(Reason.WRONG_PEER, f"{bundle.subject} is not part of the proven binding")
        if bundle.status != "active":
            raise VerificationError(Reason.REVOKED, "the controller reports this binding revoked")
        stream = (bundle.binding_id, bundle.subject)
        self._seq.check(stream, announce.seq)
        self._seq.commit(stream, announce.seq)
        return KeyLossResult(
            bundle.binding_id, bundle.subject, bundle.record_index, sth.tree_size, bundle.statement_index,
            PublicKey.from_bytes(announce.identity_key).key_id(),
        )  # fmt: skip
