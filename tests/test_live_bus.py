"""Live bus inspection (workbench/live.py, notebook 08) against a pack simulator in another process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest

from modbatt.errors import TransportError
from modbatt.sim.pack import multicast_available
from modbatt.transport.canbus import BusConfig
from modbatt.workbench.bus import notebook_bus
from modbatt.workbench.live import BackgroundPack, LiveSession, ProcessSource, listen, open_keystore
from modbatt.workbench.runner import run_notebooks

multicast = pytest.mark.skipif(not multicast_available()[0], reason=multicast_available()[1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_source(state: Path, group: str, port: int, *, modules: int = 2, duration: float = 2.0):
    """``python -m modbatt.sim.source`` in its own process; returns it once its key store is written."""
    env = {**os.environ, "MODBATT_REPRODUCIBLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "modbatt.sim.source", "--modules", str(modules), "--duration", str(duration),
         "--interface", "udp_multicast", "--channel", group, "--port", str(port), "--seed", "7",
         "--state", str(state), "--start-after", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (state / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the source did not start: {proc.communicate(timeout=5)}")
        time.sleep(0.05)
    return proc


@multicast
def test_a_listen_only_session_decrypts_a_pack_simulated_in_another_process(tmp_path: Path):
    group, port = "239.74.163.21", _free_port()
    proc = _start_source(tmp_path / "source", group, port)
    try:
        source = ProcessSource(tmp_path / "source")
        config = notebook_bus("udp_multicast", group, port=port)
        with LiveSession(config, keystore=open_keystore(source.keystore_path), bitrate=250_000) as session:
            updates = []
            verdict = listen(session, source, 2.0, on_update=lambda s: updates.append(s.frames))
            signals = session.signals()
            with pytest.raises(TransportError, match="listen-only"):
                session.bus.send(can.Message(arbitration_id=1, data=b"x"))
            assert session.bus.send_attempts == 1 and not session.verdict(verdict.frames_sent).ok
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stats = json.loads((tmp_path / "source" / "stats.json").read_text())
    assert verdict.frames_sent == sum(stats["frames_tx"].values()) == verdict.frames_heard > 0
    assert verdict.heartbeats > 0 and verdict.heartbeat_gaps == 0 and verdict.lost == 0
    assert verdict.send_attempts == 0 and verdict.ok
    assert len(updates) >= 3 and updates == sorted(updates)  # the display was updated while it ran
    assert {"CURRENT_N2C", "HEARTBEAT_N2C", "CHARGE_COMMAND_C2N"} <= set(signals.message)
    assert signals.value.notna().all()
    assert set(signals.node) == {1, 2}


def test_a_run_that_loses_frames_fails_loudly(tmp_path: Path):
    channel = "modbatt-test-live-lossy"
    source = BackgroundPack(BusConfig(interface="virtual", channel=channel), 2, 1.5, seed=7, state=tmp_path)
    lossy = BusConfig(interface="virtual", channel=channel, faults="loss=0.2,seed=5")  # the listener's handle only
    with LiveSession(lossy, keystore=open_keystore(source.keystore_path)) as session:
        verdict = listen(session, source, 1.5)
    assert verdict.frames_sent is not None and verdict.frames_heard < verdict.frames_sent
    assert verdict.lost > 0 and not verdict.ok
    with pytest.raises(TransportError, match="frames were lost"):
        verdict.raise_for_loss()


def test_a_listen_only_session_refuses_to_echo_its_own_frames():
    with pytest.raises(Exception, match="receive_own_messages"):
        LiveSession(BusConfig(interface="virtual", channel="x", kwargs={"receive_own_messages": True}))


@multicast
def test_notebook_08_runs_against_the_simulator_in_another_process(tmp_path: Path):
    group, port = "239.74.163.22", _free_port()
    proc = _start_source(tmp_path / "source", group, port)
    try:
        params = {"bus_interface": "udp_multicast", "bus_channel": group, "bus_port": port,
                  "source_state": str(tmp_path / "source")}  # fmt: skip
        report = run_notebooks(output=tmp_path / "run", only=["08-"], parameters=params)
        (run,) = report.runs
        assert run.ok, run.error
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    result = json.loads((tmp_path / "run" / "results" / "08-live-bus.json").read_text())
    assert result["ok"] is True and result["lost"] == 0
    assert "CURRENT_N2C" in result["messages_decrypted"]
