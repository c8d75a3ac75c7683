"""Live bus inspection (workbench/live.py, notebook 08) against ``modbatt sim`` running in another process."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import can
import nbformat
import pytest

from modbatt.cli import main
from modbatt.errors import ConfigError, TransportError
from modbatt.sim.multiprocess import multicast_available
from modbatt.transport.canbus import BusConfig, resolve_bus
from modbatt.workbench.live import BackgroundPack, LiveSession, SimProcess, listen, open_keystore

multicast = pytest.mark.skipif(not multicast_available()[0], reason=multicast_available()[1])


def _run_id() -> str:
    return f"test-live-{uuid.uuid4().hex}"


@multicast
def test_a_listen_only_session_decrypts_modbatt_sim_running_in_another_process(tmp_path: Path):
    # A run id of this test alone: its own udp_multicast group and port (docs/buses.md §2.3).
    config = resolve_bus("udp_multicast", run_id=_run_id(), ignore_config=True)
    source = SimProcess(config, 2, 2.0, state=tmp_path / "pack")
    assert source.command.startswith("modbatt sim --state ") and f"--channel {config.channel}" in source.command
    with LiveSession(config, keystore=open_keystore(source.keystore_path), bitrate=250_000) as session:
        updates: list[int] = []
        verdict = listen(session, source, 2.0, on_update=lambda s: updates.append(s.frames))
        signals = session.signals()
        with pytest.raises(TransportError, match="listen-only"):
            session.bus.send(can.Message(arbitration_id=1, data=b"x"))
        assert session.bus.send_attempts == 1 and not session.verdict(verdict.frames_sent).ok
    summary = source.summary
    assert summary is not None and summary["ok"]
    # The other process ran on exactly this bus: the group and port the run id gave.
    assert (summary["bus"]["channel"], summary["bus"]["port"]) == (config.channel, config.kwargs["port"])
    assert verdict.frames_sent == sum(summary["frames_sent"].values()) == verdict.frames_heard > 0
    assert verdict.heartbeats > 0 and verdict.heartbeat_gaps == 0 and verdict.lost == 0
    assert verdict.send_attempts == 0 and verdict.ok
    assert len(updates) >= 3 and updates == sorted(updates)  # the display was updated while it ran
    assert {"CURRENT_N2C", "HEARTBEAT_N2C", "CHARGE_COMMAND_C2N"} <= set(signals.message)
    assert signals.value.notna().all()
    assert set(signals.node) == {1, 2}


def test_a_pack_in_another_process_needs_a_bus_other_processes_share(tmp_path: Path):
    with pytest.raises(ConfigError, match="shared between processes"):
        SimProcess(resolve_bus("virtual", ignore_config=True), 1, 1.0, state=tmp_path / "pack")
    assert not (tmp_path / "pack").exists()  # refused before the pack was created


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
def test_notebook_08_runs_against_modbatt_sim_in_another_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    # The path a user takes: modbatt run names the bus (a run id), the notebook starts modbatt sim on it.
    out = tmp_path / "run"
    argv = ["run", "--only", "08-", "--output", str(out), "-i", "udp_multicast", "--run-id", _run_id(),
            "-p", "08.source=process", "--json"]  # fmt: skip
    code = main(argv)
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    result = json.loads((out / "results" / "08-live-bus.json").read_text())
    assert result["ok"] is True and result["lost"] == 0
    assert "CURRENT_N2C" in result["messages_decrypted"]
    executed = nbformat.read(out / "build" / "notebooks" / "08-live-bus.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert f"--channel {report['bus']['channel']} --bus-option port={report['bus']['port']}" in text
    assert "source: modbatt sim --state " in text
