"""Strict field readers for records parsed from untrusted JSON or CBOR maps.

Every reader raises :class:`~modbatt.errors.VerificationError` with a classified reason
(MALFORMED, UNKNOWN_FIELD, OVERSIZED), never KeyError or TypeError.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from typing import Any

from ..errors import Reason, VerificationError

MAX_TEXT = 512


def malformed(detail: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED, detail)


def expect_map(value: Any, what: str, *, required: set[str], optional: set[str] = frozenset()) -> Mapping:
    """``value`` must be a map holding every required key and no unknown key."""
    if not isinstance(value, Mapping):
        raise malformed(f"{what} must be an object")
    keys = set(value)
    unknown = keys - required - optional
    if unknown:
        raise VerificationError(
            Reason.UNKNOWN_FIELD, f"{what} has unknown field(s): {sorted(map(str, unknown))}"
        )
    missing = required - keys
    if missing:
        raise malformed(f"{what} is missing field(s): {sorted(missing)}")
    return value


def text(value: Any, what: str, *, max_len: int = MAX_TEXT, min_len: int = 1) -> str:
    if not isinstance(value, str):
        raise malformed(f"{what} must be a string")
    if len(value) > max_len:
        raise VerificationError(Reason.OVERSIZED, f"{what} is longer than {max_len} characters")
    if len(value) < min_len:
        raise malformed(f"{what} must not be empty")
    if any(ord(c) < 0x20 for c in value):
        raise malformed(f"{what} contains control characters")
    return value


def integer(value: Any, what: str, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise malformed(f"{what} must be an integer")
    if not lo <= value <= hi:
        raise malformed(f"{what} must be between {lo} and {hi}")
    return value


def raw_bytes(value: Any, what: str, *, size: int | None = None, max_len: int = 4096) -> bytes:
    """Bytes from a CBOR byte string."""
    if not isinstance(value, (bytes, bytearray)):
        raise malformed(f"{what} must be a byte string")
    value = bytes(value)
    if size is not None and len(value) != size:
        raise malformed(f"{what} must be {size} bytes")
    if len(value) > max_len:
        raise VerificationError(Reason.OVERSIZED, f"{what} exceeds {max_len} bytes")
    return value


def b64_bytes(value: Any, what: str, *, size: int | None = None, max_len: int = 4096) -> bytes:
    """Bytes from a standard base64 JSON string (strict alphabet and padding)."""
    s = text(value, what, max_len=(max_len * 4) // 3 + 4)
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise malformed(f"{what} is not valid base64") from None
    return raw_bytes(data, what, size=size, max_len=max_len)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def uuid_text(value: Any, what: str) -> str:
    s = text(value, what, max_len=36)
    try:
        parsed = uuid.UUID(s)
    except ValueError:
        raise malformed(f"{what} is not a UUID") from None
    if str(parsed) != s:
        raise malformed(f"{what} must be a lower-case hyphenated UUID")
    return s
