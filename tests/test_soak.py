"""The soak (docs/delivery.md §6), short: module processes on udp_multicast through the fault bus
at 10 % loss, modules SIGKILLed at random and at the delivery kill points and restarted; nothing
acknowledged is lost and nothing is applied twice."""

from __future__ import annotations

import json

import matplotlib
import pytest

from modbatt.cli import main
from modbatt.sim.multiprocess import multicast_available
from modbatt.sim.soak import run_soak
from modbatt.workbench.soak_figures import soak_figure

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not multicast_available()[0], reason=f"no IPv4 multicast here: {multicast_available()[1]}"),
]


def test_short_soak_with_kills_is_exactly_once() -> None:
    # Module 1 dies after persisting its 3rd command's record but before the ack; module 2 when
    # its 2nd command arrives; one random module is killed every 5 s. Each comes back from disk.
    kill_at = {1: "module.command.committed#3", 2: "module.command.received#2"}
    report = run_soak(4, 12.0, restart_every=5.0, kill_at=kill_at, seed=5)
    s = report.stats
    assert {1, 2} <= set(report.killed) and report.restarts >= 3
    assert s.acknowledged_not_applied == 0 and s.applied_twice == 0, report.to_dict()["commands"]
    assert report.ok, (json.dumps(report.to_dict()["commands"]), s.truncated)
    # How many commands settle depends on the machine's load; that some do, with retries, does not.
    assert s.acknowledged and s.retransmissions > 0
    assert s.repeats > 0  # module 1's third command came back as a repeat: acknowledged, not re-applied
    # Faults only: corrupted units fail their tag (or, for a signed resync answer, its signature),
    # duplicates and reordered ones are replays or stale; nothing else is refused.
    assert s.rejects and set(s.rejects) <= {"bad_mac", "bad_signature", "replay", "stale", "malformed"}
    summary = report.to_dict()
    json.dumps(summary)  # JSON as it is
    assert set(summary["latency_ms"]) == {"charge_command", "discharge_command", "safety_limits", "firmware_update"}
    assert len(summary["memory"]["samples"]) >= 10
    matplotlib.use("Agg")
    fig = soak_figure(summary)
    assert len(fig.axes) == 3


def test_soak_command_line_refuses_a_state_or_another_bus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--soak", "5", "--ephemeral", "-i", "virtual"]) == 2
    assert "udp_multicast" in capsys.readouterr().err
    assert main(["sim", "--soak", "5", "--ephemeral", "--profile", "efficient"]) == 2
    assert "seed profile" in capsys.readouterr().err
    assert main(["sim", "--soak", "0", "--ephemeral"]) == 2
