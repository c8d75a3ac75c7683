"""A maker of hostile capture files: a recorded log handed to an analyst attacks the tools that read it.

Found by the file fuzzer (tests/test_fuzz_files.py; docs/threat-model.md, "File fuzzing"). A
python-can SQLite log (``.db``) is a database whose schema SQLite obeys when a row is read, and
python-can's reader trusted it (``SELECT *`` on a read-write connection); its text readers log
every line they skip, quoted as it is. The attacker writes files, holds no key, and wins if
``modbatt monitor --log`` or ``modbatt decode`` allocates without bound, reads without end, writes
beside the evidence, or puts the file's escape sequences on the analyst's terminal. What stops it
(:mod:`modbatt.transport.recording`): ``.db`` logs opened read-only with ``trusted_schema`` off and
values capped, ``messages`` required to be a plain table with python-can's columns, every value
type-checked; the readers' complaints counted, never printed as worded.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import tempfile
from pathlib import Path

import can

from ..transport.recording import write_log
from .ledger_tamper import AUDIT_MEMORY_BUDGET_MIB, audit_under_memory_limit
from .outcome import Outcome
from .registry import scenario

__all__ = ["hostile_captures"]

FAMILY = "insider"
_ESCAPES = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def _frames() -> list[can.Message]:
    return [
        can.Message(timestamp=1_800_000_000.0 + i / 100, arbitration_id=0x8100701, is_extended_id=True,
                    data=bytes([i]) * 8)
        for i in range(8)
    ]  # fmt: skip


def _database(path: Path, *statements: str) -> Path:
    write_log(path, _frames())
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()
    return path


def hostile_captures(folder: Path) -> dict[str, Path]:
    """Four capture files, each attacking the reading tools a different way (each in its own folder)."""
    made = {}
    for name in ("generated_column", "endless_view", "wal_mode", "escape_sequences"):
        (folder / name).mkdir()
    made["generated_column"] = _database(
        folder / "generated_column" / "capture.db",
        "ALTER TABLE messages ADD COLUMN g BLOB GENERATED ALWAYS AS (zeroblob(900000000)) VIRTUAL",
    )
    made["endless_view"] = _database(
        folder / "endless_view" / "capture.db",
        "ALTER TABLE messages RENAME TO m2",
        "CREATE VIEW messages AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT 1800000000.0 + x, 1, 1, 0, 0, 8, zeroblob(8) FROM c",
    )
    made["wal_mode"] = _database(folder / "wal_mode" / "capture.db", "PRAGMA journal_mode=WAL")
    trc = folder / "escape_sequences" / "capture.trc"
    write_log(trc, _frames())
    with trc.open("a", encoding="utf-8") as fh:
        fh.write("\x1b]0;ledger OK\x07\x1b[2J\x1b[32mverified\x1b[0m\n")  # one column: the reader logs it
    made["escape_sequences"] = trc
    return made


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@scenario("hostile_capture_file", family=FAMILY, expected=("blocked", "schema_mismatch"))
def hostile_capture_file(seed: int | None = None) -> Outcome:
    """Hand the analyst capture files that attack the tools: zeroblob column, endless view, WAL, escapes."""
    del seed  # the files are fixed
    with tempfile.TemporaryDirectory(prefix="modbatt-hostile-capture-") as tmp:
        files = hostile_captures(Path(tmp))
        before = {name: _snapshot(path.parent) for name, path in files.items()}
        commands = [[*cmd, str(path)] for path in files.values() for cmd in (["monitor", "--log"], ["decode"])]
        try:
            results = audit_under_memory_limit(commands)
        except Exception as exc:  # the child hung (an endless read) or died: the attack worked
            return Outcome("succeeded", "tool_attacked", {"commands": len(commands)}, f"{type(exc).__name__}: {exc}")
        after = {name: _snapshot(path.parent) for name, path in files.items()}
    by_file = {name: [r for r in results if str(path) in r["argv"]] for name, path in files.items()}

    def one_line(r: dict[str, object]) -> bool:
        lines = [x for x in str(r["stderr"]).splitlines() if x.strip() and not x.startswith("# ")]
        return r["exit"] in (1, 2) and len(lines) == 1

    counters = {
        "commands": len(results),
        "crashes": sum(r["crash"] is not None for r in results),
        "one_line_errors": sum(one_line(r) for r in results),
        "schema_refusals": sum(
            "python-can's columns" in r["stderr"] or "no table 'messages'" in r["stderr"]
            for r in by_file["generated_column"] + by_file["endless_view"]
        ),
        "escapes_on_terminal": sum(bool(_ESCAPES.search(r["stderr"])) for r in results),
        "reader_problems_counted": sum("the log reader reported" in r["stderr"] for r in by_file["escape_sequences"]),
        "wal_mode_read": sum(r["exit"] == 0 for r in by_file["wal_mode"]),
        "files_changed_or_created_beside": sum(before[name] != after[name] for name in files),
        "memory_budget_mib": AUDIT_MEMORY_BUDGET_MIB,
    }
    ok = (
        counters["crashes"] == 0
        and counters["schema_refusals"] == 4
        and counters["one_line_errors"] == 4
        and counters["escapes_on_terminal"] == 0
        and counters["wal_mode_read"] == 2
        and counters["files_changed_or_created_beside"] == 0
    )
    if not ok:
        return Outcome("succeeded", "tool_attacked", counters, json.dumps(results)[:500])
    detail = "read-only, python-can's columns exactly, the reader's complaints counted"
    return Outcome("blocked", "schema_mismatch", counters, detail)
