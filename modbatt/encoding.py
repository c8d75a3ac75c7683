"""Deterministic CBOR (RFC 8949 §4.2.1 core deterministic encoding) for everything signed or sent.

Decoding untrusted bytes is strict: a size cap first, then the value must re-encode to
exactly the same bytes, so that one logical message has one encoding and signatures
cannot be replayed over a re-encoded variant.
"""

from __future__ import annotations

from typing import Any

import cbor2

from .errors import EncodingError, Reason

__all__ = ["MAX_MESSAGE_BYTES", "canonical_dumps", "strict_loads"]

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
