"""``modbatt ledger verify | proof | export`` through ``modbatt.cli.main``."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from modbatt.cli import main
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.ledger import Ledger, SignedTreeHead, merkle, verify_inclusion

ENTRIES = [b"validation event %d" % i for i in range(21)]


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.generate(SeededRandom("ledger-cli-tests/controller"))


@pytest.fixture
def ledger_file(tmp_path: Path, key: PrivateKey) -> Path:
    path = tmp_path / "log.db"
    with Ledger(path, signer=key) as led:
        led.append_many(ENTRIES[:20])
        led.signed_tree_head()
        led.append(ENTRIES[20])  # one entry beyond the latest signed head
    return path


def _pem_and_der(tmp_path: Path, key: PrivateKey) -> tuple[Path, Path]:
    der = tmp_path / "controller.der"
    der.write_bytes(key.public_key.to_spki_der())
    pem = tmp_path / "controller.pem"
    body = base64.encodebytes(key.public_key.to_spki_der()).decode()
    pem.write_text(f"-----BEGIN PUBLIC KEY-----\n{body}-----END PUBLIC KEY-----\n")
    return der, pem


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_verify_ok(ledger_file: Path, key: PrivateKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    der, pem = _pem_and_der(tmp_path, key)
    for extra in ([], ["--public-key", str(der)], ["--public-key", str(pem)]):
        assert main(["ledger", "verify", str(ledger_file), *extra]) == 0
        out = capsys.readouterr()
        assert _one_line(out.out).startswith("OK: 21 entries") and out.err == ""


def test_verify_failures(ledger_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    impostor = PrivateKey.generate(SeededRandom("ledger-cli-tests/impostor"))
    der, _ = _pem_and_der(tmp_path, impostor)
    assert main(["ledger", "verify", str(ledger_file), "--public-key", str(der)]) == 1
    assert "pinned" in _one_line(capsys.readouterr().err)

    conn = sqlite3.connect(ledger_file, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET entry = CAST('forged' AS BLOB) WHERE idx = 3")
    conn.close()
    assert main(["ledger", "verify", str(ledger_file)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("modbatt ledger: error:") and "entry 3" in err

    # A file of another kind is a user mistake (exit 2), not a ledger that failed its check.
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 50)
    assert main(["ledger", "verify", str(junk)]) == 2
    assert "is not a SQLite database" in _one_line(capsys.readouterr().err)


def test_missing_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.db"
    for argv in (["verify", str(missing)], ["proof", str(missing), "0"], ["export", str(missing), "--json"]):
        assert main(["ledger", *argv]) == 2
        out = capsys.readouterr()
        assert "no such ledger file" in _one_line(out.err) and "Traceback" not in out.err
    assert not missing.exists()  # auditing never creates a file
    assert main(["ledger", "verify", str(tmp_path / "log.db"), "--public-key", str(missing)]) == 2
    assert "cannot read public key" in _one_line(capsys.readouterr().err)


def test_proof_json_verifies_offline(ledger_file: Path, key: PrivateKey, capsys: pytest.CaptureFixture[str]) -> None:
    for index in (0, 7, 19):
        assert main(["ledger", "proof", str(ledger_file), str(index), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["index"] == index and out["tree_size"] == 20  # the latest signed head
        entry = base64.b64decode(out["entry"])
        assert entry == ENTRIES[index]
        proof = [base64.b64decode(h) for h in out["audit_path"]]
        sth = SignedTreeHead.from_dict(out["sth"])
        verify_inclusion(entry, index, proof, sth, key.public_key)
        assert base64.b64decode(out["leaf_hash"]) == hashlib.sha256(b"\x00" + entry).digest()


def test_proof_other_sizes_and_text(ledger_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Entry 20 is beyond the signed head: it needs an explicit tree size (and is unsigned).
    assert main(["ledger", "proof", str(ledger_file), "20"]) == 2
    assert "not covered" in _one_line(capsys.readouterr().err)
    assert main(["ledger", "proof", str(ledger_file), "20", "--tree-size", "21", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["sth"] is None
    merkle.verify_inclusion(
        base64.b64decode(out["leaf_hash"]),
        20,
        21,
        [base64.b64decode(h) for h in out["audit_path"]],
        merkle.mth(ENTRIES),
    )
    assert main(["ledger", "proof", str(ledger_file), "5", "--tree-size", "8"]) == 0
    text = capsys.readouterr().out
    assert "entry 5 of 8" in text and "audit path (3 hashes, 96 bytes)" in text
    assert main(["ledger", "proof", str(ledger_file), "3", "--tree-size", "99"]) == 2
    assert "outside the log" in _one_line(capsys.readouterr().err)


def test_export_json(ledger_file: Path, key: PrivateKey, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ledger", "export", str(ledger_file), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"entries", "sth"}
    assert set(data["sth"]) == {"tree_size", "root_hash", "timestamp", "signature", "public_key"}
    entries = [base64.b64decode(e) for e in data["entries"]]
    assert entries == ENTRIES[:20] == ENTRIES[: data["sth"]["tree_size"]]
    assert merkle.mth(entries) == base64.b64decode(data["sth"]["root_hash"])
    SignedTreeHead.from_dict(data["sth"]).verify(key.public_key)


def test_export_unsigned_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "unsigned.db"
    with Ledger(path) as led:
        led.append(b"x")
    assert main(["ledger", "export", str(path), "--json"]) == 2
    assert "no tree head" in _one_line(capsys.readouterr().err)
