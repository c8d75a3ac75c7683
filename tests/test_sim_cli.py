"""``modbatt sim`` as a command: other processes watch its pack, Ctrl-C stops it cleanly, loss fails it.

The cross-process tests put the sim, ``modbatt monitor`` and a plain python-can listener in three
processes on one udp_multicast group and port derived from a fresh run id (docs/buses.md §3), so
parallel runs never hear each other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from modbatt.cli import main
from modbatt.sim.multiprocess import multicast_available
from modbatt.transport.canbus import run_udp_address

MODBATT = [sys.executable, "-m", "modbatt.cli"]
WAIT = 60.0  # bound for any one process, seconds


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("CAN_INTERFACE", "CAN_CHANNEL", "CAN_BITRATE", "CAN_CONFIG"):
        env.pop(var, None)
    return env


def _wait_for_line(stream: object, needle: str, proc: subprocess.Popen[str]) -> str:
    """Read lines until one contains ``needle`` (the process says it is ready)."""
    seen = []
    for line in stream:  # type: ignore[attr-defined]
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{proc.args} ended before {needle!r}: {''.join(seen)}")


needs_multicast = pytest.mark.skipif(
    not multicast_available()[0], reason=f"this host cannot join IPv4 multicast groups: {multicast_available()[1]}"
)

# A plain python-can listener (no modbatt code on the receive path): counts the pack's frames.
_LISTENER = textwrap.dedent(
    """
    import json, sys, time, can
    group, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    bus = can.Bus(interface="udp_multicast", channel=group, port=port)
    print("ready", flush=True)
    ids, frames, end = set(), 0, time.monotonic() + seconds
    while time.monotonic() < end:
        msg = bus.recv(0.2)
        if msg is not None and msg.is_extended_id:
            frames += 1
            ids.add(msg.arbitration_id)
    bus.shutdown()
    print(json.dumps({"frames": frames, "ids": sorted(ids)}), flush=True)
    """
)


@needs_multicast
def test_monitor_and_a_plain_listener_in_other_processes_see_the_pack(tmp_path: Path) -> None:
    run_id = f"test-sim-{uuid.uuid4().hex}"
    group, port = run_udp_address(run_id)
    bus = ["-i", "udp_multicast", "--run-id", run_id]
    monitor = subprocess.Popen(
        [*MODBATT, "monitor", *bus, "--duration", "25", "--count", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    listener = subprocess.Popen(
        [sys.executable, "-c", _LISTENER, group, str(port), "25"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        # Both are listening before the pack starts: the monitor names its bus once it is open.
        line = _wait_for_line(monitor.stderr, "# bus:", monitor)
        assert f"udp_multicast {group} port {port}" in line
        _wait_for_line(listener.stdout, "ready", listener)
        sim = subprocess.run(
            [*MODBATT, "sim", "--ephemeral", "-m", "2", "-d", "3", "--json", *bus],
            capture_output=True, text=True, timeout=WAIT, env=_env(),
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        summary = json.loads(sim.stdout)
        assert summary["ok"] and summary["bus"]["channel"] == group and summary["bus"]["port"] == port
        sent = sum(summary["frames_sent"].values())
        mon_out, mon_err = monitor.communicate(timeout=WAIT)
        heard = json.loads(listener.communicate(timeout=WAIT)[0].strip().splitlines()[-1])
    finally:
        for proc in (monitor, listener):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert monitor.returncode == 0, mon_err
    # The monitor decoded the pack's secured frames: IDs by field, both modules, both tiers.
    assert "exchange fn=0x41(CURRENT) node=0x01" in mon_out and "node=0x02" in mon_out
    assert "flag=1 pairing fn=0x" in mon_out  # critical commands at the pairing tier
    assert "300 frames in" in mon_out.splitlines()[-1]
    # The plain listener heard the pack's frames (UDP may drop a few; the sim itself lost none).
    assert heard["frames"] >= sent // 2 > 0
    assert any((i >> 8) & 0xFF == 0x41 for i in heard["ids"])  # function field: CURRENT telemetry


def test_ctrl_c_stops_cleanly_with_a_summary(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*MODBATT, "sim", "--ephemeral", "-m", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        _wait_for_line(proc.stdout, "sending until Ctrl-C", proc)
        time.sleep(1.0)  # some traffic (not a timing assertion)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "interrupted after" in out and out.strip().endswith("ok") and "Traceback" not in err
    assert "(the embedded default, nothing configured: this process only)" in out


def test_a_run_that_loses_frames_fails_loudly(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["sim", "--ephemeral", "-m", "1", "-d", "2", "--faults", "loss=0.3,seed=4", "--json"])
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert code == 1 and summary["ok"] is False and summary["problems"]
    errors = [line for line in captured.err.splitlines() if line.startswith("modbatt sim: error: ")]
    # Lost units are the fault bus's doing; what fails the run is a command left unacknowledged
    # by the end of the drain (docs/delivery.md).
    assert any("never acknowledged" in line or "given up" in line for line in errors)
    assert summary["bus"]["faults"].startswith("loss=0.3")


def test_state_persists_keys_and_freshness_across_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "pack"
    assert main(["sim", "--state", str(state), "-m", "2", "-d", "0.5", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    manifest = json.loads((state / "pack.json").read_text())
    counters = sorted(p.name for p in (state / "entities").glob("*.freshness/**/*.fv"))
    assert manifest["modules"] == 2 and len(manifest["pairings"]) == 2 and counters
    # The same pack again: same pairings, channels resynchronise, no unit refused.
    assert main(["sim", "--state", str(state), "-m", "2", "-d", "0.5", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert json.loads((state / "pack.json").read_text())["pairings"] == manifest["pairings"]
    assert first["ok"] and second["ok"] and not second["rejects"]
    assert sum(second["units_received"].values()) == sum(second["units_sent"].values()) > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sim", "-d", "1"], "--state DIR (persisted) or --ephemeral"),
        (["sim", "--ephemeral", "-m", "40"], "1-31 modules"),
        (["sim", "--ephemeral", "-i", "udp_multicast"], "needs a channel"),
        (["sim", "--ephemeral", "-d", "0"], "--duration must be a positive"),
    ],
)
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_state_of_another_size_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "pack"
    assert main(["sim", "--state", str(state), "-m", "1", "-d", "0.3"]) == 0
    before = sorted(p.relative_to(state) for p in state.rglob("*"))
    capsys.readouterr()
    assert main(["sim", "--state", str(state), "-m", "2", "-d", "0.3"]) == 2
    assert "holds a pack of 1 modules, not 2" in capsys.readouterr().err
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == before


def test_a_pack_paired_under_efficient_keeps_its_profile_and_refuses_another(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "pack"
    assert main(["sim", "--state", str(state), "-m", "1", "-d", "0.5", "--profile", "efficient", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["protocol"] == "efficient" and first["ok"]
    assert json.loads((state / "pack.json").read_text())["protocol"] == "efficient"
    # Reopened without --profile: the profile it was paired under, traffic accepted again.
    assert main(["sim", "--state", str(state), "-m", "1", "-d", "0.5", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["protocol"] == "efficient" and again["ok"] and not again["rejects"]
    before = sorted((p.relative_to(state), p.stat().st_size) for p in state.rglob("*") if p.is_file())
    assert main(["sim", "--state", str(state), "-m", "1", "-d", "0.3", "--profile", "seed"]) == 2
    err = capsys.readouterr().err
    assert "paired under the efficient profile, not seed" in err and len(err.strip().splitlines()) == 1
    assert sorted((p.relative_to(state), p.stat().st_size) for p in state.rglob("*") if p.is_file()) == before


def test_an_unknown_profile_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--ephemeral", "--profile", "quantum"]) == 2
    err = capsys.readouterr().err
    assert "quantum" in err and len(err.strip().splitlines()) == 1
