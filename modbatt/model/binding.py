"""Binding records (docs/seed.md §1.3), their ledger view, and binding authorizations.

A :class:`BindingRecord` carries the two semi-public keys and is held only by the
controller and the two bound entities. What goes into the public ledger is its
:meth:`~BindingRecord.ledger_view`: the same record with each semi-public key replaced by a
commitment (docs/binding.md: the ledger holds commitments, never the keys). The controller's ``authority``
signature covers the ledger view, so anyone holding the ledger can check it, and anyone
holding a key can check that it is the one committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey, sha256
from ..encoding import canonical_dumps
from ..errors import Reason, VerificationError
from ._fields import b64, b64_bytes, expect_map, integer, malformed, text, uuid_text
from .access import AccessData, LctRef
from .schema import Kind

__all__ = [
    "LEDGER_ENTRY_VERSION",
    "TIMESTAMP",
    "BindingAuthorization",
    "BindingRecord",
    "BoundEntity",
    "RevocationRecord",
    "bound_lct_of",
    "format_timestamp",
    "key_commitment",
    "parse_timestamp",
]

LEDGER_ENTRY_VERSION = labels.PROTOCOL_VERSION


def format_timestamp(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, e.g. ``2026-11-28T02:10:00.123Z``."""
    ms = round(seconds * 1000)
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_timestamp(value: Any, what: str = "timestamp") -> float:
    s = text(value, what, max_len=32)
    try:
        dt = datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError:
        raise malformed(f"{what} must be RFC 3339 UTC like 2026-01-01T00:00:00.000Z") from None
    return dt.timestamp()


def _read_timestamp(value: Any, what: str) -> str:
    parse_timestamp(value, what)
    return str(value)


#: The schema kind of a record's time, as :func:`format_timestamp` writes it (kept as that text).
TIMESTAMP = Kind(
    "timestamp",
    {},
    _read_timestamp,
    ("text", "≤ 32 chars", "RFC 3339 UTC with milliseconds, e.g. 2026-01-01T00:00:00.000Z"),
)


def key_commitment(binding_id: str, key: PublicKey) -> bytes:
    """SHA-256 commitment to a semi-public key, bound to its binding."""
    return sha256(labels.COMMIT_SEMI_PUBLIC_KEY + binding_id.encode("ascii") + key.to_bytes())


def bound_lct_of(own: AccessData, partner: AccessData) -> LctRef | None:
    """The LCT a party of a binding is bound to: its partner when the partner is an LCT, else the
    one its own access data declares (docs/binding.md §LCT binding).

    Raises ``wrong_peer`` when a party that declares a bound LCT is bound to another LCT: a
    device belongs to one LCT.
    """
    lct = partner.lct_ref
    if lct is None:
        return own.bound_lct
    if own.bound_lct is not None and not own.bound_lct.same_lct(lct):
        raise VerificationError(
            Reason.WRONG_PEER, f"{own.device_id} declares {own.bound_lct.lct_id}, not {lct.lct_id}"
        )
    return lct


@dataclass(frozen=True, slots=True)
class BoundEntity:
    """One side of a binding: access data, its semi-public key for this binding, its bound LCT.

    ``bound_lct`` is :func:`bound_lct_of` this side and its partner; :class:`BindingRecord`
    checks that it is.
    """

    access_data: AccessData
    semi_public_key: PublicKey
    bound_lct: LctRef | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "access_data": self.access_data.to_dict(),
            "semi_public_key": b64(self.semi_public_key.to_bytes()),
            "bound_lct": self.bound_lct.to_dict() if self.bound_lct else None,
        }

    @classmethod
    def from_dict(cls, value: Any, what: str) -> BoundEntity:
        m = expect_map(value, what, required={"access_data", "semi_public_key", "bound_lct"})
        access = AccessData.from_dict(m["access_data"], f"{what}.access_data")
        key = PublicKey.from_bytes(b64_bytes(m["semi_public_key"], f"{what}.semi_public_key", max_len=65))
        lct = LctRef.from_dict(m["bound_lct"]) if m["bound_lct"] is not None else None
        return cls(access, key, lct)

    def ledger_view(self, binding_id: str) -> dict[str, Any]:
        return {
            "access_data": self.access_data.to_dict(),
            "semi_public_key_commitment": key_commitment(binding_id, self.semi_public_key),
            "bound_lct": self.bound_lct.to_dict() if self.bound_lct else None,
        }


