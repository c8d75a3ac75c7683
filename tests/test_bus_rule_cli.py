"""The one bus rule as the commands apply it (docs/buses.md §2), and SocketCAN/vcan where present.

Every command resolves its bus through ``modbatt.transport.canbus.resolve_bus``: python-can's
configuration honoured, an incomplete choice one line naming what is missing (exit 2), the
embedded virtual bus only when nothing is configured, and the bus named in every output.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import can
import pytest

from modbatt.cli import main
from modbatt.sim.multiprocess import multicast_available
from modbatt.transport.canbus import run_udp_address


@pytest.fixture(autouse=True)
def clean_can_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No python-can configuration from the developer's machine leaks into these tests."""
    for var in ("CAN_INTERFACE", "CAN_CHANNEL", "CAN_BITRATE", "CAN_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(can, "rc", {})
    monkeypatch.setattr(can.util, "CONFIG_FILES", [str(tmp_path / "no-such-can.conf")])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["monitor"], "no bus chosen, and a live monitor"),
        (["monitor", "-i", "udp_multicast"], "interface udp_multicast (from arguments) needs a channel"),
        (["demo", "--in-process", "--interface", "socketcan"], "interface socketcan (from arguments) needs a channel"),
        (["demo", "--in-process", "--channel", "vcan0"], "channel='vcan0' (from arguments) but no interface"),
        (["run", "--interface", "pcan"], "interface pcan (from arguments) needs a channel"),
        (["run", "-i", "socketcan", "-c", "vcan0", "--run-id", "x"], "a bus of its own"),
        (["sim", "--ephemeral", "--can-config", "/nonexistent.conf"], "no such python-can config file"),
        (["entity", "serve", "--state", "/tmp/x", "--can-node", "1"], "no bus chosen, and an entity served over CAN"),
        (["demo", "--transports", "can", "-i", "udp_multicast"], "needs a channel"),
    ],
)
def test_an_incomplete_or_missing_choice_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_demo_honours_the_environment_and_names_the_bus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    channel = f"env-{uuid.uuid4().hex}"
    monkeypatch.setenv("CAN_INTERFACE", "virtual")
    monkeypatch.setenv("CAN_CHANNEL", channel)
    assert main(["demo", "--in-process", "--state", str(tmp_path / "d"), "--json"]) == 0
    bus = json.loads(capsys.readouterr().out)["bus"]
    assert (bus["interface"], bus["channel"], bus["source"]) == ("virtual", channel, "CAN_* environment")


