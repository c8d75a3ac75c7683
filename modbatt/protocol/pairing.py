"""The Pairing transaction (seed Phase 2) as sans-I/O machines.

* :func:`issue_certificate` — the controller makes a 64-byte pairing key, splits it into two
  32-byte halves, makes an exchange key, seals each half (with the metadata hash and the
  exchange key) to the owning entity's semi-public key, encrypts the handshake section under
  a key derived from the full pairing key, signs, and **erases** the key material. What it keeps
  (:class:`PendingPairing`) holds no pairing secret.
* :class:`PairingParticipant` — an entity validates the certificate, opens its section, swaps
  halves with its partner under the exchange key (offers signed with the binding keys),
  rebuilds the pairing key, opens the handshake section and signs the completion.
* :func:`verify_completion` — the controller checks the completion proof and yields the ledger
  record.

Sessions. Each use of a certificate is one *session*: its secrets derive from the pairing key
(pairing tier) and the exchange key (exchange tier) with the session transcript as HKDF salt —
the session nonce and the hashes of both signed offers (:func:`session_transcript`) — so no two
sessions of one multi-use certificate share a traffic key (docs/pairing.md, "Sessions").
:attr:`PairingSecrets.session_id` names the session.

Controller modes. ``standard`` is the seed's design: the traffic secrets derive from the pairing
and exchange keys and the (public) transcript, so a controller that failed to erase those keys
could read everything. ``blind`` (our step beyond the seed) adds an ephemeral ECDH exchange
between the entities, signed with their binding keys, into both secrets: the controller — which
never holds a binding private key — cannot derive traffic keys even if it kept the pairing key.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..crypto import labels
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import (
    AEAD_NONCE_BYTES,
    PrivateKey,
    PublicKey,
    aead_decrypt,
    aead_encrypt,
    hkdf_sha256,
    open_sealed,
    seal_to_semi_public_key,
    sha256,
)
from ..encoding import canonical_dumps, strict_loads
from ..errors import EncodingError, ProtocolError, Reason, VerificationError
from ..model.binding import BindingRecord
from ..model.pairing import ControllerMode, PairingCertificate, PairingMetadata, Restrictions
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.schema import (
    Record,
    authenticator,
    bytes_,
    list_of,
    nested,
    one_of,
    optional,
    per_role,
    record,
    text_,
    uint,
    uuid_,
    wire,
)

__all__ = [
    "HALF_BYTES",
    "PAIRING_KEY_BYTES",
    "SESSION_ID_BYTES",
    "CompletionProof",
    "PairingParticipant",
    "PairingSecrets",
    "PairingState",
    "PendingPairing",
    "derive_binding_mac_secret",
    "derive_session_secrets",
    "issue_certificate",
    "offer_hash",
    "session_transcript",
    "transcript_of_offers",
    "verify_completion",
]

PAIRING_KEY_BYTES = 64
HALF_BYTES = 32
EXCHANGE_KEY_BYTES = 32
VALIDATION_NONCE_BYTES = 16
SESSION_NONCE_BYTES = 16
#: Bytes of a session identifier (the head of the session transcript hash).
SESSION_ID_BYTES = 16
#: Bytes of a session's binding MAC secret (``efficient`` profile).
BINDING_SECRET_BYTES = 32
#: Partial pairings are abandoned after this long by default (30 s, docs/pairing.md, Uses).
DEFAULT_HANDSHAKE_TIMEOUT_S = 30
_ROLES = ("a", "b")
#: The fields of a completion proof, as the handshake section names them.
_COMPLETION_FIELDS = ("pairing_id", "validation_nonce", "session_nonce", "entity_signatures")


def _section_context(pairing_id: str, role: str) -> bytes:
    return labels.SEAL_PAIRING_SECTION + pairing_id.encode("ascii") + role.encode("ascii")


def _handshake_key(pairing_key: bytes | bytearray, pairing_id: str) -> bytes:
    return hkdf_sha256(bytes(pairing_key), info=labels.PAIRING_HANDSHAKE_KEY + pairing_id.encode("ascii"))


def _wipe(buf: bytearray) -> None:
    # Best effort in CPython: overwrite the one mutable copy we control.
    buf[:] = bytes(len(buf))


# --------------------------------------------------------------------------- wire records


@record(what="section")
class EntitySection(Record):
    """An entity's sealed certificate section: its half of the pairing key and the exchange key."""

    role: str = wire(one_of(*_ROLES))
    half: bytes = wire(bytes_(HALF_BYTES))
    metadata_hash: bytes = wire(bytes_(32))
    exchange_key: bytes = wire(bytes_(EXCHANGE_KEY_BYTES))


