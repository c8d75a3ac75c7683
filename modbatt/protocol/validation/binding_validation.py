"""Level 7, Binding validation: entity + LCT + controller signatures and a ledger inclusion proof.

The verifier (the partner, a replacement pack, an auditor) challenges the *subject* entity with a
nonce. Four signatures answer it:

1. ``entity_proof`` — the subject signs {challenge hash, binding, event, nonce, its semi-public
   key} with its binding private key;
2. ``lct_attestation`` — the **LCT key** signs that this binding key (by its ledger commitment) is
   bound to the LCT. We model the bound LCT as holding its own P-256 key (web4 LCT
   ``binding.public_key``), held by the LCT's custodian (its chain/registry service). The verifier
   trusts that key either because it resolved and pinned it for the ``lct_id`` (``lct_keys``) or
   because the id is *self-certifying*: ``lct:web4:`` + base32(SHA-256(label ‖ key))[:32]
   (:func:`lct_id_for_key`, our analogue of web4's hash-derived LCT ids);
3. the binding record's ``authority`` — the controller's signature made at binding time;
4. ``bundle`` — the controller signs the whole answer, including the binding's status (``active``
   or ``revoked``) and where it appended the permanent level-7 statement.

The bundle carries the binding record's ledger entry, its index, the audit path and a signed tree
head, so the verifier checks inclusion **itself with only the controller's public key**
(:func:`modbatt.ledger.verify_inclusion`), then that the record commits to the subject's key
(``key_commitment``) and names the attested LCT. Note the bundle discloses the subject's
semi-public key to the verifier (it must, to check the entity signature): run L7 only towards
parties entitled to it, sealed at the binding tier on shared media.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict, Unpack

from ...crypto import labels
from ...crypto.rng import RandomSource, SystemRandom
from ...crypto.suite import PrivateKey, PublicKey, sha256
from ...encoding import canonical_dumps
from ...errors import Reason, VerificationError
from ...ledger import SignedTreeHead, verify_inclusion
from ...ledger.merkle import MAX_PROOF_HASHES
from ...model._fields import malformed
from ...model.binding import BindingRecord, key_commitment
from ...model.schema import list_of
from ._common import (
    CLOCK_SKEW_S,
    ID_BYTES,
    Counted,
    Message,
    authenticator,
    b,
    counted,
    digest,
    loads,
    message,
    one_of,
    opt,
    wire,
)
from ._common import t as text_field
from ._common import u as uint
from .escalation import SignedEscalation, read_escalation

__all__ = [
    "EVENTS",
    "BindingChallenge",
    "BindingValidationAuthority",
    "BindingValidationBundle",
    "BindingValidationSubject",
    "BindingValidationVerifier",
    "EntityProof",
    "LctAttestation",
    "LctAttestor",
    "lct_id_for_key",
]

EVENTS = ("establishment", "verification", "revocation")
DEFAULT_TIMEOUT_S = 30.0


def lct_id_for_key(key: PublicKey) -> str:
    """A self-certifying LCT id for an LCT key."""
    return "lct:web4:" + base64.b32encode(sha256(labels.LCT_ID + key.to_bytes())).decode("ascii").lower()[:32]


#: An audit path: at most MAX_PROOF_HASHES 32-byte hashes (RFC 9162 §2.1.3).
AUDIT_PATH = list_of(b(32), MAX_PROOF_HASHES, size=f"≤ {MAX_PROOF_HASHES} × 32 B",
                     encoding="CBOR array of 32-byte byte strings")  # fmt: skip


class LedgerProof(TypedDict):
    """What the controller adds to a level-7 answer: the binding record's ledger entry, its inclusion
    proof under a signed tree head, the binding's status and where the level-7 statement went."""

    record_entry: bytes
    record_index: int
    audit_path: Sequence[bytes]
    sth: SignedTreeHead
    status: str
    statement_index: int | None


def signed_bundle(cls: type[Message], key: PrivateKey, now: float, proof: LedgerProof, **head: Any) -> bytes:
    """A level-7 bundle of ``cls`` (``head``: its own leading fields, then ``proof``), signed by the controller."""
    msg = cls(**head, **{**proof, "audit_path": list(proof["audit_path"]), "sth": proof["sth"].to_bytes()},
              ts_ms=int(now * 1000))  # fmt: skip
    return msg.authenticated(key.sign(labels.SIG_BINDING_VALIDATION, msg.signed_bytes())).encode()


