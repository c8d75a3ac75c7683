"""Cipher suite v1: P-256 ECDSA/ECDH, ECIES, AES-256-GCM, HKDF-SHA256, SHA-256.

Thin, misuse-resistant wrappers over ``cryptography``; no primitive is implemented here.
Every received point and signature is validated before use, and every failure is a
:class:`~modbatt.errors.VerificationError` with a classified reason.

Signatures are low-S only (docs/crypto.md §2), and for the labels in
:data:`~modbatt.crypto.labels.KEY_HIDING` the signed digest covers the signer's public key
(docs/crypto.md §3.1); both rules live here, so no call site can skip them.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import Reason, VerificationError
from . import labels
from .rng import RandomSource, SystemRandom

__all__ = [
    "AEAD_KEY_BYTES",
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "COMPRESSED_POINT_BYTES",
    "P256_HALF_ORDER",
    "P256_ORDER",
    "SEAL_OVERHEAD",
    "SIGNATURE_BYTES",
    "PrivateKey",
    "PublicKey",
    "aead_decrypt",
    "aead_encrypt",
    "hkdf_sha256",
    "low_s",
    "open_sealed",
    "seal_to_semi_public_key",
    "sha256",
    "signed_digest",
]

P256_ORDER: Final = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
#: The largest ``s`` a suite-v1 signature may carry (low-S: ``s <= (n - 1) / 2``, n is odd).
P256_HALF_ORDER: Final = P256_ORDER >> 1
SIGNATURE_BYTES: Final = 64
COMPRESSED_POINT_BYTES: Final = 33
UNCOMPRESSED_POINT_BYTES: Final = 65
AEAD_KEY_BYTES: Final = 32
AEAD_NONCE_BYTES: Final = 12
AEAD_TAG_BYTES: Final = 16
#: Bytes a sealed box adds to its plaintext: ephemeral point + GCM tag.
SEAL_OVERHEAD: Final = COMPRESSED_POINT_BYTES + AEAD_TAG_BYTES
KEY_ID_BYTES: Final = 8

_CURVE = ec.SECP256R1()
# RFC 6979 deterministic ECDSA: no per-signature randomness to get wrong, and
# reproducible signatures for docs for free.
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
# The same over a digest from signed_digest() (RFC 6979 §3.2 starts from H(m) anyway, so the
# signatures are identical): one digest function for this process and for external signers.
_ECDSA_DIGEST = ec.ECDSA(Prehashed(hashes.SHA256()), deterministic_signing=True)
_VERIFY_DIGEST = ec.ECDSA(Prehashed(hashes.SHA256()))
_ZERO_NONCE = bytes(AEAD_NONCE_BYTES)


def sha256(data: bytes) -> bytes:
    """SHA-256 digest of ``data``."""
    return hashlib.sha256(data).digest()


def _framed(label: bytes, message: bytes) -> bytes:
    # Length-prefixed so that no label is a prefix of another's signed bytes.
    return len(label).to_bytes(1, "big") + label + message


def _signed_bytes(label: bytes, signer: PublicKey, message: bytes) -> bytes:
    """What a signature under ``label`` covers (docs/crypto.md §3).

    For a key-hiding label the signer's 33-byte compressed point follows the label: the digest
    then depends on the key, so SEC 1 public-key recovery from a signature needs the key it
    would recover (docs/crypto.md §3.1). The point has a fixed length, so the frame stays
    unambiguous.
    """
    label = bytes(label)
    if label in labels.KEY_HIDING:
        return _framed(label, signer.to_bytes() + message)
    return _framed(label, message)


def signed_digest(label: bytes, message: bytes, *, signer: PublicKey) -> bytes:
    """SHA-256 of what a signature under ``label`` by ``signer`` covers (docs/crypto.md §3).

    :meth:`PrivateKey.sign` signs exactly this digest; a signer outside this process that takes
    a digest (a PKCS#11 token's ``CKM_ECDSA``) must too, and pass its raw r‖s through
    :func:`low_s`, so that :meth:`PublicKey.verify` accepts it like any other.
    """
    return sha256(_signed_bytes(label, signer, message))


def low_s(signature: bytes) -> bytes:
    """The canonical form of a raw 64-byte r‖s signature: ``s`` replaced by ``n − s`` when high.

    ``(r, s)`` and ``(r, n − s)`` are the same signature to the curve; suite v1 accepts only the
    low one (docs/crypto.md §2). Signers whose output is either half call this.
    """
    signature = bytes(signature)
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError("a signature is 64 bytes (r‖s)")
    s = int.from_bytes(signature[32:], "big")
    if s > P256_HALF_ORDER:
        return signature[:32] + (P256_ORDER - s).to_bytes(32, "big")
    return signature


def hkdf_sha256(ikm: bytes, *, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 (RFC 5869). ``info`` must start with a label from :mod:`.labels`."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM encryption; returns ciphertext followed by the 16-byte tag."""
    if len(key) != AEAD_KEY_BYTES:
        raise ValueError("AES-256-GCM needs a 32-byte key")
    if len(nonce) != AEAD_NONCE_BYTES:
        raise ValueError("AES-256-GCM nonces are 12 bytes")
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes = b"") -> bytes:
    """AES-256-GCM decryption; a wrong key, nonce, AAD or tag is ``Reason.BAD_MAC``."""
    if len(key) != AEAD_KEY_BYTES or len(nonce) != AEAD_NONCE_BYTES:
        raise VerificationError(Reason.MALFORMED, "AEAD key or nonce has the wrong size")
    if len(ciphertext) < AEAD_TAG_BYTES:
        raise VerificationError(Reason.MALFORMED, "ciphertext shorter than its tag")
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise VerificationError(Reason.BAD_MAC, "authentication tag does not verify") from None


