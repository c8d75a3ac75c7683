"""Deterministic CBOR (RFC 8949 §4.2.1 core deterministic encoding) for everything signed or sent,
and strict parsers for untrusted CBOR, JSON and YAML.

Decoding untrusted bytes is strict: a size cap first, then the value must re-encode to
exactly the same bytes, so that one logical message has one encoding and signatures
cannot be replayed over a re-encoded variant.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import cbor2

from .errors import EncodingError, Reason

__all__ = ["MAX_MESSAGE_BYTES", "MAX_TEXT_FILE_BYTES", "canonical_dumps", "strict_json_loads", "strict_loads",
           "strict_yaml_loads"]  # fmt: skip

#: Upper bound for any single CBOR message modbatt accepts (certificates are ~1 KiB).
MAX_MESSAGE_BYTES = 64 * 1024
#: Upper bound for a settings file a person writes (sweeps, CPU profiles: a few KiB).
MAX_TEXT_FILE_BYTES = 1024 * 1024


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


def strict_yaml_loads(data: bytes, *, max_bytes: int = MAX_TEXT_FILE_BYTES) -> Any:
    """Parse YAML from an untrusted file: PyYAML's safe loader, size-capped, without aliases.

    The safe loader builds only plain values (YAML 1.1 core types, never Python objects). An
    alias (``*name``) reuses a node, so a few hundred bytes of nested aliases describe a value
    of billions of elements (the "billion laughs" expansion) that any code turning it into text
    or walking it would build; settings files have no use for them, so they are refused. Every
    failure (size, encoding, syntax, an alias, nesting past Python's recursion limit) is an
    :class:`~modbatt.errors.EncodingError` (``malformed``).
    """
    import yaml

    if len(data) > max_bytes:
        raise EncodingError(f"larger than {max_bytes} bytes")
    try:
        return yaml.load(bytes(data), Loader=_no_alias_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()
        raise EncodingError(f"not valid YAML: {first[0] if first else type(exc).__name__}") from None
    except RecursionError:
        raise EncodingError("not valid YAML: nested too deeply") from None


@functools.cache
def _no_alias_loader() -> type:
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, "aliases (*name) are not accepted in this file", event.start_mark
                )
            return super().compose_node(parent, index)

    return NoAliasLoader
