"""Signed controller requests and entity responses of the binding API.

One typed envelope each way. The signature always covers the canonical CBOR of every
field but the signature itself, so the JSON carried over HTTP and the CBOR carried over
CAN or MQTT are two views of one signed message. Bodies have a fixed schema per
operation; unknown fields are rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Self

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import EncodingError, Reason, VerificationError
from ..model._fields import b64, b64_bytes, expect_map, integer, malformed, raw_bytes, text, uuid_text
from ..model.access import AccessData

__all__ = [
    "CLOCK_SKEW_S",
    "MAX_ENVELOPE_CBOR_BYTES",
    "OPERATIONS",
    "REQUEST_ID_BYTES",
    "ControllerRequest",
    "EntityResponse",
]

#: Accepted clock difference between two parties (spec addendum: ±5 min): binding requests and
#: every timestamped validation message.
CLOCK_SKEW_S = 300
REQUEST_ID_BYTES = 16
OPERATIONS = ("generate-keys", "distribute-key", "revoke")
#: Largest CBOR envelope accepted from the wire (a distribute-key request is about 1.1 KiB).
MAX_ENVELOPE_CBOR_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class _Kind:
    """How one body field is converted between its typed, CBOR and JSON forms."""

    to_cbor: Callable[[Any], Any]
    from_cbor: Callable[[Any, str], Any]
    to_json: Callable[[Any], Any]
    from_json: Callable[[Any, str], Any]


def _bytes_kind(size: int | None = None, max_len: int = 4096) -> _Kind:
    return _Kind(
        to_cbor=bytes,
        from_cbor=lambda v, w: raw_bytes(v, w, size=size, max_len=max_len),
        to_json=b64,
        from_json=lambda v, w: b64_bytes(v, w, size=size, max_len=max_len),
    )


def _text_kind(max_len: int) -> _Kind:
    def read(v: Any, w: str) -> str:
        return text(v, w, max_len=max_len)

    return _Kind(str, read, str, read)


def _bool_read(v: Any, w: str) -> bool:
    if not isinstance(v, bool):
        raise malformed(f"{w} must be true or false")
    return v


_ACCESS = _Kind(
    to_cbor=lambda a: a.to_dict(),
    from_cbor=lambda v, w: AccessData.from_dict(v, w),
    to_json=lambda a: a.to_dict(),
    from_json=lambda v, w: AccessData.from_dict(v, w),
)
_BOOL = _Kind(bool, _bool_read, bool, _bool_read)

_REQUEST_BODIES: Mapping[str, Mapping[str, _Kind]] = {
    "generate-keys": {"partner_access_data": _ACCESS},
    "distribute-key": {
        "partner_access_data": _ACCESS,
        "sealed_partner_key": _bytes_kind(max_len=128),
        "record": _bytes_kind(max_len=8192),
    },
    "revoke": {"reason": _text_kind(64)},
}
_RESPONSE_BODIES: Mapping[str, Mapping[str, _Kind]] = {
    "generate-keys": {
        "semi_public_key": _bytes_kind(size=33),
        "proof_of_possession": _bytes_kind(size=SIGNATURE_BYTES),
    },
    "distribute-key": {
        "partner_key_commitment": _bytes_kind(size=32),
        "binding_signature": _bytes_kind(size=SIGNATURE_BYTES),
    },
    "revoke": {"revoked": _BOOL},
}


def _op_read(value: Any, what: str) -> str:
    if value not in OPERATIONS:
        raise malformed(f"{what} must be one of {', '.join(OPERATIONS)}")
    return str(value)


def _uuid_read(value: Any, what: str) -> str:
    return uuid_text(value, what)


def _int53_read(value: Any, what: str) -> int:
    return integer(value, what, lo=0, hi=2**53)


_OP = _Kind(str, _op_read, str, _op_read)
_UUID = _Kind(str, _uuid_read, str, _uuid_read)
_INT53 = _Kind(int, _int53_read, int, _int53_read)
_REQUEST_ID = _bytes_kind(size=REQUEST_ID_BYTES)
_SIGNATURE = _bytes_kind(size=SIGNATURE_BYTES)

#: (wire name, attribute name, kind) of each envelope's header, in order.
_Header = tuple[tuple[str, str, _Kind], ...]
_REQUEST_HEADER: _Header = (
    ("op", "op", _OP),
    ("binding_id", "binding_id", _UUID),
    ("request_id", "request_id", _REQUEST_ID),
    ("issued_at", "issued_at_ms", _INT53),
    ("target", "target", _text_kind(64)),
)
_RESPONSE_HEADER: _Header = (
    ("op", "op", _OP),
    ("binding_id", "binding_id", _UUID),
    ("request_id", "request_id", _REQUEST_ID),
    ("device_id", "device_id", _text_kind(64)),
)


def _cbor_map(data: Any) -> Any:
    """Strictly decode an untrusted CBOR envelope; every failure is a classified VerificationError."""
    try:
        return strict_loads(data, max_bytes=MAX_ENVELOPE_CBOR_BYTES)
    except EncodingError as exc:
        raise VerificationError(exc.reason, str(exc)) from None


def _fields_out(envelope: Any, header: _Header, bodies: Mapping[str, Mapping[str, _Kind]], *, json: bool) -> dict:
    """Every field but the signature, in the JSON or the CBOR view."""
    out = {wire: (kind.to_json if json else kind.to_cbor)(getattr(envelope, attr)) for wire, attr, kind in header}
    schema = bodies[envelope.op]
    out["body"] = {name: (kind.to_json if json else kind.to_cbor)(envelope.body[name]) for name, kind in schema.items()}
    return out


def _fields_in(
    value: Any,
    what: str,
    header: _Header,
    bodies: Mapping[str, Mapping[str, _Kind]],
    *,
    json: bool,
    expected_op: str | None = None,
) -> dict[str, Any]:
    """Constructor arguments from an untrusted map (strict: no unknown or missing field)."""
    m = expect_map(value, what, required={wire for wire, _, _ in header} | {"body", "signature"})
    args = {attr: (kind.from_json if json else kind.from_cbor)(m[wire], wire) for wire, attr, kind in header}
    if expected_op is not None and args["op"] != expected_op:
        raise malformed(f"this endpoint takes op {expected_op!r}, not {args['op']!r}")
    schema = bodies[args["op"]]
    body = expect_map(m["body"], "body", required=set(schema))
    args["body"] = {
        name: (kind.from_json if json else kind.from_cbor)(body[name], f"body.{name}") for name, kind in schema.items()
    }
    args["signature"] = (_SIGNATURE.from_json if json else _SIGNATURE.from_cbor)(m["signature"], "signature")
    return args


class _Envelope:
    """The shared codec of both envelopes: JSON and CBOR views of one signed field set."""

    __slots__ = ()
    _WHAT: str
    _HEADER: _Header
    _BODIES: Mapping[str, Mapping[str, _Kind]]
    signature: bytes

    def signed_bytes(self) -> bytes:
        """Canonical CBOR of every field but the signature: what the signature covers."""
        return canonical_dumps(_fields_out(self, self._HEADER, self._BODIES, json=False))

    def to_json(self) -> dict[str, Any]:
        return {**_fields_out(self, self._HEADER, self._BODIES, json=True), "signature": b64(self.signature)}

    def to_cbor(self) -> bytes:
        """The whole envelope as canonical CBOR (the CAN/MQTT view); without ``signature`` it is
        exactly :meth:`signed_bytes`."""
        return canonical_dumps(
            {**_fields_out(self, self._HEADER, self._BODIES, json=False), "signature": self.signature}
        )

    @classmethod
    def from_json(cls, value: Any, *, expected_op: str | None = None) -> Self:
        """Parse the untrusted JSON view (``expected_op``: refuse another op); the signature is not checked here."""
        return cls(**_fields_in(value, cls._WHAT, cls._HEADER, cls._BODIES, json=True, expected_op=expected_op))

    @classmethod
    def from_cbor(cls, data: bytes, *, expected_op: str | None = None) -> Self:
        """Parse untrusted CBOR (strict, canonical, size-capped); the signature is not checked here."""
        m = _cbor_map(data)
        return cls(**_fields_in(m, cls._WHAT, cls._HEADER, cls._BODIES, json=False, expected_op=expected_op))


@dataclass(frozen=True, slots=True)
class ControllerRequest(_Envelope):
    """A request from the auth controller to one entity, signed with the controller key."""

    _WHAT: ClassVar[str] = "request"
    _HEADER: ClassVar[_Header] = _REQUEST_HEADER
    _BODIES: ClassVar[Mapping[str, Mapping[str, _Kind]]] = _REQUEST_BODIES

    op: str
    binding_id: str
    request_id: bytes
    issued_at_ms: int
    target: str
    body: Mapping[str, Any]
    signature: bytes = field(default=b"", repr=False)

    def sign(self, controller_key: PrivateKey) -> ControllerRequest:
        return replace(self, signature=controller_key.sign(labels.SIG_CONTROLLER_REQUEST, self.signed_bytes()))

    def verify(self, controller_key: PublicKey) -> None:
        try:
            controller_key.verify(labels.SIG_CONTROLLER_REQUEST, self.signed_bytes(), self.signature)
        except VerificationError as exc:
            raise VerificationError(
                Reason.UNAUTHORIZED, f"request is not signed by the controller ({exc.reason})"
            ) from None



@dataclass(frozen=True, slots=True)
class EntityResponse(_Envelope):
    """An entity's answer, signed with its device identity key (defeats key substitution)."""

    _WHAT: ClassVar[str] = "response"
    _HEADER: ClassVar[_Header] = _RESPONSE_HEADER
    _BODIES: ClassVar[Mapping[str, Mapping[str, _Kind]]] = _RESPONSE_BODIES

    op: str
    binding_id: str
    request_id: bytes
    device_id: str
    body: Mapping[str, Any]
    signature: bytes = field(default=b"", repr=False)

    def sign(self, identity_key: PrivateKey) -> EntityResponse:
        return replace(self, signature=identity_key.sign(labels.SIG_ENTITY_RESPONSE, self.signed_bytes()))

    def verify(self, identity_key: PublicKey) -> None:
        identity_key.verify(labels.SIG_ENTITY_RESPONSE, self.signed_bytes(), self.signature)