class PublicKey:
    """A P-256 public key: a binding's semi-public key, a controller key, an ephemeral key.

    Constructed only from validated encodings; equality and hashing use the compressed point.
    """

    __slots__ = ("_compressed", "_key")

    def __init__(self, key: ec.EllipticCurvePublicKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise VerificationError(Reason.INVALID_POINT, "key is not on P-256")
        self._key = key
        self._compressed = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PublicKey:
        """Load a SEC1 point (33-byte compressed or 65-byte uncompressed), validated."""
        data = bytes(data)
        if len(data) not in (COMPRESSED_POINT_BYTES, UNCOMPRESSED_POINT_BYTES):
            raise VerificationError(Reason.INVALID_POINT, f"a P-256 point is 33 or 65 bytes, got {len(data)}")
        if (len(data) == COMPRESSED_POINT_BYTES and data[0] not in (2, 3)) or (
            len(data) == UNCOMPRESSED_POINT_BYTES and data[0] != 4
        ):
            raise VerificationError(Reason.INVALID_POINT, "bad SEC1 point prefix")
        try:
            # Checks the point is on the curve (invalid-curve attacks, CVE-2018-5383);
            # P-256 has cofactor 1, so on-curve and not infinity is enough.
            key = ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, data)
        except ValueError:
            raise VerificationError(Reason.INVALID_POINT, "point is not on P-256") from None
        return cls(key)

    @classmethod
    def from_uncompressed(cls, data: bytes) -> PublicKey:
        """Load only the 65-byte uncompressed form (for interfaces that mandate it)."""
        if len(data) != UNCOMPRESSED_POINT_BYTES:
            raise VerificationError(Reason.INVALID_POINT, "expected a 65-byte uncompressed point")
        return cls.from_bytes(data)

    @classmethod
    def from_spki_der(cls, der: bytes) -> PublicKey:
        """Load a DER SubjectPublicKeyInfo, accepting only P-256 keys."""
        try:
            key = serialization.load_der_public_key(bytes(der))
        except (ValueError, TypeError, Exception):
            raise VerificationError(Reason.INVALID_POINT, "not a DER SubjectPublicKeyInfo") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError(Reason.INVALID_POINT, "not an elliptic-curve key")
        return cls(key)

    def to_bytes(self) -> bytes:
        """The 33-byte compressed point (the wire form)."""
        return self._compressed

    def to_uncompressed(self) -> bytes:
        """The 65-byte uncompressed point (for interfaces that mandate it, e.g. PKCS#11 ECDH)."""
        return self._key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)

    def to_spki_der(self) -> bytes:
        """DER SubjectPublicKeyInfo, for outside tools."""
        return self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def key_id(self) -> bytes:
        """An 8-byte identifier: truncated labelled SHA-256 of the compressed point."""
        return sha256(labels.KEY_ID + self._compressed)[:KEY_ID_BYTES]

    def verify(self, label: bytes, message: bytes, signature: bytes) -> None:
        """Check a raw 64-byte r‖s signature over ``label``-framed ``message``.

        For a key-hiding label the frame includes this key (:func:`signed_digest`).
        Raises ``VerificationError(MALFORMED)`` for a wrong length, out-of-range r/s or a
        high-S signature, and ``VerificationError(BAD_SIGNATURE)`` for one that does not verify.
        """
        self._verify_digest(signed_digest(label, message, signer=self), signature)

    def verify_unlabelled(self, message: bytes, signature: bytes) -> None:
        """Verify a raw low-S r‖s ECDSA-SHA256 signature over ``message`` without a label.

        For conformance vectors and foreign formats only; modbatt's own messages use
        :meth:`verify`. The low-S rule applies here too.
        """
        self._verify_digest(sha256(message), signature)

    def _verify_digest(self, digest: bytes, signature: bytes) -> None:
        signature = bytes(signature)
        if len(signature) != SIGNATURE_BYTES:
            raise VerificationError(Reason.MALFORMED, "a signature is 64 bytes (r‖s)")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < P256_ORDER and 0 < s < P256_ORDER):
            # Structurally impossible for any signer, so it is malformed input, not a
            # signature that merely fails (the docstring of verify() promises MALFORMED).
            raise VerificationError(Reason.MALFORMED, "signature scalar r or s out of range [1, n-1]")
        if s > P256_HALF_ORDER:
            # (r, n - s) verifies whenever (r, s) does; accepting both would give every signed
            # message two encodings. Our signers never emit high S, so it is non-canonical input.
            raise VerificationError(Reason.MALFORMED, "signature is not low-S (s > n/2)")
        try:
            self._key.verify(encode_dss_signature(r, s), digest, _VERIFY_DIGEST)
        except InvalidSignature:
            raise VerificationError(Reason.BAD_SIGNATURE, "signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and hmac.compare_digest(self._compressed, other._compressed)

    def __hash__(self) -> int:
        return hash(self._compressed)

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id().hex()})"


