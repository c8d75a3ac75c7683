"""Notebooks 01-07 put their traffic on the bus their parameters name: a listener in another process hears it.

Each notebook runs as a user runs it, ``modbatt run --only NAME -i udp_multicast --run-id ID``: the
bus rule resolves the run id to a multicast group and port of this test alone (docs/buses.md §2.3)
and injects them as the notebook's ``bus_interface``, ``bus_channel`` and ``bus_options``. A plain
python-can ``udp_multicast`` bus in a separate process (no modbatt code) counts the frames on that
group and port, and the test decodes their identifiers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from modbatt.can.functions import FUNCTIONS
from modbatt.can.ids import SEED_LAYOUT
from modbatt.cli import main
from modbatt.sim.multiprocess import multicast_available
from modbatt.transport.canbus import run_udp_address

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

#: Per notebook: parameters that keep the run short (the bus comes from modbatt run's bus flags).
NOTEBOOKS = {
    "01-binding": {"timing_runs": 1},
    "02-pairing": {},
    "03-validation-levels": {},
    "04-escalation": {},
    "05-can-frames": {},
    "06-attacks": {"scenario": "replay_can_pairing"},
    "07-latency-and-scale": {"load_duration_s": 0.5},
}


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_a_listener_in_another_process_hears_the_notebook_on_udp_multicast(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = f"test-nb-{name}-{uuid.uuid4().hex}"
    group, port = run_udp_address(run_id)
    stop = tmp_path / "stop"
    listener = subprocess.Popen(
        [sys.executable, "-c", LISTENER, group, str(port), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        settings = [arg for key, value in NOTEBOOKS[name].items() for arg in ("-p", f"{name}.{key}={value}")]
        argv = ["run", "--only", name, "--output", str(tmp_path / "run"), "-i", "udp_multicast", "--run-id", run_id,
                *settings, "--json"]  # fmt: skip
        code = main(argv)
        report = json.loads(capsys.readouterr().out)
        assert code == 0, report["notebooks"]
        assert (report["bus"]["channel"], report["bus"]["port"]) == (group, port)
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