def proven_binding_record(
    bundle: Any, controller_key: PublicKey, *, binding_id: str, not_before_ms: float, what: str
) -> tuple[dict[str, Any], SignedTreeHead]:
    """The controller-signed binding record ``bundle`` proves is in the log, and the tree head.

    ``bundle`` carries ``record_entry``, ``record_index``, ``audit_path`` and ``sth``: the
    inclusion proof (RFC 9162 §2.1.3) must hold under a tree head the controller signed no earlier
    than ``not_before_ms`` (``what`` names that moment in the ``stale`` error), the entry must be
    a binding record with the controller's signature, and it must be ``binding_id``.
    """
    sth = SignedTreeHead.from_bytes(bundle.sth)
    verify_inclusion(bundle.record_entry, bundle.record_index, bundle.audit_path, sth, controller_key)
    if sth.timestamp < not_before_ms:
        raise VerificationError(Reason.STALE, f"tree head older than {what}")
    record = loads(bundle.record_entry)
    if not isinstance(record, dict) or record.get("kind") != "binding" or "authority" not in record:
        raise malformed("proven entry is not a binding record")
    view = {k: v for k, v in record.items() if k != "authority"}
    controller_key.verify(labels.SIG_BINDING_RECORD, canonical_dumps(view), record["authority"])
    if record.get("binding_id") != binding_id:
        raise VerificationError(Reason.WRONG_SESSION, "proven record is another binding")
    return record, sth


@message("binding_challenge", 7)
class BindingChallenge(Message):
    binding_id: str = wire(text_field(64))
    subject: str = wire(text_field(64))
    verifier: str = wire(text_field(64))
    event: str = wire(one_of(*EVENTS))
    nonce: bytes = wire(b(ID_BYTES))
    ts_ms: int = wire(uint())
    deadline_ms: int = wire(uint())


@message("entity_proof", 7)
class EntityProof(Message):
    challenge_hash: bytes = wire(b(32))
    binding_id: str = wire(text_field(64))
    subject: str = wire(text_field(64))
    event: str = wire(one_of(*EVENTS))
    nonce: bytes = wire(b(ID_BYTES))
    semi_public_key: bytes = wire(b(33))
    ts_ms: int = wire(uint())
    escalation: SignedEscalation | None = wire(opt(read_escalation), default=None)
    sig: bytes = authenticator(64)


@message("lct_attestation", 7)
class LctAttestation(Message):
    lct_id: str = wire(text_field(128))
    lct_key: bytes = wire(b(33))
    binding_id: str = wire(text_field(64))
    subject: str = wire(text_field(64))
    key_commitment: bytes = wire(b(32))
    nonce: bytes = wire(b(ID_BYTES))
    ts_ms: int = wire(uint())
    sig: bytes = authenticator(64)


class LedgerProofFields:
    """The fields every level-7 bundle ends with (``binding_validation``, ``key_loss_validation``):
    the binding record's ledger entry and inclusion proof, its status, the statement's index, the time."""

    record_entry: bytes = wire(b(max_len=4096))
    record_index: int = wire(uint())
    audit_path: list[bytes] = wire(AUDIT_PATH)
    sth: bytes = wire(b(max_len=256))
    status: str = wire(one_of("active", "revoked"))
    statement_index: int | None = wire(opt(uint()))
    ts_ms: int = wire(uint())


@message("binding_validation", 7, then=LedgerProofFields)
class BindingValidationBundle(Message):
    entity_proof: bytes = wire(b(max_len=1024))
    lct_attestation: bytes = wire(b(max_len=1024))
    sig: bytes = authenticator(64)


class BindingValidationSubject(Counted):
    """The entity whose binding is validated: answers a challenge with its binding-key proof."""

    def __init__(self, *, binding_id: str, device_id: str, binding_key: PrivateKey) -> None:
        super().__init__()
        self.binding_id = binding_id
        self.device_id = device_id
        self._key = binding_key

    @counted
    def prove(self, challenge: bytes, now: float, *, escalation: SignedEscalation | None = None) -> bytes:
        ch = BindingChallenge.decode(challenge)
        if ch.subject != self.device_id:
            raise VerificationError(Reason.WRONG_PEER, f"challenge is for {ch.subject}")
        if ch.binding_id != self.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "challenge for another binding")
        if now * 1000 > ch.deadline_ms:
            raise VerificationError(Reason.TIMEOUT, "challenge past its deadline")
        proof = EntityProof(
            digest(challenge), ch.binding_id, self.device_id, ch.event, ch.nonce,
            self._key.public_key.to_bytes(), int(now * 1000), escalation,
        )  # fmt: skip
        return proof.authenticated(self._key.sign(labels.SIG_BINDING_VALIDATION, proof.signed_bytes())).encode()