@record(what="completion_instructions")
class CompletionInstructions(Record):
    """What the controller's completion callback expects (docs/pairing.md)."""

    required_fields: list[str] = wire(list_of(text_(64), 8))
    timeout_seconds: int = wire(uint(1, 86_400))


@record(what="handshake")
class HandshakeSection(Record):
    """The certificate's handshake section, readable only with the rebuilt pairing key."""

    validation_nonce: bytes = wire(bytes_(VALIDATION_NONCE_BYTES))
    callback: str = wire(text_(256))
    completion_instructions: CompletionInstructions = wire(nested(CompletionInstructions))


#: Largest offer accepted from the wire.
MAX_OFFER_BYTES = 1024


@record(what="offer")
class Offer(Record):
    """One entity's signed offer: its half under the exchange key, the session nonce, and (blind
    mode) its ephemeral key; entity b's also carries its completion signature."""

    pairing_id: str = wire(text_(64))
    role: str = wire(one_of(*_ROLES))
    session_nonce: bytes = wire(bytes_(SESSION_NONCE_BYTES))
    sealed_half: bytes = wire(bytes_(max_len=128))
    ephemeral: bytes | None = wire(optional(bytes_(33)))
    completion: bytes | None = wire(optional(bytes_(64)))
    signature: bytes = authenticator(kind=bytes_(64))

    def signed_bytes(self) -> bytes:
        return canonical_dumps(self.signed_map())

    def encode(self) -> bytes:
        return canonical_dumps(self.to_cbor())

    @classmethod
    def decode(cls, data: bytes) -> Offer:
        """Strictly decode untrusted offer bytes (exact field set, every field checked)."""
        return cls.from_cbor(strict_loads(data, max_bytes=MAX_OFFER_BYTES))  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- controller side


