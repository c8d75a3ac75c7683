"""The pairing certificate (docs/seed.md §2.1-2.2): clear metadata, three encrypted sections, a signature.

Encoding (deterministic CBOR; byte layout in docs/pairing.md)::

    certificate = {"v": 2,                      ; the protocol version (labels.PROTOCOL_VERSION)
                   "metadata": bstr,            ; canonical CBOR of PairingMetadata (with its "profile")
                   "sections": {"entity_a": bstr, "entity_b": bstr, "handshake_validation": bstr},
                   "signature": bstr .size 64}  ; controller, over the map without "signature"

The metadata travels as a byte string so that its SHA-256 — which each entity section
carries — is computed over exactly the bytes that were signed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey, sha256
from ..encoding import canonical_dumps, strict_loads
from ..errors import Reason, VerificationError
from ._fields import expect_map, integer, malformed, raw_bytes, text, uuid_text
from .access import AccessData
from .policy import EncryptionPolicy
from .profile import DEFAULT_PROFILE, ProtocolProfile

__all__ = [
    "CERTIFICATE_VERSION",
    "MAX_CERTIFICATE_BYTES",
    "SECTION_NAMES",
    "ControllerMode",
    "PairingCertificate",
    "PairingMetadata",
    "Restrictions",
]

CERTIFICATE_VERSION = labels.PROTOCOL_VERSION
MAX_CERTIFICATE_BYTES = 8192
SECTION_NAMES = ("entity_a", "entity_b", "handshake_validation")
CONTEXTS = ("battery_management", "diagnostics", "firmware_update", "emergency", "manufacturing")


class ControllerMode(enum.StrEnum):
    """``standard``: the seed's design; ``blind``: entities mix in an ECDH secret the controller lacks."""

    STANDARD = "standard"
    BLIND = "blind"


@dataclass(frozen=True, slots=True)
class Restrictions:
    """Context restrictions: what the pairing may be used for."""

    allowed_operations: tuple[str, ...] = ()
    data_types: tuple[str, ...] = ()
    max_messages_per_s: int = 0  # 0 = unlimited

    def to_dict(self) -> dict[str, Any]:
        return {
            "allowed_operations": list(self.allowed_operations),
            "data_types": list(self.data_types),
            "max_messages_per_s": self.max_messages_per_s,
        }

    @classmethod
    def from_dict(cls, value: Any) -> Restrictions:
        m = expect_map(value, "restrictions", required={"allowed_operations", "data_types", "max_messages_per_s"})
        lists = []
        for name in ("allowed_operations", "data_types"):
            items = m[name]
            if not isinstance(items, list) or len(items) > 64:
                raise malformed(f"restrictions.{name} must be a list of at most 64 names")
            lists.append(tuple(text(i, f"restrictions.{name}", max_len=64) for i in items))
        return cls(lists[0], lists[1], integer(m["max_messages_per_s"], "max_messages_per_s", lo=0, hi=100_000))


@dataclass(frozen=True, slots=True)
class PairingMetadata:
    """The certificate's clear metadata (docs/seed.md §2.1)."""

    pairing_id: str
    binding_id: str
    context: str
    entity_a: AccessData
    entity_b: AccessData
    created_at_ms: int
    valid_from_ms: int
    expires_at_ms: int
    max_uses: int
    encryption_policy: EncryptionPolicy
    restrictions: Restrictions
    controller_mode: ControllerMode
    handshake_timeout_s: int
    controller_key_id: bytes
    #: How the partners authenticate each other (docs/profiles.md); covered by the controller's signature.
    profile: ProtocolProfile = DEFAULT_PROFILE

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise malformed(f"context must be one of {', '.join(CONTEXTS)}")
        if not self.valid_from_ms < self.expires_at_ms:
            raise malformed("valid_from must precede expires_at")
        if self.entity_a.device_id == self.entity_b.device_id:
            raise malformed("a pairing needs two different entities")

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": CERTIFICATE_VERSION,
            "pairing_id": self.pairing_id,
            "binding_id": self.binding_id,
            "context": self.context,
            "entities": {"a": self.entity_a.to_dict(), "b": self.entity_b.to_dict()},
            "timing": {
                "created_at": self.created_at_ms,
                "valid_from": self.valid_from_ms,
                "expires_at": self.expires_at_ms,
                "max_uses": self.max_uses,
            },
            "encryption_policy": self.encryption_policy.to_dict(),
            "restrictions": self.restrictions.to_dict(),
            "controller_mode": self.controller_mode.value,
            "handshake_timeout_s": self.handshake_timeout_s,
            "controller_key_id": self.controller_key_id,
            "profile": self.profile.value,
        }

    def encode(self) -> bytes:
        return canonical_dumps(self.to_dict())

    def role_of(self, device_id: str) -> str:
        if device_id == self.entity_a.device_id:
            return "a"
        if device_id == self.entity_b.device_id:
            return "b"
        raise VerificationError(Reason.WRONG_PEER, f"{device_id} is not named in pairing {self.pairing_id}")

    def entity(self, role: str) -> AccessData:
        return self.entity_a if role == "a" else self.entity_b

    @classmethod
    def decode(cls, data: bytes) -> PairingMetadata:
        m = expect_map(
            strict_loads(data, max_bytes=MAX_CERTIFICATE_BYTES),
            "metadata",
            required={
                "v", "pairing_id", "binding_id", "context", "entities", "timing", "encryption_policy",
                "restrictions", "controller_mode", "handshake_timeout_s", "controller_key_id", "profile",
            },
        )  # fmt: skip
        if m["v"] != CERTIFICATE_VERSION:
            raise malformed(f"unsupported certificate version {m['v']!r}")
        ents = expect_map(m["entities"], "entities", required={"a", "b"})
        timing = expect_map(m["timing"], "timing", required={"created_at", "valid_from", "expires_at", "max_uses"})
        try:
            mode = ControllerMode(m["controller_mode"])
        except ValueError:
            raise malformed("controller_mode must be standard or blind") from None
        try:
            profile = ProtocolProfile(text(m["profile"], "profile", max_len=16))
        except ValueError:
            raise malformed(f"profile must be one of {', '.join(p.value for p in ProtocolProfile)}") from None
        return cls(
            uuid_text(m["pairing_id"], "pairing_id"),
            uuid_text(m["binding_id"], "binding_id"),
            text(m["context"], "context", max_len=32),
            AccessData.from_dict(ents["a"], "entities.a"),
            AccessData.from_dict(ents["b"], "entities.b"),
            integer(timing["created_at"], "created_at", lo=0, hi=2**53),
            integer(timing["valid_from"], "valid_from", lo=0, hi=2**53),
            integer(timing["expires_at"], "expires_at", lo=0, hi=2**53),
            integer(timing["max_uses"], "max_uses", lo=1, hi=2**32),
            EncryptionPolicy.from_dict(m["encryption_policy"]),
            Restrictions.from_dict(m["restrictions"]),
            mode,
            integer(m["handshake_timeout_s"], "handshake_timeout_s", lo=1, hi=86_400),
            raw_bytes(m["controller_key_id"], "controller_key_id", size=8),
            profile,
        )


