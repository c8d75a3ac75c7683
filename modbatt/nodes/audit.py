"""The audit trail: a JSON-lines event log beside the ledger, and a decoder for ledger entries.

Two stores, by weight (seed: "comprehensive logging at appropriate levels"):

* the **ledger** holds what must be provable later — bindings, revocations, pairing issue /
  completion / revocation, witnessed events (L2), pairing validations (L6), binding validations
  (L7) and escalations — each signed by the controller;
* the **event log** (:class:`EventLog`) holds every transaction and validation event, including
  rejections and routine levels (L1, L3-L5) that would flood the ledger: one JSON object per line,
  ``{"seq", "t", "kind", "level", "outcome", ...}``, appended and flushed line by line so a crash
  loses at most the line being written. Secrets never go in: messages are logged by size and
  hash, keys by key id.

:func:`describe_entry` decodes any ledger entry for ``modbatt audit``: kind, ids, timestamp and
whether its controller signature verifies.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..crypto import labels
from ..crypto.suite import PublicKey
from ..encoding import canonical_dumps, strict_json_loads, strict_loads
from ..errors import EncodingError, ModbattError, VerificationError
from ..model.statements import KINDS, read_statement

__all__ = ["EVENT_LOG_NAME", "EventLog", "describe_entry", "json_safe", "read_events"]

#: The event log's file name next to a deployment's ledger.
EVENT_LOG_NAME = "events.jsonl"
_IDS = ("binding_id", "pairing_id", "subject", "entity", "witness", "initiator", "sender", "lct_id")


def json_safe(value: Any) -> Any:
    """Bytes → base64, tuples → lists, recursively (for JSON lines and CLI output)."""
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, (str, int)):  # enums
        return value.value
    return value


class EventLog:
    """Append-only JSON-lines event log (``path=None``: kept in memory only)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._seq = 0
        if self.path is not None and self.path.exists():
            self._seq = sum(1 for _ in read_events(self.path))

    def log(self, kind: str, *, outcome: str = "ok", level: int | None = None, t: float, **fields: Any) -> dict:
        """Record one event; returns it (JSON-safe)."""
        with self._lock:
            entry = json_safe({"seq": self._seq, "t": round(t, 3), "kind": kind, "level": level, "outcome": outcome})
            entry.update(json_safe(fields))
            self._seq += 1
            self.events.append(entry)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry, sort_keys=True) + "\n")
                    fh.flush()
        return entry


#: An event is a few hundred bytes of flat JSON; a line longer or deeper than this is not one.
MAX_EVENT_LINE_BYTES = 64 * 1024
MAX_EVENT_DEPTH = 8


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, counted up to ``limit + 1`` only."""
    if limit < 0 or not isinstance(value, (dict, list)):
        return 0
    children = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in children), default=0)


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of a log file; a line that is not one JSON object becomes ``{"kind": "unreadable", "line": n}``.

    The file is evidence and may be hostile: a line that is not UTF-8, not strict JSON
    (:func:`~modbatt.encoding.strict_json_loads`), longer than :data:`MAX_EVENT_LINE_BYTES` or
    nested deeper than :data:`MAX_EVENT_DEPTH` is read as unreadable, and never held whole.
    """
    with Path(path).open("rb") as fh:
        n = 0
        while raw := fh.readline(MAX_EVENT_LINE_BYTES + 1):
            n += 1
            value = None
            if len(raw) > MAX_EVENT_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := fh.readline(MAX_EVENT_LINE_BYTES + 1)) and not rest.endswith(b"\n"):
                    pass  # the rest of an over-long line, read and dropped piece by piece
            elif not raw.strip():
                continue
            else:
                with contextlib.suppress(EncodingError):
                    value = strict_json_loads(raw)
            ok = isinstance(value, dict) and _depth(value, MAX_EVENT_DEPTH) <= MAX_EVENT_DEPTH
            yield value if ok else {"kind": "unreadable", "line": n}  # type: ignore[misc]


def describe_entry(index: int, entry: bytes, controller_key: PublicKey | None) -> dict[str, Any]:
    """One ledger entry for people and tools: ``{index, kind, ids…, timestamp, signature_valid}``.

    ``signature_valid`` is None when no controller key is known, else whether the entry's
    ``authority`` signature verifies under it.
    """
    out: dict[str, Any] = {"index": index, "bytes": len(entry)}
    try:
        value = strict_loads(entry)
    except ModbattError:
        return {**out, "kind": "undecodable", "signature_valid": False}
    if not isinstance(value, dict):
        return {**out, "kind": "unknown", "signature_valid": False}
    kind = value.get("kind")
    out["kind"] = kind if isinstance(kind, str) else "unknown"
    out["timestamp"] = value.get("timestamp") if _scalar(value.get("timestamp")) else None
    for name in (*_IDS, "level", "event", "reason", "use"):
        if _scalar(value.get(name)):
            out[name] = value[name]
    if isinstance(value.get("escalation_request"), dict):
        out["escalation_request"] = _plain(value["escalation_request"], MAX_EVENT_DEPTH)
    out["signature_valid"] = _signature_valid(value, entry, controller_key) if controller_key else None
    return out


def _scalar(value: Any) -> bool:
    """A string, or an integer of at most 64 bits: what an entry's ids and timestamps are."""
    if isinstance(value, bool):
        return False
    return isinstance(value, str) or (isinstance(value, int) and -(2**64) < value < 2**64)


def _plain(value: Any, depth: int) -> Any:
    """A decoded entry value as plain JSON, whatever the file put there.

    CBOR decodes to more than JSON holds (tagged values such as dates and sets, integers past
    Python's digit limit, NaN, nesting without end); those become a short description, so the
    report prints and serialises.
    """
    if value is None or isinstance(value, (str, bool)) or _scalar(value):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else repr(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if depth > 0 and isinstance(value, dict):
        return {(k if isinstance(k, str) else f"<{type(k).__name__}>"): _plain(v, depth - 1) for k, v in value.items()}
    if depth > 0 and isinstance(value, (list, tuple)):
        return [_plain(v, depth - 1) for v in value]
    return f"<{type(value).__name__}>"


def _signature_valid(value: dict[str, Any], entry: bytes, key: PublicKey) -> bool:
    try:
        if value.get("kind") in KINDS:
            read_statement(entry, key)
        elif value.get("kind") in ("binding", "revocation"):
            view = {k: v for k, v in value.items() if k != "authority"}
            key.verify(labels.SIG_BINDING_RECORD, canonical_dumps(view), value.get("authority", b""))
        else:
            return False
    except (VerificationError, ModbattError, TypeError):
        return False
    return True
