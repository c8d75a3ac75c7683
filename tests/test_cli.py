"""The command line: demo, cert inspect, entity, bench, and one-line errors for user mistakes."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from modbatt.cli import main


def _demo_json(tmp_path, *extra):
    env = {**os.environ}
    env.pop("MODBATT_REPRODUCIBLE", None)  # the real command, as a user runs it
    out = subprocess.run(
        [sys.executable, "-m", "modbatt.cli", "demo", "--json", "--state", str(tmp_path / "state"), *extra],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_demo_over_http_prints_the_seed_record_ledger_and_pairing(tmp_path):
    result = _demo_json(tmp_path)
    record = result["binding_record"]
    assert set(record) == {"binding_id", "entity_a", "entity_b", "timestamp", "authority"}
    assert record["entity_a"]["access_data"]["endpoint"].startswith("http://127.0.0.1:")
    assert os.path.exists(result["ledger"])
    assert main(["ledger", "verify", result["ledger"]]) == 0
    cert = base64.b64decode(result["pairing_certificate"])
    assert len(cert) == result["pairing"]["certificate_bytes"]
    key_der = base64.b64decode(result["controller_public_key"])
    (tmp_path / "cert").write_bytes(cert)
    (tmp_path / "ctl.der").write_bytes(key_der)
    assert main(["cert", "inspect", str(tmp_path / "cert"), "--controller-key", str(tmp_path / "ctl.der")]) == 0
    tiers = {f["message_class"]: f["tier"] for f in result["frames"]}
    assert tiers == {"charge_command": "pairing", "voltage_telemetry": "exchange", "validation": "binding"}
    assert sorted(result["validation"]) == [str(level) for level in range(1, 8)]
    assert all(v["outcome"] == "ok" for v in result["validation"].values())
    events = [e.get("event") for e in result["escalation"]]
    assert "escalated" in events and "de-escalated" in events and "rejected" in events
    assert main(["audit", result["state"]]) == 0


def test_demo_state_directory_accumulates_an_append_only_ledger(tmp_path):
    first = _demo_json(tmp_path, "--in-process")
    second = _demo_json(tmp_path, "--in-process", "--mode", "blind")
    assert first["ledger"] == second["ledger"]
    assert second["tree_head"]["tree_size"] > first["tree_head"]["tree_size"]
    assert second["pairing"]["controller_mode"] == "blind"


def test_cert_inspect_json_and_tampering(tmp_path, capsys):
    result = _demo_json(tmp_path, "--in-process")
    cert = bytearray(base64.b64decode(result["pairing_certificate"]))
    (tmp_path / "ctl.der").write_bytes(base64.b64decode(result["controller_public_key"]))
    (tmp_path / "cert.b64").write_text(result["pairing_certificate"])
    capsys.readouterr()
    assert (
        main(["cert", "inspect", str(tmp_path / "cert.b64"), "--json", "--controller-key", str(tmp_path / "ctl.der")])
        == 0
    )
    view = json.loads(capsys.readouterr().out)
    assert set(view) == {"metadata", "sections", "verified"} and view["verified"] is True
    assert [s["name"] for s in view["sections"]] == ["entity_a", "entity_b", "handshake_validation"]
    i = cert.index(b"battery-module-01")
    cert[i + 16] = ord("2")  # still well-formed: another device id
    (tmp_path / "bad").write_bytes(bytes(cert))
    assert main(["cert", "inspect", str(tmp_path / "bad"), "--controller-key", str(tmp_path / "ctl.der")]) == 1
    assert "DOES NOT VERIFY" in capsys.readouterr().out
    assert main(["cert", "inspect", str(tmp_path / "cert.b64")]) == 1  # unverified is not success


@pytest.mark.parametrize(
    "argv",
    [
        ["cert", "inspect", "/nonexistent/cert"],
        ["ledger", "verify", "/nonexistent/ledger.sqlite"],
        ["entity", "show", "--state", "/nonexistent/state"],
        ["bench", "no-such-area"],
        [
            "entity",
            "serve",
            "--port",
            "99999",
            "--state",
            "/nonexistent/state",
            "--device-id",
            "m-1",
            "--controller-key",
            "/nonexistent/key.der",
        ],
        ["dbc", "export", "/proc/modbatt-cannot-create"],
        ["sweep", "/nonexistent/sweep.yaml"],
        ["monitor", "--log", "/nonexistent/trace.log"],
    ],
)
def test_user_mistakes_are_one_line_errors_with_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1 and "Traceback" not in err


def test_garbage_certificate_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "junk").write_bytes(b"\xa4" + os.urandom(40))
    assert main(["cert", "inspect", str(tmp_path / "junk")]) == 1
    assert "malformed" in capsys.readouterr().err
