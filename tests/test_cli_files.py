"""Files of the wrong kind and folders that cannot be written: one line, exit 2, before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modbatt.cli import main
from modbatt.cli.files import expect_file_kind, writable_directory
from modbatt.errors import ConfigError
from modbatt.workbench.terminal import escape


@pytest.mark.parametrize("content", [b"# a README\n", b"\x00" * 64, b'{"kind": "binding"}'])
def test_ledger_verify_and_cert_inspect_on_the_wrong_kind_of_file_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    wrong = tmp_path / "wrong.sqlite"
    wrong.write_bytes(content)
    assert main(["ledger", "verify", str(wrong)]) == 2
    assert main(["cert", "inspect", str(wrong)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "is not a SQLite database" in err[0], err


def test_the_kind_check_reads_only_the_magic(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    assert expect_file_kind(db, "SQLite database") == db
    with pytest.raises(ConfigError, match="not a regular file"):
        expect_file_kind(tmp_path, "SQLite database")
    with pytest.raises(ConfigError, match="no such file"):
        expect_file_kind(tmp_path / "absent", "SQLite database")


def test_writable_directory(tmp_path: Path) -> None:
    assert writable_directory(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="exists and is not a directory"):
        writable_directory(tmp_path / "file", "export directory")
    with pytest.raises(ConfigError, match="cannot be created"):
        writable_directory(tmp_path / "file" / "sub", "export directory")


def test_escape_shows_controls_and_keeps_text() -> None:
    assert escape("ok °C µs") == "ok °C µs"
    assert escape("a\x1b]0;title\x07b") == "a\\x1b]0;title\\x07b"
    assert escape("x\r\ny\x9b1m\x7f") == "x\\x0d\\x0ay\\x9b1m\\x7f"
    assert escape("abc\u202edcba") == "abc\\u202edcba"
    assert escape(escape("\x1b")) == escape("\x1b")


def test_audit_escapes_what_the_event_log_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--state", str(tmp_path), "--in-process"]) == 0
    with (tmp_path / "events.jsonl").open("a") as log:
        log.write(json.dumps({"seq": 99, "t": 0, "kind": "forged\x1b]0;pwned\x07", "outcome": "ok\x1b[2J"}) + "\n")
    capsys.readouterr()
    main(["audit", str(tmp_path)])
    out = capsys.readouterr().out
    assert "forged\\x1b]0;pwned\\x07" in out and "\x1b" not in out and "\x07" not in out
