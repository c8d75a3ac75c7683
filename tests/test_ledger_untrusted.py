"""Ledger files as untrusted input: exact schema, read-only audits, bounded and typed reads."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from modbatt.attacks.ledger_tamper import (
    AUDIT_MEMORY_BUDGET_MIB,
    audit_under_memory_limit,
    hostile_ledger,
    type_confused_ledger,
)
from modbatt.cli import main
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import LedgerError
from modbatt.ledger import Ledger

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the memory budget reads /proc")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _commands(path: Path) -> list[list[str]]:
    return [
        ["ledger", "verify", str(path)],
        ["ledger", "proof", str(path), "1"],
        ["ledger", "export", str(path), "--json"],
        ["audit", str(path)],
    ]


def test_generated_zeroblob_columns_are_refused_before_any_row_is_read(tmp_path: Path) -> None:
    """The 2.7 GB file: every auditor command ends in one line, inside a 256 MiB budget."""
    path = tmp_path / "hostile.sqlite"
    hostile_ledger(path)
    assert path.stat().st_size <= 48 * 1024
    digest, listing = _digest(path), sorted(os.listdir(tmp_path))
    for result in audit_under_memory_limit(_commands(path)):
        assert result["crash"] is None, result  # MemoryError (or anything else) escaping main()
        assert result["exit"] in (1, 2), result
        (line,) = result["stderr"].strip().splitlines()
        assert "schema differs: table 'entries' is defined differently" in line, line
    assert _digest(path) == digest and sorted(os.listdir(tmp_path)) == listing  # no -wal, no -shm


def test_the_memory_budget_is_real(tmp_path: Path) -> None:
    """The control: plain SQLite reading one row of that file under the same budget runs out of memory."""
    path = tmp_path / "hostile.sqlite"
    hostile_ledger(path)
    script = textwrap.dedent(
        f"""
        import resource, sqlite3
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
        budget = vm + {AUDIT_MEMORY_BUDGET_MIB} * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
        try:
            sqlite3.connect({str(path)!r}).execute("SELECT entry, leaf_hash FROM entries").fetchone()
        except (MemoryError, sqlite3.Error) as exc:
            print(type(exc).__name__, exc)
        else:
            print("read")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.startswith(("MemoryError", "OperationalError")), out.stdout  # not "read"


def test_huge_integers_and_oversize_entries_are_bounded(tmp_path: Path) -> None:
    """Exact schema, hostile values: an integer hash (``bytes(2**40)`` would be 1 TiB), a 200 KB entry."""
    path = tmp_path / "confused.sqlite"
    type_confused_ledger(path)
    digest = _digest(path)
    results = audit_under_memory_limit(_commands(path))
    for result in results:
        assert result["crash"] is None and result["exit"] in (1, 2), result
        assert len(result["stderr"].strip().splitlines()) == 1, result
    verify, proof, export, audit = (r["stderr"] for r in results)
    assert "entry 1 does not match its stored leaf hash" in verify
    assert "is not a 32-byte blob" in proof
    assert "exceeds 65536 bytes" in export and "exceeds 65536 bytes" in audit
    assert _digest(path) == digest
    with Ledger(path, read_only=True) as led, pytest.raises(LedgerError) as exc:
        led.verify()
    assert any("entry 4 is 200000 bytes, over the limit" in p for p in exc.value.problems)  # type: ignore[attr-defined]


@pytest.fixture
def genuine(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, signer=PrivateKey.generate(SeededRandom("untrusted-tests/controller"))) as led:
        led.append_many([b"entry %d" % i for i in range(9)])
        led.signed_tree_head()
    return path


def test_audits_never_write_the_evidence_file(genuine: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not Path(f"{genuine}-wal").exists()  # closed cleanly: an auditor's copy
    digest, mtime = _digest(genuine), genuine.stat().st_mtime_ns
    listing = sorted(os.listdir(genuine.parent))
    for argv in _commands(genuine):
        code = main(argv)
        err = capsys.readouterr().err
        # audit exits 1 here only because these test entries carry no controller signatures
        if argv[0] == "audit":
            assert code == 1 and err.strip() == (
                "modbatt audit: error: bad_signature: 9 of 9 entries do not verify under the controller key"
            ), err
        else:
            assert code == 0 and "error" not in err, err
    assert _digest(genuine) == digest and genuine.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(genuine.parent)) == listing


def test_read_only_sees_a_live_writer(genuine: Path) -> None:
    with Ledger(genuine) as writer:
        writer.append(b"not yet checkpointed")
        assert Path(f"{genuine}-wal").exists()
        with Ledger(genuine, read_only=True) as reader:
            assert reader.size == 10 and reader.entry(9) == b"not yet checkpointed"


def test_read_only_refuses_every_write(genuine: Path) -> None:
    key = PrivateKey.generate(SeededRandom("untrusted-tests/controller"))
    with pytest.raises(LedgerError, match="read-only"):
        Ledger(genuine, read_only=True, signer=key)
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger(genuine.parent / "missing.sqlite", read_only=True)
    assert not (genuine.parent / "missing.sqlite").exists()
    with Ledger(genuine, read_only=True) as led:
        with pytest.raises(LedgerError, match="read-only"):
            led.append(b"x")
        assert led.size == 9


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("CREATE VIEW v AS SELECT zeroblob(100)", "unexpected view 'v'"),
        ("CREATE INDEX i ON entries(leaf_hash)", "unexpected index 'i'"),
        ("CREATE TRIGGER \"t\x1b]0;owned\x07\" AFTER INSERT ON meta BEGIN SELECT 1; END", r"'t\x1b]0;owned\x07'"),
        ("ALTER TABLE meta ADD COLUMN extra BLOB", "table 'meta' is defined differently"),
        ("DROP TRIGGER nodes_no_delete", "missing trigger 'nodes_no_delete'"),
    ],
)
def test_any_schema_difference_is_refused_by_name(genuine: Path, sql: str, message: str) -> None:
    conn = sqlite3.connect(genuine, isolation_level=None)
    conn.execute(sql)
    conn.close()
    for read_only in (True, False):
        with pytest.raises(LedgerError, match="schema differs") as exc:
            Ledger(genuine, read_only=read_only)
        assert message in str(exc.value) and "\x1b" not in str(exc.value)  # escaped, never raw
