"""Signed controller requests and entity responses of the binding API.

One typed envelope each way. The signature always covers the canonical CBOR of every
field but the signature itself, so the JSON carried over HTTP and the CBOR carried over
CAN or MQTT are two views of one signed message. Bodies have a fixed schema per
operation; unknown fields are rejected. Every field is declared once, in the schema
(docs/architecture.md, Message schema).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Self

from ..crypto import labels
from ..crypto.suite import SIGNATURE_BYTES, PrivateKey, PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import EncodingError, Reason, VerificationError
from ..model._fields import malformed
from ..model.access import ACCESS_DATA
from ..model.schema import (
    Record,
    Schema,
    authenticator,
    bytes_,
    flag,
    one_of,
    record,
    text_,
    uint,
    uuid_,
    variant,
    wire,
)

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


_ACCESS = ACCESS_DATA
_SIGNATURE = bytes_(SIGNATURE_BYTES, encoding="CBOR byte string: ECDSA r‖s")

#: The body of each operation (docs/binding.md): one schema per operation and direction.
_REQUEST_BODIES: Mapping[str, Schema] = {
    "generate-keys": Schema.build("body", partner_access_data=_ACCESS),
    "distribute-key": Schema.build(
        "body", partner_access_data=_ACCESS, sealed_partner_key=bytes_(max_len=128), record=bytes_(max_len=8192)
    ),
    "revoke": Schema.build("body", reason=text_(64)),
}
_RESPONSE_BODIES: Mapping[str, Schema] = {
    "generate-keys": Schema.build(
        "body", semi_public_key=bytes_(size=33), proof_of_possession=bytes_(size=SIGNATURE_BYTES)
    ),
    "distribute-key": Schema.build(
        "body", partner_key_commitment=bytes_(size=32), binding_signature=bytes_(size=SIGNATURE_BYTES)
    ),
    "revoke": Schema.build("body", revoked=flag),
}
_OP = one_of(*OPERATIONS)
_ISSUED_AT = uint(0, 2**53, size="0 … 2^53", encoding="CBOR unsigned integer (ms since the Unix epoch)")


def _cbor_map(data: Any) -> Any:
    """Strictly decode an untrusted CBOR envelope; every failure is a classified VerificationError."""
    try:
        return strict_loads(data, max_bytes=MAX_ENVELOPE_CBOR_BYTES)
    except EncodingError as exc:
        raise VerificationError(exc.reason, str(exc)) from None


class _Envelope(Record):
    """The shared codec of both envelopes: JSON and CBOR views of one signed field set (from the schema)."""

    __slots__ = ()
    signature: bytes

    def signed_bytes(self) -> bytes:
        """Canonical CBOR of every field but the signature: what the signature covers."""
        return canonical_dumps(self.signed_map())

    def to_cbor(self) -> bytes:  # type: ignore[override]
        """The whole envelope as canonical CBOR (the CAN/MQTT view); without ``signature`` it is
        exactly :meth:`signed_bytes`."""
        return canonical_dumps(self.__schema__.write(self))

    @classmethod
    def _read(cls, value: Any, json: bool, expected_op: str | None) -> Self:
        def check_op(op: str) -> None:
            if expected_op is not None and op != expected_op:
                raise malformed(f"this endpoint takes op {expected_op!r}, not {op!r}")

        return cls(**cls.__schema__.read(value, json=json, expect={"op": check_op}))

    @classmethod
    def from_json(cls, value: Any, *, expected_op: str | None = None) -> Self:  # type: ignore[override]
        """Parse the untrusted JSON view (``expected_op``: refuse another op); the signature is not checked here."""
        return cls._read(value, True, expected_op)

    @classmethod
    def from_cbor(cls, data: bytes, *, expected_op: str | None = None) -> Self:  # type: ignore[override]
        """Parse untrusted CBOR (strict, canonical, size-capped); the signature is not checked here."""
        return cls._read(_cbor_map(data), False, expected_op)


@record(what="request")
class ControllerRequest(_Envelope):
    """A request from the auth controller to one entity, signed with the controller key."""

    op: str = wire(_OP)
    binding_id: str = wire(uuid_)
    request_id: bytes = wire(bytes_(size=REQUEST_ID_BYTES))
    issued_at_ms: int = wire(_ISSUED_AT, name="issued_at")
    target: str = wire(text_(64))
    body: Mapping[str, Any] = wire(variant("op", _REQUEST_BODIES))
    signature: bytes = authenticator(kind=_SIGNATURE)

    def sign(self, controller_key: PrivateKey) -> ControllerRequest:
        return replace(self, signature=controller_key.sign(labels.SIG_CONTROLLER_REQUEST, self.signed_bytes()))

    def verify(self, controller_key: PublicKey) -> None:
        try:
            controller_key.verify(labels.SIG_CONTROLLER_REQUEST, self.signed_bytes(), self.signature)
        except VerificationError as exc:
            raise VerificationError(
                Reason.UNAUTHORIZED, f"request is not signed by the controller ({exc.reason})"
            ) from None


@record(what="response")
class EntityResponse(_Envelope):
    """An entity's answer, signed with its device identity key (defeats key substitution)."""

    op: str = wire(_OP)
    binding_id: str = wire(uuid_)
    request_id: bytes = wire(bytes_(size=REQUEST_ID_BYTES))
    device_id: str = wire(text_(64))
    body: Mapping[str, Any] = wire(variant("op", _RESPONSE_BODIES))
    signature: bytes = authenticator(kind=_SIGNATURE)

    def sign(self, identity_key: PrivateKey) -> EntityResponse:
        return replace(self, signature=identity_key.sign(labels.SIG_ENTITY_RESPONSE, self.signed_bytes()))

    def verify(self, identity_key: PublicKey) -> None:
        identity_key.verify(labels.SIG_ENTITY_RESPONSE, self.signed_bytes(), self.signature)
