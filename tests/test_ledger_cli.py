"""``modbatt ledger verify | proof | export`` through ``modbatt.cli.main``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modbatt.attacks.ledger_tamper import forge_history, truncate_ledger
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
    (trigger,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'entries_no_update'").fetchone()
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET entry = CAST('forged' AS BLOB) WHERE idx = 3")
    assert main(["ledger", "verify", str(ledger_file)]) == 1  # the schema is checked first
    assert "schema differs: missing trigger 'entries_no_update'" in _one_line(capsys.readouterr().err)
    conn.execute(trigger)  # the attacker puts the trigger back: the entry still gives it away
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


# --- anti-rollback: a head kept by an auditor ---------------------------------------------


def test_export_sth_out_then_verify_sth(
    ledger_file: Path, key: PrivateKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = tmp_path / "kept.json"
    assert main(["ledger", "export", str(ledger_file), "--sth-out", str(kept)]) == 0
    assert _one_line(capsys.readouterr().out) == f"kept the signed tree head of 20 entries in {kept}"
    head = SignedTreeHead.from_dict(json.loads(kept.read_text()))
    head.verify(key.public_key)
    assert head.tree_size == 20
    assert main(["ledger", "verify", str(ledger_file), "--sth", str(kept)]) == 0
    assert _one_line(capsys.readouterr().out).endswith("extends the kept head of 20 entries")
    # The controller goes on: the log still extends the kept head, and the kept head advances.
    with Ledger(ledger_file, signer=key) as led:
        led.append_many([b"later %d" % i for i in range(5)])
        led.signed_tree_head()
    assert main(["ledger", "verify", str(ledger_file), "--sth", str(kept)]) == 0
    capsys.readouterr()
    assert main(["ledger", "export", str(ledger_file), "--json", "--sth-out", str(kept)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["sth"]["tree_size"] == 26 and "26 entries" in out.err
    assert SignedTreeHead.from_dict(json.loads(kept.read_text())).tree_size == 26


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda path: truncate_ledger(path, keep=12), "stale"),
        (lambda path: forge_history(path, 12, [b"forged %d" % i for i in range(10)]), "bad_proof"),
    ],
    ids=["rollback", "fork"],
)
def test_verify_sth_catches_rollback_and_fork(
    ledger_file: Path, tmp_path: Path, tamper: Any, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = tmp_path / "kept.json"
    assert main(["ledger", "export", str(ledger_file), "--sth-out", str(kept)]) == 0
    kept_bytes = kept.read_bytes()
    tamper(ledger_file)
    capsys.readouterr()
    assert main(["ledger", "verify", str(ledger_file)]) == 0  # on its own, the log looks intact
    capsys.readouterr()
    assert main(["ledger", "verify", str(ledger_file), "--sth", str(kept)]) == 1
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("modbatt ledger: error:") and reason in err and "kept tree head" in err
    # Exporting over the kept head refuses: the evidence of the rollback is not overwritten.
    assert main(["ledger", "export", str(ledger_file), "--sth-out", str(kept)]) == 1
    assert reason in _one_line(capsys.readouterr().err) and kept.read_bytes() == kept_bytes


def test_verify_sth_wrong_files(ledger_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_heads = {
        "text.json": b"hello",
        "list.json": b"[1, 2, 3]",
        "fields.json": json.dumps({"tree_size": 1}).encode(),
        "huge.json": b" " * 100_000,
        "binary": os.urandom(300),
    }
    for name, data in not_heads.items():
        (tmp_path / name).write_bytes(data)
        assert main(["ledger", "verify", str(ledger_file), "--sth", str(tmp_path / name)]) == 2
        assert "is not a signed tree head" in _one_line(capsys.readouterr().err)
    assert main(["ledger", "verify", str(ledger_file), "--sth", str(ledger_file)]) == 2  # the ledger itself
    capsys.readouterr()
    assert main(["ledger", "verify", str(ledger_file), "--sth", str(tmp_path / "missing.json")]) == 2
    assert "cannot read tree head" in _one_line(capsys.readouterr().err)
    assert main(["ledger", "export", str(ledger_file)]) == 2  # nothing asked for
    assert "--sth-out" in _one_line(capsys.readouterr().err)
    # A well-formed head from another controller is a failed check, not a usage error.
    impostor = PrivateKey.generate(SeededRandom("ledger-cli-tests/impostor"))
    other = tmp_path / "other.db"
    with Ledger(other, signer=impostor) as led:
        led.append_many(ENTRIES[:5])
        led.signed_tree_head()
    foreign = tmp_path / "foreign.json"
    assert main(["ledger", "export", str(other), "--sth-out", str(foreign)]) == 0
    capsys.readouterr()
    assert main(["ledger", "verify", str(ledger_file), "--sth", str(foreign)]) == 1
    assert "is not this ledger's" in _one_line(capsys.readouterr().err)
