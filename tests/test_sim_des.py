"""The discrete-event model: arbitration, wire time, CPU profiles and the budget table."""

from __future__ import annotations

import dataclasses

import pytest

from modbatt.can.wiretime import CLASSIC, FD, frame_time
from modbatt.errors import ConfigError
from modbatt.sim import (
    ATMEGA64M1,
    BUDGETS,
    BUSES,
    LEVELS,
    STM32WB55,
    CanBusModel,
    EventLoop,
    latency_table,
    measure_host,
    simulate_pack_load,
    wire_seconds,
)
from modbatt.sim import cpu as ops
from modbatt.sim.experiments import SWEEP_EXPERIMENTS


@pytest.fixture(scope="module")
def table():
    return latency_table(stuffing="worst")


def test_event_loop_runs_in_time_order_and_fifo_on_ties():
    loop = EventLoop()
    seen = []
    loop.schedule(2.0, seen.append, "c")
    loop.schedule(1.0, seen.append, "a")
    loop.schedule(1.0, seen.append, "b")
    loop.run()
    assert seen == ["a", "b", "c"]
    assert loop.now == 2.0


def test_arbitration_lowest_identifier_wins_among_pending_frames():
    loop = EventLoop()
    bus = CanBusModel(loop, dataclasses.replace(CLASSIC, nominal_bitrate=500_000))
    bus.submit(0x1800_0300, 8)  # takes the idle bus at once
    # While it is on the wire, three more become pending; they must leave in identifier order,
    # not submission order, and a later low ID must overtake earlier high ones.
    loop.schedule(10e-6, bus.submit, 0x1800_0200, 8)
    loop.schedule(20e-6, bus.submit, 0x1800_0100, 8)
    loop.schedule(30e-6, bus.submit, 0x1800_0150, 8)
    loop.run()
    assert [r.can_id for r in bus.log] == [0x1800_0300, 0x1800_0100, 0x1800_0150, 0x1800_0200]
    # Non-pre-emptive, back to back: each starts when the previous one ends.
    for prev, nxt in zip(bus.log, bus.log[1:], strict=False):
        assert nxt.start == pytest.approx(prev.end)


def test_same_instant_submissions_compete_and_ties_are_fifo():
    loop = EventLoop()
    bus = CanBusModel(loop, CLASSIC)
    for can_id, tag in ((0x500, "x"), (0x100, "y"), (0x500, "z")):
        bus.submit(can_id, 8, tag=tag)
    loop.run()
    assert [r.tag for r in bus.log] == ["y", "x", "z"]


@pytest.mark.parametrize(
    ("name", "nbytes"), [(b, n) for b in BUSES for n in (0, 5, 8, 13, 64) if BUSES[b].fd or n <= 8]
)
def test_wire_time_equals_the_wiretime_model(name, nbytes):
    profile = BUSES[name]
    for stuffing, worst in (("worst", True), ("none", False)):
        loop = EventLoop()
        bus = CanBusModel(loop, profile, stuffing=stuffing)
        bus.submit(0x18000001, nbytes)
        loop.run()
        (rec,) = bus.log
        assert rec.wire == pytest.approx(frame_time(profile, nbytes, worst=worst), rel=1e-12)
        assert rec.queued == 0.0
    typical = wire_seconds(profile, nbytes, "typical")
    assert frame_time(profile, nbytes, worst=False) < typical < frame_time(profile, nbytes, worst=True)


def test_documented_frame_times():
    # docs/can-frames.md §4: classic 29-bit 8 B = 160 bits worst at 1 Mbit/s; FD 64 B 500k/2M = 453.5 µs worst.
    assert wire_seconds(CLASSIC, 8) == pytest.approx(160e-6)
    fd = dataclasses.replace(FD, nominal_bitrate=500_000, data_bitrate=2_000_000)
    assert wire_seconds(fd, 64) == pytest.approx(453.5e-6)


