"""``modbatt audit``: the audit trail — every ledger entry decoded, plus the event log.

::

    modbatt audit PATH [--json] [--events FILE] [--public-key DERFILE]

``PATH`` is a ledger file or a deployment state directory (``ledger.sqlite`` and, if present,
``events.jsonl`` inside). Each ledger entry is shown with its kind, ids, timestamp and whether its
controller signature verifies (under the pinned key, else the key stored in the ledger). Exit 0
when every signature verifies, 1 when one does not, 2 for a usage error (no such file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..nodes.audit import EVENT_LOG_NAME, describe_entry, read_events
from ..workbench.terminal import escape
from . import EXIT_FAILED, EXIT_OK
from .ledger_cmd import _load_public_key, open_read_only

__all__ = ["audit_report", "register"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "audit",
        help="show the audit trail: ledger entries decoded and checked, plus the event log",
        description="Decode every ledger entry (kind, ids, timestamp, controller signature valid?) and "
        "print the JSON-lines event log beside it.",
    )
    p.add_argument("path", metavar="PATH", help="ledger file or deployment state directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--events", metavar="FILE", help=f"event log (default: {EVENT_LOG_NAME} beside the ledger)")
    p.add_argument("--public-key", metavar="DERFILE", help="pin the controller key (DER or PEM SPKI)")
    p.set_defaults(handler=_run)


def _locate(path: str, events: str | None) -> tuple[Path, Path | None]:
    p = Path(path)
    ledger = p / "ledger.sqlite" if p.is_dir() else p
    if not ledger.exists():
        raise ConfigError(f"no such ledger file: {ledger}")
    log = Path(events) if events else ledger.parent / EVENT_LOG_NAME
    if events and not log.exists():
        raise ConfigError(f"no such event log: {log}")
    return ledger, log if log.exists() else None


def audit_report(ledger_path: Path, events_path: Path | None, public_key_file: str | None = None) -> dict[str, Any]:
    """The audit trail as one JSON-ready object."""
    pinned = _load_public_key(public_key_file)
    with open_read_only(ledger_path, pinned) as ledger:  # evidence: never written, schema checked first
        key = pinned or ledger.public_key
        entries = [describe_entry(i, e, key) for i, e in enumerate(ledger.entries())]
        sth = ledger.latest_tree_head()
    return {
        "ledger": str(ledger_path),
        "controller_key_id": key.key_id().hex() if key else None,
        "tree_head": sth.to_dict() if sth else None,
        "entries": entries,
        "all_signatures_valid": all(e["signature_valid"] is not False for e in entries),
        "events_file": str(events_path) if events_path else None,
        "events": list(read_events(events_path)) if events_path else [],
    }


def _line(entry: dict[str, Any]) -> str:
    ids = " ".join(f"{k}={entry[k]}" for k in ("binding_id", "pairing_id", "subject", "entity") if k in entry)
    extra = " ".join(f"{k}={entry[k]}" for k in ("level", "event", "reason") if k in entry)
    mark = {True: "sig ok", False: "SIG INVALID", None: "sig unchecked"}[entry["signature_valid"]]
    stamp = entry.get("timestamp") or "-"
    return f"#{entry['index']:<4} {entry['kind']:<18} {stamp:<25} {mark:<13} {ids} {extra}".rstrip()


def _run(args: argparse.Namespace) -> int:
    ledger_path, events_path = _locate(args.path, args.events)
    report = audit_report(ledger_path, events_path, args.public_key)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        # Entries and events hold strings from the ledger file and from peers: escaped for the terminal.
        print(
            escape(
                f"ledger {report['ledger']}: {len(report['entries'])} entries, "
                f"controller key {report['controller_key_id']}"
            )
        )
        for entry in report["entries"]:
            print(escape("  " + _line(entry)))
        if events_path is not None:
            print(escape(f"event log {events_path}: {len(report['events'])} events"))
            for ev in report["events"]:
                rest = {k: v for k, v in ev.items() if k not in ("seq", "t", "kind", "level", "outcome")}
                level = f"L{ev['level']}" if ev.get("level") is not None else "  "
                # An event log is evidence too: any JSON value may sit in any field.
                print(escape(f"  {ev.get('seq', '?')!s:>4} {ev.get('t', '-')} {ev.get('kind', '?')} {level} "
                             f"{ev.get('outcome')} " + json.dumps(rest, sort_keys=True)[:160]))  # fmt: skip
    if report["all_signatures_valid"]:
        return EXIT_OK
    bad = sum(e["signature_valid"] is False for e in report["entries"])
    print(f"modbatt audit: error: bad_signature: {bad} of {len(report['entries'])} entries do not verify "
          "under the controller key", file=sys.stderr)  # fmt: skip
    return EXIT_FAILED