@dataclass(frozen=True, slots=True)
class PendingPairing:
    """What the controller keeps after issuing: no pairing key, half or exchange key."""

    pairing_id: str
    binding_id: str
    certificate_hash: bytes
    validation_nonce: bytes
    handshake_deadline: float
    expires_at: float
    max_uses: int
    key_a: PublicKey
    key_b: PublicKey
    sessions: tuple[bytes, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "pairing_id": self.pairing_id,
            "binding_id": self.binding_id,
            "certificate_hash": self.certificate_hash,
            "validation_nonce": self.validation_nonce,
            "handshake_deadline": self.handshake_deadline,
            "expires_at": self.expires_at,
            "max_uses": self.max_uses,
            "key_a": self.key_a.to_bytes(),
            "key_b": self.key_b.to_bytes(),
            "sessions": list(self.sessions),
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> PendingPairing:
        return cls(
            r["pairing_id"], r["binding_id"], r["certificate_hash"], r["validation_nonce"],
            r["handshake_deadline"], r["expires_at"], r["max_uses"],
            PublicKey.from_bytes(r["key_a"]), PublicKey.from_bytes(r["key_b"]), tuple(r["sessions"]),
        )  # fmt: skip


def issue_certificate(
    *,
    controller_key: PrivateKey,
    binding: BindingRecord,
    callback: str,
    now: float,
    valid_for_s: int = 24 * 3600,
    max_uses: int = 1,
    context: str = "battery_management",
    policy: EncryptionPolicy = DEFAULT_POLICY,
    restrictions: Restrictions | None = None,
    mode: ControllerMode = ControllerMode.STANDARD,
    handshake_timeout_s: int = DEFAULT_HANDSHAKE_TIMEOUT_S,
    rng: RandomSource | None = None,
    pairing_id: str | None = None,
    profile: ProtocolProfile = DEFAULT_PROFILE,
) -> tuple[PairingCertificate, PendingPairing]:
    """Build and sign a pairing certificate for the two entities of ``binding`` (``profile``: docs/profiles.md)."""
    rng = rng or SystemRandom()
    pairing_id = pairing_id or str(uuid.UUID(bytes=rng.token_bytes(16), version=4))
    now_ms = int(now * 1000)
    metadata = PairingMetadata(
        pairing_id=pairing_id,
        binding_id=binding.binding_id,
        context=context,
        entity_a=binding.entity_a.access_data,
        entity_b=binding.entity_b.access_data,
        created_at_ms=now_ms,
        valid_from_ms=now_ms,
        expires_at_ms=now_ms + valid_for_s * 1000,
        max_uses=max_uses,
        encryption_policy=policy,
        restrictions=restrictions or Restrictions(),
        controller_mode=mode,
        handshake_timeout_s=handshake_timeout_s,
        controller_key_id=controller_key.public_key.key_id(),
        profile=ProtocolProfile(profile),
    )
    metadata_bytes = metadata.encode()
    metadata_hash = sha256(metadata_bytes)
    pairing_key = bytearray(rng.token_bytes(PAIRING_KEY_BYTES))
    exchange_key = bytearray(rng.token_bytes(EXCHANGE_KEY_BYTES))
    validation_nonce = rng.token_bytes(VALIDATION_NONCE_BYTES)
    try:
        sections = {}
        for role, entity, half in (
            ("a", binding.entity_a, pairing_key[:HALF_BYTES]),
            ("b", binding.entity_b, pairing_key[HALF_BYTES:]),
        ):
            plain = canonical_dumps(EntitySection(role, bytes(half), metadata_hash, bytes(exchange_key)).to_cbor())
            sections[f"entity_{role}"] = seal_to_semi_public_key(
                entity.semi_public_key, plain, context=_section_context(pairing_id, role), rng=rng
            )
        instructions = CompletionInstructions(list(_COMPLETION_FIELDS), handshake_timeout_s)
        handshake = canonical_dumps(HandshakeSection(validation_nonce, callback, instructions).to_cbor())
        nonce = rng.token_bytes(AEAD_NONCE_BYTES)
        sections["handshake_validation"] = nonce + aead_encrypt(
            _handshake_key(pairing_key, pairing_id), nonce, handshake, metadata_hash
        )
    finally:
        _wipe(pairing_key)
        _wipe(exchange_key)
    cert = PairingCertificate(metadata_bytes, sections).sign(controller_key)
    pending = PendingPairing(
        pairing_id,
        binding.binding_id,
        cert.certificate_hash,
        validation_nonce,
        now + handshake_timeout_s,
        metadata.expires_at_ms / 1000,
        max_uses,
        binding.entity_a.semi_public_key,
        binding.entity_b.semi_public_key,
    )
    return cert, pending


def _completion_bytes(
    pairing_id: str, validation_nonce: bytes, session_nonce: bytes, cert_hash: bytes, role: str
) -> bytes:
    return canonical_dumps(
        {
            "pairing_id": pairing_id,
            "validation_nonce": validation_nonce,
            "session_nonce": session_nonce,
            "certificate_hash": cert_hash,
            "role": role,
        }
    )


@record(what="completion")
class CompletionProof(Record):
    """The seed's completion message, plus the session nonce that makes each use distinct (JSON view
    over HTTP: :meth:`to_json`, :meth:`from_json`)."""

    pairing_id: str = wire(uuid_)
    validation_nonce: bytes = wire(bytes_(VALIDATION_NONCE_BYTES))
    session_nonce: bytes = wire(bytes_(SESSION_NONCE_BYTES))
    #: ``{"a": signature, "b": signature}`` (``entity_a``, ``entity_b`` on the wire).
    entity_signatures: Mapping[str, bytes] = wire(per_role(bytes_(64)))


def verify_completion(pending: PendingPairing, proof: CompletionProof, now: float) -> PendingPairing:
    """Check a completion proof; returns the updated pending state (one more use recorded).

    Rejections: wrong pairing (``wrong_session``), wrong nonce (``hash_mismatch``), a bad
    binding-key signature (``bad_signature``), a replayed session (``replay``), more uses than
    the certificate allows (``exhausted``), past the handshake deadline of the first use
    (``timeout``) or past expiry (``expired``).
    """
    if proof.pairing_id != pending.pairing_id:
        raise VerificationError(Reason.WRONG_SESSION, "completion names another pairing")
    if now > pending.expires_at:
        raise VerificationError(Reason.EXPIRED, "pairing certificate has expired")
    if not pending.sessions and now > pending.handshake_deadline:
        raise VerificationError(Reason.TIMEOUT, "the pairing handshake was not completed in time")
    if proof.validation_nonce != pending.validation_nonce:
        raise VerificationError(Reason.HASH_MISMATCH, "validation nonce does not match the certificate")
    if proof.session_nonce in pending.sessions:
        raise VerificationError(Reason.REPLAY, "this completion was already recorded")
    if len(pending.sessions) >= pending.max_uses:
        raise VerificationError(Reason.EXHAUSTED, f"the certificate allows {pending.max_uses} use(s)")
    for role, key in (("a", pending.key_a), ("b", pending.key_b)):
        key.verify(
            labels.SIG_PAIRING_COMPLETION,
            _completion_bytes(
                pending.pairing_id, proof.validation_nonce, proof.session_nonce, pending.certificate_hash, role
            ),
            proof.entity_signatures[role],
        )
    return PendingPairing(
        pending.pairing_id, pending.binding_id, pending.certificate_hash, pending.validation_nonce,
        pending.handshake_deadline, pending.expires_at, pending.max_uses, pending.key_a, pending.key_b,
        (*pending.sessions, proof.session_nonce),
    )  # fmt: skip


# --------------------------------------------------------------------------- entity side


class PairingState(enum.Enum):
    AWAITING_PARTNER = "awaiting_partner"
    COMPLETING = "completing"  # initiator holds the keys and the completion proof
    PAIRED = "paired"
    TIMED_OUT = "timed_out"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class PairingSecrets:
    """The symmetric secrets of one pairing *session* (inputs to the CAN key derivation and levels 3-6).

    ``session_id`` (16 bytes, the head of the session transcript hash) names the session: the
    channel keeps freshness per (pairing, session) and refuses frames of other sessions.
    ``profile`` is the certificate's protocol profile; under ``efficient`` ``binding_secret`` is
    the session's binding MAC secret (:func:`derive_binding_mac_secret`) and ``pairing_secret``
    is already bound to it (docs/profiles.md); under ``seed`` there is no binding secret.
    """

    pairing_id: str
    role: str
    session_id: bytes
    pairing_secret: bytes = field(repr=False)
    exchange_secret: bytes = field(repr=False)
    mode: ControllerMode = ControllerMode.STANDARD
    profile: ProtocolProfile = DEFAULT_PROFILE
    binding_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.session_id) != SESSION_ID_BYTES:
            raise ValueError(f"a session id is {SESSION_ID_BYTES} bytes")
        if self.profile.binding_mac != (self.binding_secret is not None):
            raise ValueError(f"the {self.profile.value} profile {'needs' if self.profile.binding_mac else 'has no'} "
                             "binding MAC secret")  # fmt: skip
        if self.binding_secret is not None and len(self.binding_secret) != BINDING_SECRET_BYTES:
            raise ValueError(f"a binding MAC secret is {BINDING_SECRET_BYTES} bytes")

    @property
    def context(self) -> bytes:
        """Pairing id ‖ session id: what binding-tier signatures on this session's link cover."""
        return self.pairing_id.encode("ascii") + self.session_id

    def to_record(self) -> dict[str, Any]:
        return {
            "pairing_id": self.pairing_id,
            "role": self.role,
            "session_id": self.session_id,
            "pairing_secret": self.pairing_secret,
            "exchange_secret": self.exchange_secret,
            "mode": self.mode.value,
            "profile": self.profile.value,
            "binding_secret": self.binding_secret,
        }

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> PairingSecrets:
        """From :meth:`to_record`'s map; EncodingError (``malformed``) for any other shape.

        A record without ``profile`` is a seed session (no binding secret).
        """
        pid, role, sid = r.get("pairing_id"), r.get("role"), r.get("session_id")
        pairing_secret, exchange_secret = r.get("pairing_secret"), r.get("exchange_secret")
        binding_secret = r.get("binding_secret")
        if not (isinstance(pid, str) and pid.isascii() and role in ("a", "b") and isinstance(sid, bytes)):
            raise EncodingError("stored pairing secrets: pairing_id, role or session_id of the wrong type")
        if not (isinstance(pairing_secret, bytes) and pairing_secret and isinstance(exchange_secret, bytes)
                and exchange_secret):  # fmt: skip
            raise EncodingError("stored pairing secrets: a secret that is not a byte string")
        if binding_secret is not None and not (isinstance(binding_secret, bytes) and binding_secret):
            raise EncodingError("stored pairing secrets: a binding secret that is not a byte string")
        try:
            profile = ProtocolProfile(r.get("profile", DEFAULT_PROFILE.value))
            return cls(pid, role, sid, pairing_secret, exchange_secret, ControllerMode(r.get("mode")), profile,
                       binding_secret)  # fmt: skip
        except ValueError as exc:  # an unknown mode or profile, or lengths the profile does not allow
            raise EncodingError(f"stored pairing secrets: {exc}") from None