class PrivateKey:
    """A P-256 private key. Its scalar never appears in ``repr``, logs or exceptions."""

    __slots__ = ("_key", "_public", "reproducible")

    def __init__(self, key: ec.EllipticCurvePrivateKey, *, reproducible: bool = False) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("only P-256 keys are supported")
        self._key = key
        self._public = PublicKey(key.public_key())
        #: True when the key came from seeded randomness; key stores refuse to persist it.
        self.reproducible = reproducible

    @classmethod
    def generate(cls, rng: RandomSource | None = None) -> PrivateKey:
        """A fresh key from ``rng`` (the system CSPRNG by default)."""
        if rng is None or isinstance(rng, SystemRandom):
            return cls(ec.generate_private_key(_CURVE))
        while True:  # rejection sampling keeps the scalar uniform in [1, n-1]
            scalar = int.from_bytes(rng.token_bytes(32), "big")
            if 0 < scalar < P256_ORDER:
                return cls(ec.derive_private_key(scalar, _CURVE), reproducible=rng.reproducible)

    @classmethod
    def from_scalar_bytes(cls, data: bytes, *, reproducible: bool = False) -> PrivateKey:
        """Load a 32-byte big-endian scalar (as held in a key store)."""
        if len(data) != 32:
            raise ValueError("a P-256 private scalar is 32 bytes")
        scalar = int.from_bytes(data, "big")
        if not 0 < scalar < P256_ORDER:
            raise ValueError("private scalar out of range")
        return cls(ec.derive_private_key(scalar, _CURVE), reproducible=reproducible)

    def scalar_bytes(self) -> bytes:
        """The 32-byte scalar. Only a key store should call this."""
        return self._key.private_numbers().private_value.to_bytes(32, "big")

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, label: bytes, message: bytes) -> bytes:
        """A deterministic (RFC 6979) ECDSA-SHA256 signature, raw 64-byte r‖s, low-S.

        For a key-hiding label the signed frame includes this key's public point.
        """
        der = self._key.sign(signed_digest(label, message, signer=self._public), _ECDSA_DIGEST)
        r, s = decode_dss_signature(der)
        # OpenSSL returns either half; only the low one is canonical.
        return low_s(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def exchange(self, peer: PublicKey) -> bytes:
        """ECDH shared secret (the x coordinate) with a validated peer key."""
        return self._key.exchange(ec.ECDH(), peer._key)

    def __repr__(self) -> str:
        return f"PrivateKey(public_key_id={self._public.key_id().hex()})"

    def __reduce__(self) -> object:  # pragma: no cover - defensive
        raise TypeError("private keys are not picklable; store them in a KeyStore")


def _seal_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return hkdf_sha256(shared, info=labels.ECIES_KEY + ephemeral + recipient)


def seal_to_semi_public_key(
    recipient: PublicKey,
    plaintext: bytes,
    *,
    context: bytes,
    rng: RandomSource | None = None,
) -> bytes:
    """ECIES: encrypt ``plaintext`` so that only the holder of ``recipient``'s private key reads it.

    Output: 33-byte ephemeral compressed point ‖ AES-256-GCM ciphertext ‖ tag. The key is
    HKDF(ECDH, info = label ‖ ephemeral ‖ recipient), fresh per box, so the zero nonce is
    never reused. ``context`` is bound as associated data (what the box is for).
    """
    ephemeral = PrivateKey.generate(rng)
    eph_bytes = ephemeral.public_key.to_bytes()
    key = _seal_key(ephemeral.exchange(recipient), eph_bytes, recipient.to_bytes())
    return eph_bytes + aead_encrypt(key, _ZERO_NONCE, plaintext, context)


def open_sealed(recipient: PrivateKey, sealed: bytes, *, context: bytes) -> bytes:
    """Open a box made by :func:`seal_to_semi_public_key`; raises ``VerificationError``."""
    sealed = bytes(sealed)
    if len(sealed) < SEAL_OVERHEAD:
        raise VerificationError(Reason.MALFORMED, "sealed box is too short")
    ephemeral = PublicKey.from_bytes(sealed[:COMPRESSED_POINT_BYTES])
    key = _seal_key(recipient.exchange(ephemeral), ephemeral.to_bytes(), recipient.public_key.to_bytes())
    return aead_decrypt(key, _ZERO_NONCE, sealed[COMPRESSED_POINT_BYTES:], context)
