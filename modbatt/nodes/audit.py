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
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..crypto import labels
from ..crypto.suite import PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import ModbattError, VerificationError
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


def read_events(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The events of a log file; an unreadable line becomes ``{"kind": "unreadable", "line": n}``."""
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                value = None
            yield value if isinstance(value, dict) else {"kind": "unreadable", "line": n}


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
    out["timestamp"] = value.get("timestamp")
    for name in (*_IDS, "level", "event", "reason", "use"):
        if isinstance(value.get(name), (str, int)) and not isinstance(value.get(name), bool):
            out[name] = value[name]
    if isinstance(value.get("escalation_request"), dict):
        out["escalation_request"] = json_safe(value["escalation_request"])
    out["signature_valid"] = _signature_valid(value, entry, controller_key) if controller_key else None
    return out


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