def test_budget_table_has_every_level_platform_and_bitrate(table):
    combos = {(r.level, r.platform, r.bus) for r in table.itertuples()}
    assert combos == {(lv, p, b) for lv in LEVELS for p in ("HOST", "MCU") for b in BUSES}
    assert len(table) == len(LEVELS) * 2 * len(BUSES)
    assert set(BUSES) == {"classic 125k", "classic 250k", "classic 500k", "classic 1M", "FD 500k/2M", "FD 1M/5M"}
    for col in ("wire_ms", "compute_ms", "latency_ms", "budget_ms", "met", "margin_ms"):
        assert col in table.columns
    # Latency is the sum of its parts on an idle bus, and the margin is budget minus latency.
    assert (table.latency_ms - (table.wire_ms + table.compute_ms + table.queue_ms)).abs().max() < 1e-6
    assert ((table.budget_ms - table.latency_ms) - table.margin_ms).abs().max() < 1e-9
    assert (table.met == (table.margin_ms >= 0)).all()
    assert (
        dict(zip(table.level, table.budget_ms, strict=False))["L5 command + ack"] == BUDGETS["L5 command + ack"] * 1e3
    )


def test_mcu_module_side_ecdsa_breaks_the_l5_command_budget(table):
    # The documented finding (docs/validation.md §7, docs/simulation.md §5): the 20 ms L5 budget cannot include an ECDSA
    # operation on the ATmega module — one verify alone is two orders of magnitude over.
    assert ATMEGA64M1.cost(ops.ECDSA_VERIFY) > BUDGETS["L5 command + ack"]
    assert ATMEGA64M1.cost(ops.ECDSA_SIGN) > BUDGETS["L5 command + ack"]
    rows = table[(table.level == "L5 command + ack") & (table.platform == "MCU")]
    assert len(rows) == len(BUSES)
    assert (~rows.met).all()
    assert (rows.module_compute_ms > 20).all()


def test_host_profile_meets_the_l5_command_budget(table):
    rows = table[(table.level == "L5 command + ack") & (table.platform == "HOST")]
    assert (rows.compute_ms < 20).all()  # compute alone never breaks it on the host
    fast = rows[rows.nominal_bitrate >= 500_000]
    assert fast.met.all(), fast[["bus", "latency_ms"]]


def test_profiles_say_where_their_numbers_come_from():
    for profile in (STM32WB55, ATMEGA64M1, measure_host()):
        for row in profile.table():
            assert row["source"], row
    assert STM32WB55.ops[ops.ECDSA_VERIFY].published
    assert "RM0453" in STM32WB55.ops[ops.ECDSA_VERIFY].source
    host = measure_host()
    assert 0 < host.cost(ops.ECDSA_VERIFY) < 0.01  # tens of µs here; generous for a loaded machine
    assert host is measure_host()  # measured once per process


def test_thirty_one_module_pack_load():
    classic = simulate_pack_load(31, "classic 500k", duration=3.0)
    fd = simulate_pack_load(31, "FD 500k/2M", duration=3.0)
    for result in (classic, fd):
        s = result.summary
        assert s["modules"] == 31
        assert 0 < s["bus_load"] < 1.0
        # The event simulation and the analytic wiretime.bus_load agree on the same frame mix.
        assert s["bus_load"] == pytest.approx(s["analytic_load"], rel=0.02)
        assert all(r["queue_max_ms"] >= 0 for r in result.rows)
        classes = {r["message_class"] for r in result.rows}
        assert {"current_telemetry", "heartbeat", "charge_command", "firmware_update"} <= classes
    # Classic framing triples the frames of an 8-byte telemetry message (ISO-TP FF + FC + CF).
    frames = {
        name: next(r["frames"] for r in res.rows if r["message_class"] == "current_telemetry")
        for name, res in (("classic", classic), ("fd", fd))
    }
    assert frames["classic"] == 3 * frames["fd"]
    overloaded = simulate_pack_load(31, "classic 125k", duration=2.0)
    assert overloaded.analytic_load > 1.0
    assert overloaded.bus_load == pytest.approx(1.0, abs=0.01)  # saturated: queues grow without bound


def test_sweep_experiments_give_tidy_rows():
    row = SWEEP_EXPERIMENTS["level_latency"](level="L5 command + ack", platform="MCU", bus="classic 500k")
    assert row["met"] is False and row["bus"] == "classic 500k"
    rows = SWEEP_EXPERIMENTS["pack_load"](modules=2, bus="FD 1M/5M", duration=1.0)
    assert rows and all(0 < r["bus_load"] < 1 for r in rows)
    with pytest.raises(ConfigError):
        SWEEP_EXPERIMENTS["level_latency"](level="L9", platform="HOST")
