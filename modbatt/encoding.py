"""Deterministic CBOR (RFC 8949 §4.2.1 core deterministic encoding) for everything signed or sent.

Decoding untrusted bytes is strict: a size cap first, then the value must re-encode to
exactly the same bytes, so that one logical message has one encoding and signatures
cannot be replayed over a re-encoded variant.
"""

from __future__ import annotations

import json
from typing import Any

import cbor2

from .errors import EncodingError, Reason

__all__ = ["MAX_MESSAGE_BYTES", "canonical_dumps", "strict_json_loads", "strict_loads"]

#: Upper bound for any single CBOR message modbatt accepts (certificates are ~1 KiB).
MAX_MESSAGE_BYTES = 64 * 1024


def canonical_dumps(value: Any) -> bytes:
    """Encode ``value`` deterministically (sorted map keys, shortest integer forms)."""
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, TypeError, ValueError) as exc:
        raise EncodingError(f"value cannot be CBOR-encoded: {type(exc).__name__}") from None


def strict_loads(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Any:
    """Decode CBOR from an untrusted source, rejecting oversize or non-canonical input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise EncodingError("expected bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        err = EncodingError(f"message of {len(data)} bytes exceeds the {max_bytes}-byte limit")
        err.reason = Reason.OVERSIZED
        raise err
    try:
        value = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises a variety of types on garbage
        raise EncodingError(f"not valid CBOR ({type(exc).__name__})") from None
    try:
        again = cbor2.dumps(value, canonical=True)
    except Exception:
        raise EncodingError("CBOR value uses types modbatt does not accept") from None
    if again != data:
        raise EncodingError("CBOR encoding is not canonical (or has trailing bytes)")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json_loads(data: bytes) -> Any:
    """Parse JSON from an untrusted source: valid UTF-8, no duplicate keys, no NaN/Infinity.

    Duplicate keys are refused because two parsers may keep different ones (a classic way to
    make a checker and a consumer see different messages). Every failure is an
    :class:`~modbatt.errors.EncodingError` (``malformed``); the caller caps the size first.
    """
    try:
        return json.loads(
            bytes(data).decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError, RecursionError, TypeError) as exc:
        # ValueError covers json.JSONDecodeError and integers past Python's digit limit.
        raise EncodingError(f"not valid JSON: {str(exc)[:120]}") from None
