"""Signed controller requests and entity responses of the binding API.

One typed envelope each way. The signature always covers the canonical CBOR of every
field but the signature itself, so the JSON carried over HTTP and the CBOR carried over
CAN or MQTT are two views of one signed message. Bodies have a fixed schema per
operation; unknown fields are rejected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import EncodingError, Reason, VerificationError
from ..model._fields import b64, b64_bytes, expect_map, integer, malformed, raw_bytes, text, uuid_text
from ..model.access import AccessData

__all__ = [
    "MAX_ENVELOPE_CBOR_BYTES",
    "OPERATIONS",
    "REQUEST_ID_BYTES",
    "ControllerRequest",
    "EntityResponse",
]

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


def _op(value: Any) -> str:
    if value not in OPERATIONS:
        raise malformed(f"op must be one of {', '.join(OPERATIONS)}")
    return str(value)


def _body(schema: Mapping[str, _Kind], value: Any, *, json: bool) -> dict[str, Any]:
    m = expect_map(value, "body", required=set(schema))
    return {
        name: (kind.from_json if json else kind.from_cbor)(m[name], f"body.{name}") for name, kind in schema.items()
    }


def _body_out(schema: Mapping[str, _Kind], body: Mapping[str, Any], *, json: bool) -> dict[str, Any]:
    return {name: (kind.to_json if json else kind.to_cbor)(body[name]) for name, kind in schema.items()}


def _cbor_map(data: Any) -> Any:
    """Strictly decode an untrusted CBOR envelope; every failure is a classified VerificationError."""
    try:
        return strict_loads(data, max_bytes=MAX_ENVELOPE_CBOR_BYTES)
    except EncodingError as exc:
        raise VerificationError(exc.reason, str(exc)) from None


@dataclass(frozen=True, slots=True)
class ControllerRequest:
    """A request from the auth controller to one entity, signed with the controller key."""

    op: str
    binding_id: str
    request_id: bytes
    issued_at_ms: int
    target: str
    body: Mapping[str, Any]
    signature: bytes = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        return canonical_dumps(
            {
                "op": self.op,
                "binding_id": self.binding_id,
                "request_id": self.request_id,
                "issued_at": self.issued_at_ms,
                "target": self.target,
                "body": _body_out(_REQUEST_BODIES[self.op], self.body, json=False),
            }
        )

    def sign(self, controller_key: PrivateKey) -> ControllerRequest:
        sig = controller_key.sign(labels.SIG_CONTROLLER_REQUEST, self.signed_bytes())
        return ControllerRequest(
            self.op, self.binding_id, self.request_id, self.issued_at_ms, self.target, self.body, sig
        )

    def verify(self, controller_key: PublicKey) -> None:
        try:
            controller_key.verify(labels.SIG_CONTROLLER_REQUEST, self.signed_bytes(), self.signature)
        except VerificationError as exc:
            raise VerificationError(
                Reason.UNAUTHORIZED, f"request is not signed by the controller ({exc.reason})"
            ) from None

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "binding_id": self.binding_id,
            "request_id": b64(self.request_id),
            "issued_at": self.issued_at_ms,
            "target": self.target,
            "body": _body_out(_REQUEST_BODIES[self.op], self.body, json=True),
            "signature": b64(self.signature),
        }

    @classmethod
    def from_json(cls, value: Any, *, expected_op: str | None = None) -> ControllerRequest:
        m = expect_map(
            value,
            "request",
            required={"op", "binding_id", "request_id", "issued_at", "target", "body", "signature"},
        )
        op = _op(m["op"])
        if expected_op is not None and op != expected_op:
            raise malformed(f"this endpoint takes op {expected_op!r}, not {op!r}")
        return cls(
            op,
            uuid_text(m["binding_id"], "binding_id"),
            b64_bytes(m["request_id"], "request_id", size=REQUEST_ID_BYTES),
            integer(m["issued_at"], "issued_at", lo=0, hi=2**53),
            text(m["target"], "target", max_len=64),
            _body(_REQUEST_BODIES[op], m["body"], json=True),
            b64_bytes(m["signature"], "signature", size=SIGNATURE_BYTES),
        )

    def to_cbor(self) -> bytes:
        """The whole envelope, signature included, as canonical CBOR (the CAN/MQTT view).

        Same field names as :meth:`to_json`, with byte strings as CBOR byte strings; without
        ``signature`` it is exactly :meth:`signed_bytes`.
        """
        return canonical_dumps(
            {
                "op": self.op,
                "binding_id": self.binding_id,
                "request_id": self.request_id,
                "issued_at": self.issued_at_ms,
                "target": self.target,
                "body": _body_out(_REQUEST_BODIES[self.op], self.body, json=False),
                "signature": self.signature,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes, *, expected_op: str | None = None) -> ControllerRequest:
        """Parse untrusted CBOR (strict, canonical, size-capped); the signature is not checked here."""
        m = expect_map(
            _cbor_map(data),
            "request",
            required={"op", "binding_id", "request_id", "issued_at", "target", "body", "signature"},
        )
        op = _op(m["op"])
        if expected_op is not None and op != expected_op:
            raise malformed(f"this endpoint takes op {expected_op!r}, not {op!r}")
        return cls(
            op,
            uuid_text(m["binding_id"], "binding_id"),
            raw_bytes(m["request_id"], "request_id", size=REQUEST_ID_BYTES),
            integer(m["issued_at"], "issued_at", lo=0, hi=2**53),
            text(m["target"], "target", max_len=64),
            _body(_REQUEST_BODIES[op], m["body"], json=False),
            raw_bytes(m["signature"], "signature", size=SIGNATURE_BYTES),
        )


@dataclass(frozen=True, slots=True)
class EntityResponse:
    """An entity's answer, signed with its device identity key (defeats key substitution)."""

    op: str
    binding_id: str
    request_id: bytes
    device_id: str
    body: Mapping[str, Any]
    signature: bytes = field(default=b"", repr=False)

    def signed_bytes(self) -> bytes:
        return canonical_dumps(
            {
                "op": self.op,
                "binding_id": self.binding_id,
                "request_id": self.request_id,
                "device_id": self.device_id,
                "body": _body_out(_RESPONSE_BODIES[self.op], self.body, json=False),
            }
        )

    def sign(self, identity_key: PrivateKey) -> EntityResponse:
        sig = identity_key.sign(labels.SIG_ENTITY_RESPONSE, self.signed_bytes())
        return EntityResponse(self.op, self.binding_id, self.request_id, self.device_id, self.body, sig)

    def verify(self, identity_key: PublicKey) -> None:
        identity_key.verify(labels.SIG_ENTITY_RESPONSE, self.signed_bytes(), self.signature)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "binding_id": self.binding_id,
            "request_id": b64(self.request_id),
            "device_id": self.device_id,
            "body": _body_out(_RESPONSE_BODIES[self.op], self.body, json=True),
            "signature": b64(self.signature),
        }

    @classmethod
    def from_json(cls, value: Any) -> EntityResponse:
        m = expect_map(value, "response", required={"op", "binding_id", "request_id", "device_id", "body", "signature"})
        op = _op(m["op"])
        return cls(
            op,
            uuid_text(m["binding_id"], "binding_id"),
            b64_bytes(m["request_id"], "request_id", size=REQUEST_ID_BYTES),
            text(m["device_id"], "device_id", max_len=64),
            _body(_RESPONSE_BODIES[op], m["body"], json=True),
            b64_bytes(m["signature"], "signature", size=SIGNATURE_BYTES),
        )

    def to_cbor(self) -> bytes:
        """The whole envelope, signature included, as canonical CBOR (the CAN/MQTT view)."""
        return canonical_dumps(
            {
                "op": self.op,
                "binding_id": self.binding_id,
                "request_id": self.request_id,
                "device_id": self.device_id,
                "body": _body_out(_RESPONSE_BODIES[self.op], self.body, json=False),
                "signature": self.signature,
            }
        )

    @classmethod
    def from_cbor(cls, data: bytes) -> EntityResponse:
        """Parse untrusted CBOR (strict, canonical, size-capped); the signature is not checked here."""
        m = expect_map(
            _cbor_map(data), "response", required={"op", "binding_id", "request_id", "device_id", "body", "signature"}
        )
        op = _op(m["op"])
        return cls(
            op,
            uuid_text(m["binding_id"], "binding_id"),
            raw_bytes(m["request_id"], "request_id", size=REQUEST_ID_BYTES),
            text(m["device_id"], "device_id", max_len=64),
            _body(_RESPONSE_BODIES[op], m["body"], json=False),
            raw_bytes(m["signature"], "signature", size=SIGNATURE_BYTES),
        )