def test_demo_with_nothing_configured_says_it_used_the_embedded_bus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--in-process", "--state", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "CAN bus: virtual modbatt-private-" in out and "(the embedded default, nothing configured" in out


def test_a_python_can_config_file_and_context_choose_the_bus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "lab.conf"
    conf.write_text(f"[default]\ninterface = socketcan\n[bench]\ninterface = virtual\nchannel = b-{uuid.uuid4().hex}\n")
    assert main(["demo", "--in-process", "--state", str(tmp_path / "d"), "--json", "--can-config", str(conf),
                 "--config-context", "bench"]) == 0  # fmt: skip
    bus = json.loads(capsys.readouterr().out)["bus"]
    assert bus["interface"] == "virtual" and bus["source"] == f"{conf} [bench]"
    # the default section alone is incomplete: socketcan without a channel
    assert main(["demo", "--in-process", "--state", str(tmp_path / "e"), "--can-config", str(conf)]) == 2
    assert f"interface socketcan (from {conf} [default]) needs a channel" in capsys.readouterr().err


def test_mixed_demo_puts_its_can_entity_on_the_chosen_bus(capsys: pytest.CaptureFixture[str]) -> None:
    channel = f"mixed-{uuid.uuid4().hex}"
    assert main(["demo", "--transports", "can", "-i", "virtual", "-c", channel, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["can_bus"]["channel"] == channel and result["entities"][0]["bound"]


_LISTENER = textwrap.dedent(
    """
    import sys, time, can
    group, port = sys.argv[1], int(sys.argv[2])
    bus = can.Bus(interface="udp_multicast", channel=group, port=port)
    print("ready", flush=True)
    # Every identifier heard until the bus has been quiet for 3 s after the first frame.
    ids, end = set(), time.monotonic() + 60
    while time.monotonic() < end:
        msg = bus.recv(3.0 if ids else 0.5)
        if msg is not None:
            ids.add(msg.arbitration_id)
        elif ids:
            break
    print(" ".join(f"{i:08X}" for i in sorted(ids)), flush=True)
    """
)


@pytest.mark.skipif(not multicast_available()[0], reason=f"no IPv4 multicast here: {multicast_available()[1]}")
def test_a_listener_in_another_process_sees_the_demo_frames(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = f"test-demo-{uuid.uuid4().hex}"
    group, port = run_udp_address(run_id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAN_")}
    listener = subprocess.Popen([sys.executable, "-c", _LISTENER, group, str(port)], stdout=subprocess.PIPE,
                                text=True, env=env)  # fmt: skip
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        assert main(["demo", "--in-process", "--state", str(tmp_path / "d"), "--json", "-i", "udp_multicast",
                     "--run-id", run_id]) == 0  # fmt: skip
        result = json.loads(capsys.readouterr().out)
        heard = listener.communicate(timeout=60)[0].split()
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    assert result["bus"]["channel"] == group and result["bus"]["port"] == port
    # Each unit the demo sent was heard (ISO-TP units add flow control on the reverse identifier).
    assert {f["can_id"][2:] for f in result["frames"]} <= set(heard)


# ----------------------------------------------------------------------------- SocketCAN / vcan


def _vcan() -> tuple[str | None, str]:
    """The vcan interface to test on (``MODBATT_VCAN``, default vcan0), or why there is none."""
    name = os.environ.get("MODBATT_VCAN", "vcan0")
    if not hasattr(socket, "AF_CAN"):
        return None, "this platform has no AF_CAN sockets (SocketCAN is Linux only)"
    try:
        with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as s:
            s.bind((name,))
    except OSError as exc:
        return None, (
            f"no SocketCAN interface {name} here ({exc.strerror or exc}); create one as docs/buses.md §9 shows "
            "(modprobe vcan; ip link add dev vcan0 type vcan; ip link set up vcan0)"
        )
    return name, "ok"


VCAN, VCAN_WHY = _vcan()
needs_vcan = pytest.mark.skipif(VCAN is None, reason=VCAN_WHY)


@needs_vcan
def test_sim_on_vcan_is_seen_by_a_plain_socketcan_listener() -> None:
    with can.Bus(interface="socketcan", channel=VCAN) as listener:
        sim = subprocess.run(
            [sys.executable, "-m", "modbatt.cli", "sim", "--ephemeral", "-m", "1", "-d", "1", "--json",
             "-i", "socketcan", "-c", str(VCAN)], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sim.returncode == 0, sim.stderr
        summary = json.loads(sim.stdout)
        frames = 0
        while listener.recv(0.2) is not None:
            frames += 1
    assert summary["bus"]["interface"] == "socketcan" and frames == sum(summary["frames_sent"].values())


@needs_vcan
def test_demo_on_vcan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--in-process", "--state", str(tmp_path / "d"), "--json", "-i", "socketcan", "-c",
                 str(VCAN)]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["bus"]["channel"] == VCAN


def test_run_refuses_a_bus_a_notebook_cannot_take_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A udp_multicast run id carries a port: a notebook without bus_options would fall back to
    # python-can's default port, another bus. Refused before anything runs.
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    folder = tmp_path / "nbs"
    folder.mkdir()
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_code_cell(
        "from typing import Optional\n\n"
        "bus_interface: Optional[str] = None  # python-can interface\n"
        "bus_channel: Optional[str] = None  # python-can channel",
        metadata={"tags": ["parameters"]},
    ), new_code_cell("print(bus_interface)")]  # fmt: skip
    nbformat.write(nb, folder / "01-partial.ipynb")
    out = tmp_path / "out"
    argv = ["run", "--notebooks", str(folder), "--output", str(out), "-i", "udp_multicast", "--run-id", "r1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "notebook 01-partial cannot take this bus (udp_multicast 239." in err and "bus_options" in err
    assert not out.exists()  # nothing ran, nothing was written
