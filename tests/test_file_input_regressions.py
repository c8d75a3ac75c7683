"""Regressions for the defects the file fuzzer found (tests/test_fuzz_files.py; docs/threat-model.md,
"File fuzzing"). Each test is named for its defect and runs the command line as a user does."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import can
import pytest

from modbatt.attacks.ledger_tamper import audit_under_memory_limit
from modbatt.cli import main
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import canonical_dumps
from modbatt.ledger import Ledger
from modbatt.transport.recording import read_log, write_log


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("# ")]
    assert len(lines) == 1, err
    assert "\x1b" not in err and "Traceback" not in err, err
    return lines[0]


def _frames(n: int = 4) -> list[can.Message]:
    return [
        can.Message(timestamp=1_800_000_000.0 + i, arbitration_id=0x100 + i, is_extended_id=True, data=bytes([i] * 8))
        for i in range(n)
    ]


# --------------------------------------------------------------------------- sweep and CPU-profile files


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\x80\x81 not text", "not valid YAML"),
        (b"[" * 100_000, "not valid YAML"),
        (b"a: &a [1, 2]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nexperiment: *b\n", "aliases"),
        (b"experiment: [1, 2]\ngrid: {tier: [none]}\n", "'experiment' names an experiment"),
        (b"experiment: frame_overhead\ngrid: {tier: [none]}\nfixed: {1: 2, a: 3}\n", "has no key"),
    ],
    ids=["not-utf8", "nested-too-deeply", "alias-bomb", "experiment-not-a-string", "mixed-key-types"],
)
def test_regression_sweep_files_that_are_not_sweep_files_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, says: str
) -> None:
    """Bad UTF-8 raised UnicodeDecodeError; deep nesting RecursionError; ``str()`` of an alias
    bomb would build a value of billions of elements; mixed key types made ``sorted`` raise."""
    path = tmp_path / "sweep.yaml"
    path.write_bytes(content)
    assert main(["sweep", str(path), "--output", str(tmp_path / "out.csv")]) == 2
    assert says in _one_error_line(capsys.readouterr().err)


def test_regression_cpu_profile_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    from modbatt.errors import ConfigError
    from modbatt.sim.cpu import load_cpu_profile

    path = tmp_path / "cpu.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_cpu_profile(path)


# --------------------------------------------------------------------------- the audit trail


def _ledger(path: Path, *entries: bytes) -> Path:
    with Ledger(path) as led:
        led.append_many(list(entries))
    return path


def test_regression_event_log_lines_that_are_not_events_read_as_unreadable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad UTF-8 ended ``audit`` with a UnicodeDecodeError traceback; a field of the wrong type
    (``seq`` a dict) made the text formatting raise TypeError."""
    ledger = _ledger(tmp_path / "ledger.sqlite", canonical_dumps({"kind": "note"}))
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"seq": 0, "kind": "ok"}\n'
        b"\x80\x81\n"
        + b"[" * 5000 + b"\n"
        + json.dumps({"seq": {"a": 1}, "kind": "x", "t": [1]}).encode() + b"\n"
        + b'{"seq": 1, "t": NaN}\n'
        + b'{"a": ' + b"9" * 5000 + b"}\n"
        + b'{"long": "' + b"x" * 70_000 + b'"}\n'
    )  # fmt: skip
    assert main(["audit", str(ledger), "--events", str(events)]) == 0  # no key: signatures unchecked
    out = capsys.readouterr().out
    assert out.count("unreadable") == 5, out
    assert main(["audit", str(ledger), "--events", str(events), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [e["kind"] for e in report["events"]] == ["ok", "unreadable", "unreadable", "x"] + ["unreadable"] * 3


def test_regression_ledger_entries_of_any_shape_print_and_serialise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry's timestamp or escalation request could be bytes, a CBOR date or set, a NaN: the
    text view raised TypeError on ``format`` and ``--json`` on ``json.dump``."""
    import datetime

    import cbor2

    odd = [
        canonical_dumps({"kind": "binding", "timestamp": b"\x1b[2J", "binding_id": 2**70}),
        cbor2.dumps({"kind": "escalation", "timestamp": {"a": 1},
                     "escalation_request": {"when": datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
                                            "ids": {1, 2}, "x": float("nan"), 7: b"\x00"}}, canonical=True),
    ]  # fmt: skip
    ledger = _ledger(tmp_path / "ledger.sqlite", *odd)
    key = _der(tmp_path, PrivateKey.generate(SeededRandom("regressions/controller")).public_key.to_spki_der())
    assert main(["audit", str(ledger), "--public-key", str(key)]) == 1
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out and "bad_signature: 2 of 2 entries" in _one_error_line(captured.err)
    assert main(["audit", str(ledger), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    request = report["entries"][1]["escalation_request"]
    assert request == {"when": "<datetime>", "ids": "<set>", "x": "nan", "<int>": "AA=="}
    assert report["entries"][0]["timestamp"] is None and "binding_id" not in report["entries"][0]


# --------------------------------------------------------------------------- failed checks say why


def test_regression_failed_checks_say_why_in_one_stderr_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cert inspect`` without a key, ``audit`` with unsigned entries and ``vectors check`` on a
    changed vector exited 1 with nothing (or the reason on stdout) on stderr."""
    from modbatt.workbench.demo import run_demo

    demo = run_demo(tmp_path / "state", transport="in-process")
    cert = tmp_path / "cert"
    cert.write_bytes(demo.pairing_certificate)
    assert main(["cert", "inspect", str(cert)]) == 1
    assert "not verified: not checked" in _one_error_line(capsys.readouterr().err)
    ledger = _ledger(tmp_path / "ledger.sqlite", canonical_dumps({"kind": "binding"}))
    assert main(["audit", str(ledger), "--public-key", str(_der(tmp_path, demo.controller_public_key))]) == 1
    assert "bad_signature: 1 of 1 entries do not verify" in _one_error_line(capsys.readouterr().err)


def _der(tmp_path: Path, key: bytes) -> Path:
    path = tmp_path / "controller.der"
    path.write_bytes(key)
    return path


@pytest.mark.parametrize(
    ("edit", "code", "says"),
    [
        (lambda raw: b"\x80" + raw, 2, "is not a vector file: not valid JSON"),
        (lambda raw: b"[" * 50_000, 2, "not valid JSON"),
        (lambda raw: json.dumps({"testGroups": [{"tests": [{"tcId": 1}]}]}).encode(), 2, "tcId 1 is not a usable case"),
        (lambda raw: json.dumps({"testGroups": 3}).encode(), 2, "no list of testGroups"),
    ],
    ids=["not-utf8", "nested", "case-without-fields", "no-groups"],
)
def test_regression_vector_files_that_are_not_vectors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, code: int, says: str
) -> None:
    """A vector file that was not JSON, or a case without its fields, ended in a traceback
    (JSONDecodeError, KeyError, TypeError)."""
    committed = Path(__file__).resolve().parents[1] / "vectors"
    for p in committed.iterdir():
        (tmp_path / p.name).write_bytes(p.read_bytes())
    target = tmp_path / "can_ids.json"
    target.write_bytes(edit(target.read_bytes()))  # type: ignore[operator]
    assert main(["vectors", "check", str(tmp_path)]) == code
    assert says in _one_error_line(capsys.readouterr().err)


# --------------------------------------------------------------------------- capture files


def test_regression_trc_reader_warnings_are_counted_not_printed_raw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """python-can's TRC reader logs each line it cannot parse, quoted as it is: a capture line
    holding ESC sequences reached the terminal through the logging module."""
    log = tmp_path / "capture.trc"
    write_log(log, _frames())
    with log.open("a") as fh:
        fh.write("\x1b]0;owned\x07\x1b[2J\n")  # too few columns: the reader logs it and goes on
    assert main(["monitor", "--log", str(log)]) == 0
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err + captured.out
    assert "the log reader reported 1 problems" in captured.err


def test_regression_library_warnings_reach_the_terminal_escaped(tmp_path: Path) -> None:
    """Outside pytest nothing configures logging, so Python's last-resort handler printed library
    warnings (cantools, asammdf, python-can) unescaped; the command line now escapes them."""
    script = (
        "import logging, sys\n"
        "from modbatt.cli import _escape_library_warnings\n"
        "_escape_library_warnings()\n"
        "logging.getLogger('cantools.database').warning('name %s', '\\x1b]0;owned\\x07')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stderr == "name \\x1b]0;owned\\x07\n"


def _db_log(path: Path, *sql: str) -> Path:
    write_log(path, _frames())
    conn = sqlite3.connect(path)
    for statement in sql:
        conn.execute(statement)
    conn.commit()
    conn.close()
    for extra in (f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        assert not os.path.exists(extra)
    return path


def test_regression_sqlite_log_with_generated_zeroblob_column_is_refused(tmp_path: Path) -> None:
    """python-can's reader runs ``SELECT *``: a generated ``zeroblob(900000000)`` column made
    ``monitor --log x.db`` allocate 900 MB per row (MemoryError under the fuzzer's budget)."""
    log = _db_log(
        tmp_path / "capture.db",
        "ALTER TABLE messages ADD COLUMN g BLOB GENERATED ALWAYS AS (zeroblob(900000000)) VIRTUAL",
    )
    (result,) = audit_under_memory_limit([["monitor", "--log", str(log)]])
    assert result["crash"] is None and result["exit"] == 2, result
    assert "does not have python-can's columns" in _one_error_line(result["stderr"])


def test_regression_sqlite_log_view_without_end_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A view named ``messages`` over a recursive CTE gave python-can's reader frames without end:
    the monitor never finished."""
    log = _db_log(
        tmp_path / "capture.db",
        "ALTER TABLE messages RENAME TO m2",
        "CREATE VIEW messages AS WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
        "SELECT 1800000000.0 + x, 1, 1, 0, 0, 8, zeroblob(8) FROM c",
    )
    assert main(["monitor", "--log", str(log)]) == 2
    assert "no table 'messages'" in _one_error_line(capsys.readouterr().err)


def test_regression_sqlite_log_is_read_without_writing_beside_it(tmp_path: Path) -> None:
    """python-can opened the capture read-write: a WAL-mode database got ``-wal``/``-shm`` files."""
    log = _db_log(tmp_path / "capture.db", "PRAGMA journal_mode=WAL")
    before = sorted(os.listdir(tmp_path)), log.read_bytes()
    assert len(list(read_log(log))) == 4
    assert main(["decode", str(log)]) == 0
    assert (sorted(os.listdir(tmp_path)), log.read_bytes()) == before


@pytest.mark.parametrize(
    ("statement", "field"),
    [
        ("UPDATE messages SET ts = 'soon' WHERE rowid = 2", "timestamp"),
        ("UPDATE messages SET arbitration_id = 1 << 40 WHERE rowid = 2", "arbitration_id"),
        ("UPDATE messages SET data = zeroblob(100) WHERE rowid = 2", "data"),
        ("UPDATE messages SET dlc = -1 WHERE rowid = 2", "dlc"),
    ],
)
def test_regression_sqlite_log_values_are_type_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], statement: str, field: str
) -> None:
    log = _db_log(tmp_path / "capture.db", statement)
    assert main(["monitor", "--log", str(log)]) == 2
    assert f"row 2 has an unusable {field}" in _one_error_line(capsys.readouterr().err)


def test_regression_mf4_reader_errors_and_cleanup_tracebacks_stay_off_the_terminal(tmp_path: Path) -> None:
    """A damaged .mf4: asammdf printed its own ``asammdf - ERROR`` lines, and at exit its
    half-built reader's ``__del__`` printed ``Exception ignored in … Traceback``."""
    pytest.importorskip("asammdf")
    log = tmp_path / "capture.mf4"
    write_log(log, _frames())
    data = bytearray(log.read_bytes())
    data[0x40:0x42] = b"\0\0"  # where the header block ("##HD") must start
    log.write_bytes(bytes(data))
    out = subprocess.run(
        [sys.executable, "-m", "modbatt.cli", "monitor", "--log", str(log)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "is not a valid MDF file" in _one_error_line(out.stderr)
    assert "asammdf - ERROR" not in out.stderr and "Exception ignored" not in out.stderr


@pytest.fixture(scope="module")
def entity_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from helpers_capture import record_secured_capture

    state = tmp_path_factory.mktemp("regression-state")
    recorded = record_secured_capture(state)
    log = state / "capture.log"
    write_log(log, recorded.frames)
    return recorded.keystore, log


def _damaged_copy(store: Path, tmp_path: Path, edit: object) -> Path:
    import shutil

    from modbatt.crypto.keystore import KeyStore

    copy = tmp_path / "pack.keystore"
    shutil.copy(store, copy)
    shutil.copy(store.with_suffix(".kek"), copy.with_suffix(".kek"))
    with KeyStore.open(copy, key_file=copy.with_suffix(".kek")) as opened:
        edit(opened)  # type: ignore[operator]
    return copy


@pytest.mark.parametrize(
    ("edit", "record"),
    [
        (lambda s: s.put_record("entity-config", {"controller_key": b"\x04"}), "entity-config"),
        (lambda s: s.put_record("seen-requests", {"zz": "soon"}), "seen-requests"),
        (lambda s: [s.put_record(n, {**s.record(n), "sessions": [{**s.record(n)["sessions"][0], "pairing_secret": 7}]})
                    for n in s.record_names() if n.startswith("pairing/")], "pairing/"),
        (lambda s: [s.put_record(n, {**s.record(n), "policy": {"x": 1}})
                    for n in s.record_names() if n.startswith("pairing/")], "pairing/"),
        (lambda s: [s.put_record(n, {"binding_id": 5}) for n in s.record_names()
                    if n.startswith("binding/") and not n.endswith("/key")], "binding/"),
    ],
    ids=["config-without-access-data", "seen-requests", "pairing-secret-not-bytes", "pairing-policy", "binding"],
)  # fmt: skip
def test_regression_key_store_with_damaged_records_is_refused_at_open(
    entity_store: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, record: str
) -> None:
    """A key store that authenticates but holds records of the wrong shape ended ``monitor
    --keystore`` and ``decode`` in a KeyError or TypeError traceback (EntityNode trusted them)."""
    store, log = entity_store
    damaged = _damaged_copy(store, tmp_path, edit)
    for argv in (
        ["decode", str(log), "--keystore", str(damaged)],
        ["monitor", "--log", str(log), "--keystore", str(damaged)],
    ):
        assert main(argv) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"the key store's record '{record}" in line and "is damaged" in line, line


def test_regression_key_store_header_cannot_ask_for_hours_of_kdf_work(tmp_path: Path) -> None:
    """The header's KDF parameters are read before anything authenticates them; 700 MiB x 1000
    Argon2id passes (within the old per-field bounds) made ``open`` run for most of an hour."""
    import struct

    from modbatt.crypto.keystore import HEADER_BYTES, KdfParams, KeyStore
    from modbatt.errors import KeyStoreError

    path = tmp_path / "store"
    KeyStore.create(path, passphrase="pass phrase", kdf=KdfParams.cheap(), reproducible=True).close()
    data = bytearray(path.read_bytes())
    data[11:23] = struct.pack(">III", 1000, 700 * 1024, 1)  # Argon2id t, m (KiB), lanes
    data[10] = 2  # the Argon2id KDF id
    path.write_bytes(bytes(data))
    assert len(data) > HEADER_BYTES
    with pytest.raises(KeyStoreError, match="KDF parameters out of bounds"):
        KeyStore.open(path, passphrase="pass phrase")
    with pytest.raises(KeyStoreError, match="exceeds 4 GiB"):
        KdfParams.argon2id(iterations=1000, memory_kib=700 * 1024, lanes=1)
    assert KdfParams.argon2id(iterations=1, memory_kib=2 * 1024 * 1024, lanes=4).memory_kib  # RFC 9106 option 1


# --------------------------------------------------------------------------- notebooks and parameters


@pytest.mark.parametrize("value", ["9" * 5000, "[" * 5000], ids=["5000-digit-integer", "nested"])
def test_regression_run_parameter_values_json_cannot_hold_are_checked_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """``-p seed=<5 000 digits>`` raised ValueError (Python's integer-conversion limit) from the
    JSON parser, a traceback before anything ran."""
    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    assert main(["run", "--notebooks", str(notebooks), "--only", "01", "-p", f"seed={value}",
                 "--output", str(tmp_path)]) == 2  # fmt: skip
    assert "seed takes" in _one_error_line(capsys.readouterr().err)


def test_regression_damaged_notebook_is_one_line(tmp_path: Path) -> None:
    """nbformat logged its validation report (many lines, through traitlets) before the error."""
    source = Path(__file__).resolve().parents[1] / "notebooks" / "01-binding.ipynb"
    nb = json.loads(source.read_text())
    del nb["nbformat"]  # then nbformat reads it as a version 3 notebook, which it is not
    (tmp_path / "01-binding.ipynb").write_text(json.dumps(nb))
    out = subprocess.run(
        [sys.executable, "-m", "modbatt.cli", "run", "--notebooks", str(tmp_path), "--list-params"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "cannot read the parameters of 01-binding.ipynb" in _one_error_line(out.stderr)


def test_regression_sweep_that_fails_mid_run_ends_in_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress lines on stderr looked like more error lines when a later file's point failed."""
    good = tmp_path / "good.yaml"
    good.write_text("experiment: frame_overhead\ngrid: {tier: [none], bus: [classic], payload_bytes: [8, 16]}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: frame_overhead\ngrid: {tier: [none], bus: [classic], payload_bytes: [-1]}\n")
    assert main(["sweep", str(good), str(bad), "--output", str(tmp_path / "out"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "2/2 points" in err and "-1 bytes do not fit" in _one_error_line(err)