@dataclass(frozen=True, slots=True)
class BindingRecord:
    """The seed's binding record; ``authority`` is the controller's signature."""

    binding_id: str
    entity_a: BoundEntity
    entity_b: BoundEntity
    timestamp: str
    authority: bytes = field(default=b"", repr=False)
    supersedes: str | None = None

    def __post_init__(self) -> None:
        a, b = self.entity_a, self.entity_b
        for own, partner, side in ((a, b, "entity_a"), (b, a, "entity_b")):
            if own.bound_lct != bound_lct_of(own.access_data, partner.access_data):
                raise malformed(f"{side}.bound_lct is not the LCT this binding binds it to")

    @classmethod
    def between(
        cls, binding_id: str, a: tuple[AccessData, PublicKey], b: tuple[AccessData, PublicKey], timestamp: str,
        *, supersedes: str | None = None,
    ) -> BindingRecord:
        """An unsigned record for two parties, each side's bound LCT derived (:func:`bound_lct_of`)."""
        return cls(
            binding_id,
            BoundEntity(a[0], a[1], bound_lct_of(a[0], b[0])),
            BoundEntity(b[0], b[1], bound_lct_of(b[0], a[0])),
            timestamp,
            supersedes=supersedes,
        )  # fmt: skip

    def ledger_view(self) -> dict[str, Any]:
        """The committed form (no keys) that the authority signs and the ledger stores."""
        view: dict[str, Any] = {
            "v": LEDGER_ENTRY_VERSION,
            "kind": "binding",
            "binding_id": self.binding_id,
            "entity_a": self.entity_a.ledger_view(self.binding_id),
            "entity_b": self.entity_b.ledger_view(self.binding_id),
            "timestamp": self.timestamp,
        }
        if self.supersedes is not None:
            view["supersedes"] = self.supersedes
        return view

    def signed_bytes(self) -> bytes:
        return canonical_dumps(self.ledger_view())

    def sign(self, controller_key: PrivateKey) -> BindingRecord:
        sig = controller_key.sign(labels.SIG_BINDING_RECORD, self.signed_bytes())
        return BindingRecord(
            self.binding_id, self.entity_a, self.entity_b, self.timestamp, sig, self.supersedes
        )

    def verify(self, controller_key: PublicKey) -> None:
        controller_key.verify(labels.SIG_BINDING_RECORD, self.signed_bytes(), self.authority)

    def ledger_entry(self) -> bytes:
        """Bytes appended to the ledger: the ledger view plus the authority signature."""
        if not self.authority:
            raise VerificationError(Reason.UNAUTHORIZED, "binding record is not signed")
        return canonical_dumps({**self.ledger_view(), "authority": self.authority})

    def entity(self, device_id: str) -> BoundEntity:
        for e in (self.entity_a, self.entity_b):
            if e.access_data.device_id == device_id:
                return e
        raise VerificationError(Reason.WRONG_PEER, f"{device_id} is not part of binding {self.binding_id}")

    def partner_of(self, device_id: str) -> BoundEntity:
        if self.entity_a.access_data.device_id == device_id:
            return self.entity_b
        if self.entity_b.access_data.device_id == device_id:
            return self.entity_a
        raise VerificationError(Reason.WRONG_PEER, f"{device_id} is not part of binding {self.binding_id}")

    def to_json(self) -> dict[str, Any]:
        """The seed's JSON shape (docs/seed.md §1.3)."""
        out: dict[str, Any] = {
            "binding_id": self.binding_id,
            "entity_a": self.entity_a.to_dict(),
            "entity_b": self.entity_b.to_dict(),
            "timestamp": self.timestamp,
            "authority": b64(self.authority),
        }
        if self.supersedes is not None:
            out["supersedes"] = self.supersedes
        return out

    @classmethod
    def from_json(cls, value: Any) -> BindingRecord:
        m = expect_map(
            value,
            "binding record",
            required={"binding_id", "entity_a", "entity_b", "timestamp", "authority"},
            optional={"supersedes"},
        )
        binding_id = uuid_text(m["binding_id"], "binding_id")
        parse_timestamp(m["timestamp"])
        supersedes = uuid_text(m["supersedes"], "supersedes") if m.get("supersedes") is not None else None
        return cls(
            binding_id,
            BoundEntity.from_dict(m["entity_a"], "entity_a"),
            BoundEntity.from_dict(m["entity_b"], "entity_b"),
            m["timestamp"],
            b64_bytes(m["authority"], "authority", size=SIGNATURE_BYTES),
            supersedes,
        )


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    """Unbinding: the controller revokes a binding; recorded in the ledger."""

    binding_id: str
    reason: str
    timestamp: str
    authority: bytes = field(default=b"", repr=False)

    def view(self) -> dict[str, Any]:
        return {
            "v": LEDGER_ENTRY_VERSION,
            "kind": "revocation",
            "binding_id": self.binding_id,
            "reason": self.reason,
            "timestamp": self.timestamp,
        }

    def sign(self, controller_key: PrivateKey) -> RevocationRecord:
        sig = controller_key.sign(labels.SIG_BINDING_RECORD, canonical_dumps(self.view()))
        return RevocationRecord(self.binding_id, self.reason, self.timestamp, sig)

    def verify(self, controller_key: PublicKey) -> None:
        controller_key.verify(labels.SIG_BINDING_RECORD, canonical_dumps(self.view()), self.authority)

    def ledger_entry(self) -> bytes:
        return canonical_dumps({**self.view(), "authority": self.authority})