def derive_binding_mac_secret(
    binding_key: PrivateKey, partner_key: PublicKey, *, role: str, pairing_id: str, session_id: bytes
) -> bytes:
    """The binding MAC secret of one session (``efficient`` profile, docs/spec/key-schedule.md §4.3).

    HKDF-SHA256 over the static ECDH secret of the two binding keys, info = label ‖ pairing id ‖
    session id ‖ Q_a ‖ Q_b (the two semi-public keys as compressed points, entity a first). Only
    the two partners can compute it: the controller holds both public keys but neither private one.
    """
    if role not in _ROLES or len(session_id) != SESSION_ID_BYTES:
        raise ValueError("role a or b and a 16-byte session id")
    own = binding_key.public_key
    key_a, key_b = (own, partner_key) if role == "a" else (partner_key, own)
    info = labels.PAIRING_BINDING_MAC_SECRET + pairing_id.encode("ascii") + session_id
    return hkdf_sha256(binding_key.exchange(partner_key), info=info + key_a.to_bytes() + key_b.to_bytes())


def offer_hash(offer: bytes | Offer) -> bytes:
    """SHA-256 of what an offer's signature covers: its canonical body without the signature.

    Hashing the signed content rather than the received bytes keeps the transcript independent of
    how the signature itself is encoded.
    """
    return sha256((Offer.decode(offer) if isinstance(offer, bytes) else offer).signed_bytes())