class LctAttestor(Counted):
    """The bound LCT's key holder: attests that a (proven) binding key belongs to its LCT."""

    def __init__(self, *, lct_id: str, key: PrivateKey) -> None:
        super().__init__()
        self.lct_id = lct_id
        self._key = key

    @property
    def public_key(self) -> PublicKey:
        return self._key.public_key

    @counted
    def attest(self, entity_proof: bytes, now: float) -> bytes:
        proof = EntityProof.decode(entity_proof)
        subject_key = PublicKey.from_bytes(proof.semi_public_key)
        subject_key.verify(labels.SIG_BINDING_VALIDATION, proof.signed_bytes(), proof.sig)  # possession
        att = LctAttestation(
            self.lct_id, self._key.public_key.to_bytes(), proof.binding_id, proof.subject,
            key_commitment(proof.binding_id, subject_key), proof.nonce, int(now * 1000),
        )  # fmt: skip
        return att.authenticated(self._key.sign(labels.SIG_LCT_ATTESTATION, att.signed_bytes())).encode()


def _lct_key(att: LctAttestation, lct_keys: Mapping[str, PublicKey]) -> PublicKey:
    key = PublicKey.from_bytes(att.lct_key)
    pinned = lct_keys.get(att.lct_id)
    if pinned is not None:
        if pinned != key:
            raise VerificationError(Reason.KEY_MISMATCH, f"{att.lct_id} is pinned to another key")
    elif lct_id_for_key(key) != att.lct_id:
        raise VerificationError(Reason.UNAUTHORIZED, f"no trusted key for {att.lct_id} (not pinned or self-certifying)")
    key.verify(labels.SIG_LCT_ATTESTATION, att.signed_bytes(), att.sig)
    return key


def _check_proof_and_attestation(
    proof: EntityProof,
    att: LctAttestation,
    subject_key: PublicKey,
    lct_id: str | None,
    lct_keys: Mapping[str, PublicKey],
) -> None:
    subject_key.verify(labels.SIG_BINDING_VALIDATION, proof.signed_bytes(), proof.sig)
    if lct_id is None:
        raise VerificationError(Reason.UNAUTHORIZED, f"{proof.subject} has no bound LCT: level 7 needs one")
    if att.lct_id != lct_id:
        raise VerificationError(Reason.HASH_MISMATCH, f"attested by {att.lct_id}, bound to {lct_id}")
    _lct_key(att, lct_keys)
    if (att.binding_id, att.subject, att.nonce) != (proof.binding_id, proof.subject, proof.nonce):
        raise VerificationError(Reason.WRONG_SESSION, "LCT attestation answers another proof")
    if att.key_commitment != key_commitment(proof.binding_id, subject_key):
        raise VerificationError(Reason.HASH_MISMATCH, "LCT attests another binding key")


class BindingValidationAuthority(Counted):
    """The controller's side: checks entity proof and LCT attestation, then signs the bundle."""

    def __init__(self, *, controller_key: PrivateKey, lct_keys: Mapping[str, PublicKey] | None = None) -> None:
        super().__init__()
        self._key = controller_key
        self.lct_keys = dict(lct_keys or {})

    @counted
    def check(self, entity_proof: bytes, lct_attestation: bytes, record: BindingRecord) -> dict[str, Any]:
        """Verify both signatures against the recorded binding; returns the level-7 statement fields."""
        proof = EntityProof.decode(entity_proof)
        att = LctAttestation.decode(lct_attestation)
        if proof.binding_id != record.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, "proof for another binding")
        subject = record.entity(proof.subject)
        if subject.semi_public_key.to_bytes() != proof.semi_public_key:
            raise VerificationError(Reason.KEY_MISMATCH, "proof made with a key other than the recorded one")
        lct = subject.bound_lct.lct_id if subject.bound_lct else None
        _check_proof_and_attestation(proof, att, subject.semi_public_key, lct, self.lct_keys)
        return {
            "level": 7,
            "event": proof.event,
            "binding_id": proof.binding_id,
            "subject": proof.subject,
            "nonce": proof.nonce,
            "lct_id": att.lct_id,
            "entity_signature": proof.sig,
            "lct_signature": att.sig,
        }

    def bundle(self, *, entity_proof: bytes, lct_attestation: bytes, now: float, **proof: Unpack[LedgerProof]) -> bytes:
        return signed_bundle(BindingValidationBundle, self._key, now, proof, entity_proof=entity_proof,
                             lct_attestation=lct_attestation)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BindingValidationResult:
    """What a verifier established, JSON-ready through :meth:`to_dict`."""

    binding_id: str
    subject: str
    event: str
    lct_id: str
    record_index: int
    tree_size: int
    proof_hashes: int
    statement_index: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "binding_id": self.binding_id, "subject": self.subject, "event": self.event, "lct_id": self.lct_id,
            "record_index": self.record_index, "tree_size": self.tree_size, "proof_hashes": self.proof_hashes,
            "statement_index": self.statement_index,
        }  # fmt: skip


