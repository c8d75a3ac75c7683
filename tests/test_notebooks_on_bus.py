"""Notebooks 01-07 put their traffic on the bus their parameters name: a listener in another process hears it.

Each notebook runs through ``modbatt run``'s runner (papermill) with ``bus_interface=udp_multicast``,
a multicast group and a UDP port of this test alone; a plain python-can ``udp_multicast`` bus in a
separate process (no modbatt code) counts the frames and the test decodes their identifiers.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from modbatt.can.functions import FUNCTIONS
from modbatt.can.ids import SEED_LAYOUT
from modbatt.sim.pack import multicast_available
from modbatt.workbench.runner import run_notebooks

ok, why = multicast_available()
pytestmark = pytest.mark.skipif(not ok, reason=why)

# An independent listener: python-can only, in its own interpreter. It reports the IDs it heard
# once the stop file appears (bounded: it gives up after a few minutes whatever happens).
LISTENER = textwrap.dedent(
    """
    import collections, json, os, sys, time
    import can
    group, port, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    bus = can.Bus(interface="udp_multicast", channel=group, port=port)
    print("ready", flush=True)
    ids = collections.Counter()
    end = time.monotonic() + 420
    while time.monotonic() < end and not os.path.exists(stop):
        msg = bus.recv(timeout=0.05)
        if msg is not None:
            ids[msg.arbitration_id] += 1
    while (msg := bus.recv(timeout=0.2)) is not None:  # what is still in the socket
        ids[msg.arbitration_id] += 1
    bus.shutdown()
    print(json.dumps({str(k): v for k, v in ids.items()}), flush=True)
    """
)

#: Per notebook: parameters that keep the run short (the bus parameters are added by the test).
NOTEBOOKS = {
    "01-binding": {"timing_runs": 1},
    "02-pairing": {},
    "03-validation-levels": {},
    "04-escalation": {},
    "05-can-frames": {},
    "06-attacks": {"scenario": "replay_can_pairing"},
    "07-latency-and-scale": {"load_duration_s": 0.5},
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_a_listener_in_another_process_hears_the_notebook_on_udp_multicast(name, tmp_path: Path):
    group = f"239.{secrets.randbelow(200) + 20}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    port = _free_port()
    stop = tmp_path / "stop"
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, group, str(port), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        params = {"bus_interface": "udp_multicast", "bus_channel": group, "bus_port": port, **NOTEBOOKS[name]}
        report = run_notebooks(output=tmp_path / "run", only=[name], parameters=params)
        (run,) = report.runs
        assert run.ok, run.error
        time.sleep(0.3)
        stop.touch()
        out, _ = listener.communicate(timeout=30)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(timeout=5)
    heard = {int(k): n for k, n in json.loads(out.strip().splitlines()[-1]).items()}
    assert sum(heard.values()) > 0, f"{name}: no frame reached the listener"
    functions = {FUNCTIONS[SEED_LAYOUT.decode(can_id).function].name for can_id in heard}  # every ID decodes
    assert functions, name