def session_transcript(pairing_id: str, session_nonce: bytes, offer_a_hash: bytes, offer_b_hash: bytes) -> bytes:
    """The session transcript hash: label ‖ pairing id ‖ session nonce ‖ H(offer A) ‖ H(offer B).

    Every field has a fixed length (a pairing id is a 36-character UUID), so the concatenation is
    unambiguous.
    """
    if len(session_nonce) != SESSION_NONCE_BYTES or len(offer_a_hash) != 32 or len(offer_b_hash) != 32:
        raise VerificationError(Reason.MALFORMED, "transcript fields have the wrong size")
    return sha256(
        labels.PAIRING_SESSION_TRANSCRIPT + pairing_id.encode("ascii") + session_nonce + offer_a_hash + offer_b_hash
    )


def transcript_of_offers(offer_a: bytes, offer_b: bytes) -> bytes:
    """The transcript hash of a session from its two offers as they travelled (no key needed).

    Whoever carries both offers (the controller relays them) can compute it; it is public. The
    secrets stay out of reach without the pairing and exchange keys (and, in blind mode, the
    entities' ECDH secret).
    """
    a, b = Offer.decode(offer_a), Offer.decode(offer_b)
    if a.role != "a" or b.role != "b" or a.pairing_id != b.pairing_id:
        raise VerificationError(Reason.WRONG_SESSION, "the offers are not the two halves of one session")
    if a.session_nonce != b.session_nonce:
        raise VerificationError(Reason.WRONG_SESSION, "the offers belong to different sessions")
    return session_transcript(a.pairing_id, a.session_nonce, offer_hash(a), offer_hash(b))