@dataclass(frozen=True, slots=True)
class BindingAuthorization:
    """The default external binding authority: a grant signed by a configured authority key.

    It names the two devices that may be bound, each with its device identity key (an
    IDevID-like key provisioned at manufacture, which signs the device's binding responses
    so that a man in the middle cannot substitute a semi-public key), and a validity
    window. The controller refuses to start a binding without one that verifies (docs/seed.md §1.1).
    """

    device_a: str
    identity_a: PublicKey
    device_b: str
    identity_b: PublicKey
    not_before: int  # unix seconds
    not_after: int
    nonce: bytes
    signature: bytes = field(default=b"", repr=False)

    def _content(self) -> bytes:
        return canonical_dumps(
            {
                "device_a": self.device_a,
                "identity_a": self.identity_a.to_bytes(),
                "device_b": self.device_b,
                "identity_b": self.identity_b.to_bytes(),
                "not_before": self.not_before,
                "not_after": self.not_after,
                "nonce": self.nonce,
            }
        )

    def sign(self, authority_key: PrivateKey) -> BindingAuthorization:
        sig = authority_key.sign(labels.SIG_BINDING_AUTHORIZATION, self._content())
        return BindingAuthorization(
            self.device_a,
            self.identity_a,
            self.device_b,
            self.identity_b,
            self.not_before,
            self.not_after,
            self.nonce,
            sig,
        )

    def check(self, authority_key: PublicKey, device_a: str, device_b: str, now: float) -> None:
        """Raise unless this grant is signed by ``authority_key``, names both devices, and is current."""
        authority_key.verify(labels.SIG_BINDING_AUTHORIZATION, self._content(), self.signature)
        if {self.device_a, self.device_b} != {device_a, device_b} or device_a == device_b:
            raise VerificationError(Reason.UNAUTHORIZED, "authorization names other devices")
        if now < self.not_before:
            raise VerificationError(Reason.NOT_YET_VALID, "authorization is not valid yet")
        if now > self.not_after:
            raise VerificationError(Reason.EXPIRED, "authorization has expired")

    def identity_of(self, device_id: str) -> PublicKey:
        if device_id == self.device_a:
            return self.identity_a
        if device_id == self.device_b:
            return self.identity_b
        raise VerificationError(Reason.WRONG_PEER, f"{device_id} is not named in the authorization")

    def to_json(self) -> dict[str, Any]:
        return {
            "device_a": self.device_a,
            "identity_a": b64(self.identity_a.to_bytes()),
            "device_b": self.device_b,
            "identity_b": b64(self.identity_b.to_bytes()),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "nonce": b64(self.nonce),
            "signature": b64(self.signature),
        }

    @classmethod
    def from_json(cls, value: Any) -> BindingAuthorization:
        m = expect_map(
            value,
            "authorization",
            required={
                "device_a",
                "identity_a",
                "device_b",
                "identity_b",
                "not_before",
                "not_after",
                "nonce",
                "signature",
            },
        )
        return cls(
            text(m["device_a"], "authorization.device_a", max_len=64),
            PublicKey.from_bytes(b64_bytes(m["identity_a"], "authorization.identity_a", max_len=65)),
            text(m["device_b"], "authorization.device_b", max_len=64),
            PublicKey.from_bytes(b64_bytes(m["identity_b"], "authorization.identity_b", max_len=65)),
            integer(m["not_before"], "authorization.not_before", lo=0, hi=2**40),
            integer(m["not_after"], "authorization.not_after", lo=0, hi=2**40),
            b64_bytes(m["nonce"], "authorization.nonce", max_len=64),
            b64_bytes(m["signature"], "authorization.signature", size=SIGNATURE_BYTES),
        )
