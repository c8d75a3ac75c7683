"""Validation-message vectors, levels 1-7 (docs/validation.md): each message a verifier accepted
while a seeded deployment ran the levels, its signed bytes and authenticator, and malformed
variants with the reason decoding gives them."""

from __future__ import annotations

from typing import Any

import cbor2

from ...crypto import labels
from ...crypto.suite import PublicKey
from ...errors import Reason, VerificationError
from ...protocol.validation._common import MESSAGES, Message
from ._format import VectorFile, h
from .keyschedule import label_of
from .trace import Record

__all__ = ["check_case", "generate", "message_classes"]


def message_classes() -> dict[tuple[int, str, str], type[Message]]:
    """Every concrete validation message class by (level, type, authenticator field or "none").

    A message type may come in two variants that differ only in their authenticator, one per
    protocol profile (docs/profiles.md: a signature under seed, a MAC or none under efficient).
    """
    return dict(sorted(MESSAGES.items()))


def _reencode(data: bytes, **changes: Any) -> bytes:
    value = cbor2.loads(data)
    for k, v in changes.items():
        if v is _DROP:
            value.pop(k)
        else:
            value[k] = v
    return cbor2.dumps(value, canonical=True)


_DROP = object()


def generate(rec: Record) -> VectorFile:
    vf = VectorFile(
        "modbatt-validation-messages",
        [
            "Validation messages of levels 1-7 (docs/validation.md): canonical CBOR maps {v, type, level, fields...,",
            "auth}. signedBytes = the map without its authenticator; a signature is ECDSA P-256 over",
            "len(label) || label || signedBytes (signerPublicKey, label given); MAC-authenticated messages give",
            "their MAC only. Recorded from a seeded deployment running the levels. Invalid variants fail decoding.",
        ],
        {
            "WrongLevel": "the level field names another level (checked before anything else)",
            "WrongVersion": "v is not the protocol version",
            "UnknownField": "an extra map key",
            "MissingField": "a required field removed",
            "NonCanonical": "not the deterministic CBOR encoding",
            "ModifiedSignature": "a signature byte changed",
        },
    )
    signers = {(s.label, s.message): s for s in rec.signatures}
    seen: set[tuple[int, str, str]] = set()
    groups: dict[int, Any] = {}
    for cls, data in rec.messages:
        key = (cls.LEVEL, cls.TYPE, cls.AUTH or "none")
        if key in seen:
            continue
        seen.add(key)
        msg = cls.decode(data)
        signed = msg.signed_bytes()
        g = groups.get(cls.LEVEL) or groups.setdefault(cls.LEVEL, vf.group("ValidationMessageTest", level=cls.LEVEL))
        auth = getattr(msg, cls.AUTH) if cls.AUTH else None
        case: dict[str, Any] = {"messageType": cls.TYPE, "message": h(data), "signedBytes": h(signed),
                                "authField": cls.AUTH, "authenticator": None if auth is None else h(auth)}  # fmt: skip
        signer = next((s for (label, m), s in signers.items() if m == signed and s.signature == auth), None)
        if signer is not None:
            case.update(signerPublicKey=h(signer.public_key.to_bytes()), label=h(signer.label))
        g.add(f"{cls.TYPE} ({label_of(signer.label) if signer else 'MAC' if auth else 'no authenticator'})", **case)
        base = {"messageType": cls.TYPE, "authField": cls.AUTH}
        g.add(f"{cls.TYPE} with level {cls.LEVEL % 7 + 1}", "invalid", reason=Reason.WRONG_LEVEL, flags=("WrongLevel",),
              message=h(_reencode(data, level=cls.LEVEL % 7 + 1)), **base)  # fmt: skip
        other = labels.PROTOCOL_VERSION - 1
        g.add(f"{cls.TYPE} with v {other}", "invalid", reason=Reason.MALFORMED, flags=("WrongVersion",),
              message=h(_reencode(data, v=other)), **base)  # fmt: skip
        g.add(f"{cls.TYPE} with an extra field", "invalid", reason=Reason.UNKNOWN_FIELD, flags=("UnknownField",),
              message=h(_reencode(data, zz_extra=0)), **base)  # fmt: skip
        first = next(iter(cls.SPEC))
        g.add(f"{cls.TYPE} without {first}", "invalid", reason=Reason.MALFORMED, flags=("MissingField",),
              message=h(_reencode(data, **{first: _DROP})), **base)  # fmt: skip
        g.add(f"{cls.TYPE} with keys in reverse order", "invalid", reason=Reason.MALFORMED, flags=("NonCanonical",),
              message=h(cbor2.dumps(dict(reversed(list(cbor2.loads(data).items()))))), **base)  # fmt: skip
        if signer is not None:
            sig = bytes([auth[0] ^ 1]) + auth[1:]
            g.add(f"{cls.TYPE} with its signature changed", "invalid", reason=Reason.BAD_SIGNATURE,
                  flags=("ModifiedSignature",), message=h(_reencode(data, **{cls.AUTH: sig})),
                  signerPublicKey=case["signerPublicKey"], label=case["label"], **base)  # fmt: skip
    vf.groups.sort(key=lambda g: g.inputs["level"])
    return vf


def check_case(group: dict[str, Any], case: dict[str, Any]) -> None:
    cls = message_classes()[(group["level"], case["messageType"], case["authField"] or "none")]
    data = bytes.fromhex(case["message"])
    try:
        msg = cls.decode(data)
        if "signerPublicKey" in case:
            PublicKey.from_bytes(bytes.fromhex(case["signerPublicKey"])).verify(
                bytes.fromhex(case["label"]),
                msg.signed_bytes(),
                getattr(msg, cls.AUTH),  # type: ignore[arg-type]
            )
    except VerificationError as exc:
        assert case["result"] == "invalid" and exc.reason.value == case["reason"], (case["tcId"], exc.reason)
        return
    assert case["result"] == "valid", case["tcId"]
    assert msg.encode() == data and msg.signed_bytes().hex() == case["signedBytes"], case["tcId"]