def derive_session_secrets(
    pairing_key: bytes | bytearray,
    exchange_key: bytes,
    *,
    pairing_id: str,
    transcript: bytes,
    dh: bytes | None = None,
    binding_secret: bytes | None = None,
) -> tuple[bytes, bytes]:
    """``(pairing_secret, exchange_secret)`` of one session (HKDF-SHA256, RFC 5869).

    ikm = pairing key (or exchange key), ‖ the blind-mode ECDH secret when there is one;
    salt = the session transcript hash; info = label ‖ pairing id. With a ``binding_secret``
    (``efficient`` profile) the pairing secret is then bound to it: HKDF(ikm = pairing secret ‖
    binding secret, salt = transcript, info = label ‖ pairing id), so only holders of a binding
    private key of the pairing derive it (docs/profiles.md). The exchange secret is not bound.
    """
    pid = pairing_id.encode("ascii")
    if dh is None:
        pairing_secret = hkdf_sha256(
            bytes(pairing_key), salt=transcript, info=labels.PAIRING_SESSION_TRAFFIC_SECRET + pid
        )
        exchange_secret = hkdf_sha256(exchange_key, salt=transcript, info=labels.PAIRING_SESSION_EXCHANGE_SECRET + pid)
    else:
        pairing_secret = hkdf_sha256(
            bytes(pairing_key) + dh, salt=transcript, info=labels.PAIRING_BLIND_SESSION_TRAFFIC_SECRET + pid
        )
        exchange_secret = hkdf_sha256(
            exchange_key + dh, salt=transcript, info=labels.PAIRING_BLIND_SESSION_EXCHANGE_SECRET + pid
        )
    if binding_secret is not None:
        pairing_secret = hkdf_sha256(
            pairing_secret + binding_secret, salt=transcript, info=labels.PAIRING_BOUND_TRAFFIC_SECRET + pid
        )
    return pairing_secret, exchange_secret