class BindingValidationVerifier(Counted):
    """Challenges a subject and checks the answer offline with only the controller's public key."""

    def __init__(
        self,
        *,
        verifier_id: str,
        controller_key: PublicKey,
        lct_keys: Mapping[str, PublicKey] | None = None,
        rng: RandomSource | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        skew_s: float = CLOCK_SKEW_S,
    ) -> None:
        super().__init__()
        self.verifier_id = verifier_id
        self._controller_key = controller_key
        self.lct_keys = dict(lct_keys or {})
        self._rng = rng or SystemRandom()
        self.timeout_s = timeout_s
        self.skew_s = skew_s
        self._pending: dict[bytes, tuple[BindingChallenge, bytes]] = {}
        self._used: set[bytes] = set()

    def challenge(self, *, binding_id: str, subject: str, event: str, now: float) -> bytes:
        ch = BindingChallenge(
            binding_id, subject, self.verifier_id, event, self._rng.token_bytes(ID_BYTES), int(now * 1000),
            int((now + self.timeout_s) * 1000),
        )  # fmt: skip
        data = ch.encode()
        self._pending[ch.nonce] = (ch, data)
        return data

    @counted
    def verify(self, data: bytes, now: float) -> BindingValidationResult:
        bundle = BindingValidationBundle.decode(data)
        self._controller_key.verify(labels.SIG_BINDING_VALIDATION, bundle.signed_bytes(), bundle.sig)
        proof = EntityProof.decode(bundle.entity_proof)
        att = LctAttestation.decode(bundle.lct_attestation)
        if proof.nonce in self._used:
            raise VerificationError(Reason.REPLAY, "this challenge was already answered")
        pending = self._pending.get(proof.nonce)
        if pending is None or digest(pending[1]) != proof.challenge_hash:
            raise VerificationError(Reason.WRONG_SESSION, "answer to a challenge this verifier did not send")
        ch = pending[0]
        if now * 1000 > ch.deadline_ms:
            del self._pending[proof.nonce]
            raise VerificationError(Reason.TIMEOUT, "answer came after the challenge deadline")
        if (proof.binding_id, proof.subject, proof.event) != (ch.binding_id, ch.subject, ch.event):
            raise VerificationError(Reason.WRONG_SESSION, "answer names another binding, subject or event")
        # Blockchain proof: the binding record is in the log the controller signed.
        record, sth = proven_binding_record(
            bundle, self._controller_key, binding_id=ch.binding_id, not_before_ms=ch.ts_ms - self.skew_s * 1000,
            what="the challenge",
        )  # fmt: skip
        side = next(
            (record[s] for s in ("entity_a", "entity_b") if record[s]["access_data"]["device_id"] == ch.subject), None
        )
        if side is None:
            raise VerificationError(Reason.WRONG_PEER, f"{ch.subject} is not part of the proven binding")
        subject_key = PublicKey.from_bytes(proof.semi_public_key)
        if side["semi_public_key_commitment"] != key_commitment(ch.binding_id, subject_key):
            raise VerificationError(Reason.HASH_MISMATCH, "the ledger commits to another binding key")
        lct = side["bound_lct"]["lct_id"] if side.get("bound_lct") else None
        _check_proof_and_attestation(proof, att, subject_key, lct, self.lct_keys)
        if bundle.status != "active" and ch.event != "revocation":
            raise VerificationError(Reason.REVOKED, "the controller reports this binding revoked")
        del self._pending[proof.nonce]
        self._used.add(proof.nonce)
        return BindingValidationResult(
            ch.binding_id, ch.subject, ch.event, att.lct_id, bundle.record_index, sth.tree_size,
            len(bundle.audit_path), bundle.statement_index,
        )  # fmt: skip
