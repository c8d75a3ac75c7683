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


def test_the_soak_exit_status_is_the_contract_not_the_give_ups() -> None:
    from modbatt.cli.sim_cmd import soak_status
    from modbatt.sim.pack import SimStats
    from modbatt.sim.soak import SoakReport

    stats = SimStats(faults=True)
    stats.acknowledged.update({"1/charge_command/0": 1})
    stats.applied.update({"1/charge_command/0": 1, "1/charge_command/1": 1})  # applied, ack lost, given up
    stats.gave_up.update({"charge_command": 1})
    stats.rejects.update({"bad_mac": 3, "stale": 2})
    report = SoakReport(2, 5.0, "loss=0.1", stats, 1)
    assert report.ok and report.given_up == 1  # a classified, reported outcome: the contract held
    assert soak_status(report) == (0, None)
    assert soak_status(report, fail_on_give_up=True)[0] == 1
    stats.rejects["mystery"] += 1  # a reject no Reason names
    assert not report.ok and report.unclassified_rejects == {"mystery": 1} and soak_status(report)[0] == 1
    del stats.rejects["mystery"]
    stats.applied["1/charge_command/0"] += 1  # applied twice
    assert not report.ok and report.to_dict()["commands"]["applied_twice"] == 1


def test_memory_slope_and_its_half_width() -> None:
    from modbatt.sim.soak import slope_per_min

    flat = [(t, 1000.0 + (t % 2)) for t in range(60)]
    slope, ci = slope_per_min(flat)
    assert abs(slope) < 1.0 and 0 < ci < 5.0
    rising = [(t, 1000.0 + 10 * t) for t in range(60)]  # 10 KiB a second: 600 KiB a minute
    slope, ci = slope_per_min(rising)
    assert abs(slope - 600.0) < 1e-6 and ci < 1e-6
    assert slope_per_min([(0, 1.0), (1, 2.0)])[1] == float("inf")  # too few points to say
