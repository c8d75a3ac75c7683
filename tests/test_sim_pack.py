"""The pack simulator on python-can buses: 31 modules in process, and modules as separate processes."""

from __future__ import annotations

import uuid

import can
import pytest

from modbatt.can.functions import function_for
from modbatt.can.ids import SEED_LAYOUT, CanIdFields
from modbatt.can.wiretime import FD
from modbatt.errors import Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.model.tier import Tier
from modbatt.sim import (
    COMMAND_CLASSES,
    AcceleratedClock,
    PackSimulation,
    TrafficPlan,
    VirtualClock,
    multicast_available,
    run_multiprocess,
)
from modbatt.transport.canbus import BusConfig

TELEMETRY_KEYS = {"current_telemetry/exchange", "voltage_telemetry/exchange", "temperature_telemetry/exchange"}


def _assert_clean(stats):
    assert stats.rejects == {}, stats.rejects
    assert stats.transport_errors == {}, stats.transport_errors
    assert stats.lost_acknowledged == 0
    assert stats.misordered_acknowledged == 0
    assert stats.refused == 0 and stats.decode_errors == 0
    assert stats.commands_sent > 0
    # A slow ack (a loaded machine) may cause a retry: the module answers the repeat without applying it.
    assert stats.acks_received == stats.commands_sent == stats.commands_received - stats.repeats - stats.stale
    assert stats.exactly_once and len(stats.applied) == stats.commands_sent
    assert stats.units_rx == stats.units_tx  # every unit sent arrived and verified
    assert stats.frames_rx == stats.frames_tx  # every frame crossed the bus
    assert not stats.truncated
    assert stats.ok


@pytest.fixture(scope="module")
def pack31():
    with PackSimulation(31, seed=31, clock=VirtualClock()) as sim:
        stats = sim.run(2.0, drain=0.5, max_wall=30.0)
        yield sim, stats


def test_thirty_one_modules_on_the_virtual_bus(pack31):
    sim, stats = pack31
    _assert_clean(stats)
    assert len(sim.module_nodes) == 31
    # Telemetry at the documented rates: STATUS_1 every 100 ms, STATUS_2/3 every 500 ms, 2 s.
    assert stats.units_tx["current_telemetry/exchange"] == 31 * 20
    assert stats.units_tx["voltage_telemetry/exchange"] == 31 * 4
    assert stats.units_tx["temperature_telemetry/exchange"] == 31 * 4
    assert stats.telemetry_decoded == 31 * 28  # decoded with the legacy catalog at the pack
    assert stats.units_tx["heartbeat/exchange"] == 2 * 31 * 2  # module heartbeats + pack keep-alives
    # Critical operations at the pairing tier, routine at the exchange tier.
    for cls in COMMAND_CLASSES:
        assert stats.units_tx[f"{cls.value}/pairing"] > 0
        assert f"{cls.value}/exchange" not in stats.units_tx
    assert set(stats.units_rx) >= TELEMETRY_KEYS
    # Classic CAN: an 8-byte telemetry message is a 13-byte unit = ISO-TP FF + FC + CF.
    assert stats.frames_tx["current_telemetry/exchange"] == 3 * stats.units_tx["current_telemetry/exchange"]
    assert stats.sim_seconds == pytest.approx(2.5)


def test_thirty_one_modules_with_an_accelerated_clock():
    # Wall time × 5: timers fire late when the CPU lags, but nothing may be lost or reordered.
    with PackSimulation(31, seed=32, clock=AcceleratedClock(factor=5.0)) as sim:
        stats = sim.run(1.0, drain=0.5, max_wall=120.0)
    _assert_clean(stats)  # includes: not cut short by the wall-time guard
    assert stats.units_rx["current_telemetry/exchange"] >= 31 * 9


def test_every_module_has_its_own_keys(pack31):
    sim, _ = pack31
    link1 = sim.module_nodes[1].links[1]
    pdu = sim.pack.links[2].send(MessageClass.CHARGE_COMMAND, b"\x00")
    with pytest.raises(VerificationError) as exc:
        link1.receive(pdu.can_id, pdu.data)  # module 1 cannot open module 2's command
    assert exc.value.reason is Reason.BAD_MAC


def test_forged_frame_is_rejected_and_counted():
    channel = f"modbatt-test-{uuid.uuid4().hex}"
    with PackSimulation(2, seed=5, bus=BusConfig(interface="virtual", channel=channel)) as sim:
        # Heartbeats are single secured frames: a forged one must fail its tag at module 1.
        can_id = SEED_LAYOUT.encode(
            CanIdFields(function=function_for(MessageClass.HEARTBEAT).code, node=1, direction=0, tier=Tier.EXCHANGE)
        )
        with can.Bus(interface="virtual", channel=channel) as attacker:
            attacker.send(can.Message(arbitration_id=can_id, data=bytes(6), is_extended_id=True))
        stats = sim.run(0.3)
    assert stats.rejects == {"bad_mac": 1}
    assert not stats.ok
    assert stats.lost_acknowledged == 0


def test_fd_profile_carries_telemetry_in_single_frames():
    with PackSimulation(3, seed=9, profile=FD, plan=TrafficPlan(firmware_block=128)) as sim:
        stats = sim.run(1.0)
    _assert_clean(stats)
    for key in TELEMETRY_KEYS:
        assert stats.frames_tx[key] == stats.units_tx[key]  # 8 B + 24 B overhead fits one FD frame


def test_accelerated_clock_run_reaches_its_simulated_time():
    clock = AcceleratedClock(factor=20.0)
    with PackSimulation(4, seed=11, clock=clock) as sim:
        stats = sim.run(2.0, drain=0.2, max_wall=60.0)
    _assert_clean(stats)
    assert stats.sim_seconds >= 2.2


def test_modules_as_separate_processes_over_udp_multicast():
    ok, reason = multicast_available()
    if not ok:
        pytest.skip(f"multicast sockets unavailable here: {reason}")
    stats = run_multiprocess(2, duration=1.5, drain=0.5, seed=21)  # a fresh free UDP port per run
    _assert_clean(stats)
    assert set(stats.units_rx) >= TELEMETRY_KEYS
