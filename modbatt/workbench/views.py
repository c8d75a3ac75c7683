"""JSON views of protocol objects for people: byte strings as hex, nested maps kept."""

from __future__ import annotations

from typing import Any

__all__ = ["json_view"]


def json_view(value: Any, *, max_bytes: int = 64) -> Any:
    """``value`` with bytes as hex (long ones shortened with their length), ready for ``json.dumps``."""
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        return data.hex() if len(data) <= max_bytes else f"{data[:16].hex()}…({len(data)} bytes)"
    if isinstance(value, dict):
        return {str(k): json_view(v, max_bytes=max_bytes) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_view(v, max_bytes=max_bytes) for v in value]
    return value