class PairingParticipant:
    """One entity's side of a pairing, from certificate to traffic secrets.

    ``binding_key`` is this entity's private key for the binding the pairing relies on and
    ``partner_key`` the partner's semi-public key; both come from the Binding transaction.
    Role ``a`` initiates (:meth:`start`), role ``b`` answers (:meth:`on_offer`).
    """

    def __init__(
        self,
        *,
        certificate: PairingCertificate,
        device_id: str,
        binding_id: str,
        binding_key: PrivateKey,
        partner_key: PublicKey,
        partner_device_id: str,
        controller_key: PublicKey,
        now: float,
        uses_so_far: int = 0,
        rng: RandomSource | None = None,
        seen_sessions: Iterable[bytes] = (),
    ) -> None:
        self._rng = rng or SystemRandom()
        # Session nonces of offers this entity already answered for this pairing (persisted by the
        # node): a replayed offer of an earlier session must not replace the current secrets.
        self._seen_sessions = frozenset(bytes(n) for n in seen_sessions)
        certificate.verify(controller_key)
        meta = certificate.metadata
        self.metadata = meta
        self.certificate = certificate
        self.role = meta.role_of(device_id)
        partner_role = "b" if self.role == "a" else "a"
        if meta.binding_id != binding_id or meta.entity(partner_role).device_id != partner_device_id:
            raise VerificationError(Reason.WRONG_PEER, "certificate pairs this device with someone it is not bound to")
        now_ms = int(now * 1000)
        if now_ms < meta.valid_from_ms:
            raise VerificationError(Reason.NOT_YET_VALID, "pairing certificate is not valid yet")
        if now_ms > meta.expires_at_ms:
            raise VerificationError(Reason.EXPIRED, "pairing certificate has expired")
        if uses_so_far >= meta.max_uses:
            raise VerificationError(Reason.EXHAUSTED, f"certificate already used {uses_so_far} time(s)")
        sealed = certificate.sections[f"entity_{self.role}"]
        section = EntitySection.from_cbor(
            strict_loads(open_sealed(binding_key, sealed, context=_section_context(meta.pairing_id, self.role)))
        )
        if section.role != self.role:
            raise VerificationError(Reason.WRONG_PEER, "section was made for the other role")
        if section.metadata_hash != certificate.metadata_hash:
            raise VerificationError(Reason.HASH_MISMATCH, "clear metadata differs from what the controller sealed")
        self._half = section.half
        self._exchange_key = section.exchange_key
        self._binding_key = binding_key
        self._partner_key = partner_key
        self._ephemeral = PrivateKey.generate(self._rng) if meta.controller_mode is ControllerMode.BLIND else None
        self.deadline = now + meta.handshake_timeout_s
        self.state = PairingState.AWAITING_PARTNER
        self.session_nonce: bytes | None = None
        self.secrets: PairingSecrets | None = None
        self.completion: CompletionProof | None = None
        self._validation_nonce: bytes | None = None
        self.callback: str | None = None
        self._sent = False
        self._own_offer_hash: bytes | None = None

    @property
    def pairing_id(self) -> str:
        return self.metadata.pairing_id

    # -- offers --------------------------------------------------------------------------

    def _half_key(self, role: str) -> bytes:
        return hkdf_sha256(
            self._exchange_key, info=labels.PAIRING_HALF_EXCHANGE + self.pairing_id.encode("ascii") + role.encode()
        )

    def _offer(self, completion: bytes | None) -> bytes:
        assert self.session_nonce is not None
        nonce = self._rng.token_bytes(AEAD_NONCE_BYTES)
        aad = self.pairing_id.encode("ascii") + self.role.encode()
        offer = Offer(
            self.pairing_id, self.role, self.session_nonce,
            nonce + aead_encrypt(self._half_key(self.role), nonce, self._half, aad),
            self._ephemeral.public_key.to_bytes() if self._ephemeral else None, completion,
        )  # fmt: skip
        offer = replace(offer, signature=self._binding_key.sign(labels.SIG_PAIRING_OFFER, offer.signed_bytes()))
        self._sent = True
        self._own_offer_hash = offer_hash(offer)
        return offer.encode()

    def start(self, now: float) -> bytes:
        """Initiator: the first offer (this entity's half under the exchange key)."""
        if self.role != "a" or self._sent:
            raise ProtocolError("only entity a starts, once")
        self._check_deadline(now)
        self.session_nonce = self._rng.token_bytes(SESSION_NONCE_BYTES)
        return self._offer(None)

    def on_offer(self, data: bytes, now: float) -> bytes | None:
        """Take the partner's offer. Entity b answers with its own offer; entity a returns None
        and holds the :attr:`completion` proof for the controller's callback."""
        self._check_deadline(now)
        if self.state is not PairingState.AWAITING_PARTNER:
            raise VerificationError(Reason.DUPLICATE, f"pairing is {self.state.value}")
        offer = Offer.decode(data)
        self._partner_key.verify(labels.SIG_PAIRING_OFFER, offer.signed_bytes(), offer.signature)
        partner_role = "b" if self.role == "a" else "a"
        if offer.pairing_id != self.pairing_id or offer.role != partner_role:
            raise VerificationError(Reason.WRONG_SESSION, "offer belongs to another pairing or role")
        session_nonce = offer.session_nonce
        if self.role == "b":
            if session_nonce in self._seen_sessions:
                raise VerificationError(Reason.REPLAY, "offer of a session this entity already answered")
            self.session_nonce = session_nonce
        elif session_nonce != self.session_nonce:
            raise VerificationError(Reason.WRONG_SESSION, "offer answers another session")
        sealed = offer.sealed_half
        aad = self.pairing_id.encode("ascii") + partner_role.encode()
        partner_half = aead_decrypt(
            self._half_key(partner_role), sealed[:AEAD_NONCE_BYTES], sealed[AEAD_NONCE_BYTES:], aad
        )
        if len(partner_half) != HALF_BYTES:
            raise VerificationError(Reason.MALFORMED, "a half is 32 bytes")
        partner_hash = offer_hash(offer)
        pairing_key = bytearray(self._half + partner_half if self.role == "a" else partner_half + self._half)
        try:
            self._open_handshake(pairing_key)
            dh = self._blind_secret(offer.ephemeral)
            assert self._validation_nonce is not None
            my_completion = self._binding_key.sign(
                labels.SIG_PAIRING_COMPLETION,
                _completion_bytes(
                    self.pairing_id,
                    self._validation_nonce,
                    self.session_nonce,
                    self.certificate.certificate_hash,
                    self.role,
                ),
            )
            if self.role == "b":
                # B's own offer is part of the transcript, so it is built before the secrets.
                reply = self._offer(my_completion)
                assert self._own_offer_hash is not None
                self.secrets = self._derive(pairing_key, dh, partner_hash, self._own_offer_hash)
                self.state = PairingState.PAIRED
                return reply
            partner_completion = offer.completion
            if partner_completion is None:
                raise VerificationError(Reason.MALFORMED, "offer.completion must be a byte string")
            self._partner_key.verify(
                labels.SIG_PAIRING_COMPLETION,
                _completion_bytes(
                    self.pairing_id, self._validation_nonce, self.session_nonce, self.certificate.certificate_hash, "b"
                ),
                partner_completion,
            )
            assert self._own_offer_hash is not None
            self.secrets = self._derive(pairing_key, dh, self._own_offer_hash, partner_hash)
        finally:
            _wipe(pairing_key)
        self.completion = CompletionProof(
            self.pairing_id, self._validation_nonce, self.session_nonce, {"a": my_completion, "b": partner_completion}
        )
        self.state = PairingState.COMPLETING
        return None

    def confirm(self) -> None:
        """Initiator: the controller accepted the completion."""
        if self.state is not PairingState.COMPLETING:
            raise ProtocolError("nothing to confirm")
        self.state = PairingState.PAIRED

    def tick(self, now: float) -> None:
        """Abandon a partial pairing past its handshake deadline (erasing the half)."""
        if self.state is PairingState.AWAITING_PARTNER and now > self.deadline:
            self.state = PairingState.TIMED_OUT
            self._half = b""
            self._exchange_key = b""

    def _check_deadline(self, now: float) -> None:
        self.tick(now)
        if self.state is PairingState.TIMED_OUT:
            raise VerificationError(Reason.TIMEOUT, "the pairing handshake timed out")

    def _open_handshake(self, pairing_key: bytearray) -> None:
        box = self.certificate.sections["handshake_validation"]
        try:
            plain = aead_decrypt(
                _handshake_key(pairing_key, self.pairing_id),
                box[:AEAD_NONCE_BYTES],
                box[AEAD_NONCE_BYTES:],
                self.certificate.metadata_hash,
            )
        except VerificationError:
            self.state = PairingState.FAILED
            raise VerificationError(Reason.KEY_MISMATCH, "the halves do not rebuild the pairing key") from None
        hs = HandshakeSection.from_cbor(strict_loads(plain))
        self._validation_nonce = hs.validation_nonce
        self.callback = hs.callback

    def _blind_secret(self, partner_ephemeral: bytes | None) -> bytes | None:
        if self._ephemeral is None:
            if partner_ephemeral is not None:
                raise VerificationError(Reason.MALFORMED, "standard-mode offer carries an ephemeral key")
            return None
        if partner_ephemeral is None:
            raise VerificationError(Reason.MALFORMED, "blind-mode offer lacks its ephemeral key")
        return self._ephemeral.exchange(PublicKey.from_bytes(partner_ephemeral))

    def _derive(self, pairing_key: bytearray, dh: bytes | None, hash_a: bytes, hash_b: bytes) -> PairingSecrets:
        assert self.session_nonce is not None
        transcript = session_transcript(self.pairing_id, self.session_nonce, hash_a, hash_b)
        session_id = transcript[:SESSION_ID_BYTES]
        profile = self.metadata.profile
        binding_secret = (
            derive_binding_mac_secret(
                self._binding_key, self._partner_key, role=self.role, pairing_id=self.pairing_id, session_id=session_id
            )
            if profile.binding_mac
            else None
        )
        pairing_secret, exchange_secret = derive_session_secrets(
            pairing_key, self._exchange_key, pairing_id=self.pairing_id, transcript=transcript, dh=dh,
            binding_secret=binding_secret,
        )  # fmt: skip
        return PairingSecrets(
            self.pairing_id, self.role, session_id, pairing_secret, exchange_secret, self.metadata.controller_mode,
            profile, binding_secret,
        )  # fmt: skip