@dataclass(frozen=True, slots=True)
class PairingCertificate:
    """A signed pairing certificate: clear metadata bytes and three sealed sections."""

    metadata_bytes: bytes
    sections: Mapping[str, bytes]
    signature: bytes = field(default=b"", repr=False)

    @property
    def metadata(self) -> PairingMetadata:
        return PairingMetadata.decode(self.metadata_bytes)

    @property
    def metadata_hash(self) -> bytes:
        """SHA-256 of the clear metadata, as carried in each entity section (docs/seed.md §2.2)."""
        return sha256(self.metadata_bytes)

    def _signed(self) -> bytes:
        return canonical_dumps(
            {"v": CERTIFICATE_VERSION, "metadata": self.metadata_bytes, "sections": dict(self.sections)}
        )

    def sign(self, controller_key: PrivateKey) -> PairingCertificate:
        sig = controller_key.sign(labels.SIG_PAIRING_CERTIFICATE, self._signed())
        return PairingCertificate(self.metadata_bytes, dict(self.sections), sig)

    def verify(self, controller_key: PublicKey) -> None:
        """Check the controller's signature (``Reason.BAD_SIGNATURE``)."""
        controller_key.verify(labels.SIG_PAIRING_CERTIFICATE, self._signed(), self.signature)

    def encode(self) -> bytes:
        return canonical_dumps(
            {
                "v": CERTIFICATE_VERSION,
                "metadata": self.metadata_bytes,
                "sections": dict(self.sections),
                "signature": self.signature,
            }
        )

    @property
    def certificate_hash(self) -> bytes:
        """The certificate's identity: SHA-256 of what the controller signs (metadata and sections).

        Not of :meth:`encode`, which includes the signature: a signature is checked, never
        identified by its bytes (docs/crypto.md §2), so every encoding of one signed
        certificate has one identity.
        """
        return sha256(self._signed())

    @classmethod
    def decode(cls, data: bytes) -> PairingCertificate:
        """Parse untrusted bytes (structure only; call :meth:`verify` for the signature)."""
        m = expect_map(
            strict_loads(data, max_bytes=MAX_CERTIFICATE_BYTES),
            "certificate",
            required={"v", "metadata", "sections", "signature"},
        )
        if m["v"] != CERTIFICATE_VERSION:
            raise malformed(f"unsupported certificate version {m['v']!r}")
        sections = expect_map(m["sections"], "sections", required=set(SECTION_NAMES))
        cert = cls(
            raw_bytes(m["metadata"], "metadata", max_len=MAX_CERTIFICATE_BYTES),
            {n: raw_bytes(sections[n], f"sections.{n}", max_len=1024) for n in SECTION_NAMES},
            raw_bytes(m["signature"], "signature", size=SIGNATURE_BYTES),
        )
        cert.metadata  # noqa: B018 - validates the metadata structure now
        return cert

    def describe(self) -> dict[str, Any]:
        """A JSON view for people: metadata and section sizes (``modbatt cert inspect``)."""
        meta = self.metadata.to_dict()
        meta["controller_key_id"] = meta["controller_key_id"].hex()
        return {
            "metadata": meta,
            "sections": [{"name": n, "size": len(self.sections[n])} for n in SECTION_NAMES],
            "size": len(self.encode()),
        }
