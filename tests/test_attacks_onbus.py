"""The CAN attackers as a node on a real python-can bus (attacks/onbus.py): same classified outcomes."""

from __future__ import annotations

import uuid

import pytest

from modbatt import attacks
from modbatt.attacks._world import paired_pack
from modbatt.attacks.onbus import OnBusChannel, attack_bus
from modbatt.errors import TransportError
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel import PairedChannel
from modbatt.sim.multiprocess import multicast_available
from modbatt.transport.canbus import BusConfig, resolve_bus

#: The scenarios whose attacker sits on the bus: replay, spoofing, downgrade, injection, flood,
#: fragment attacks, cross-session and restart replays.
ON_BUS = (
    "replay_can_exchange", "replay_can_pairing", "replay_can_binding", "replay_can_binding_next_pairing",
    "cross_session_replay_standard", "cross_session_replay_blind", "gcm_nonce_reuse_forgery_fd",
    "restart_receiver_replay", "restart_sender_replay", "can_node_spoof", "can_direction_reflection",
    "downgrade_clear", "downgrade_lower_tier", "downgrade_flag_strip", "fragment_injection",
    "reassembly_exhaustion", "bus_flood", "cloned_module",
)  # fmt: skip


def test_the_bus_attackers_keep_their_classified_outcomes_with_frames_on_the_wire():
    results = attacks.run_parameter(",".join(ON_BUS), 7, bus=resolve_bus("virtual", ignore_config=True))
    for name, outcome in results.items():
        spec = attacks.get(name)  # a case key names its profile: name@profile
        assert (outcome.outcome, outcome.reason) == spec.expected(name.partition("@")[2] or spec.profiles[0]), name
        assert outcome.counters["bus_frames"] > 0, name  # the attack really crossed the bus
    assert not [n for n, o in results.items() if o.outcome == "succeeded"]


def test_frames_reach_the_victim_only_through_its_bus_handle():
    with attack_bus(resolve_bus("virtual", ignore_config=True)) as bus:
        assert bus is not None
        pack = paired_pack(7)
        rx = pack.link(1, "module")
        assert isinstance(rx, OnBusChannel)
        pdu = pack.link(1, "pack").send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")
        mark = bus.tap.mark()
        got = rx.receive(pdu.can_id, pdu.data)
        bus.tap.settle()
        (frame,) = bus.tap.since(mark)
        assert (frame.arbitration_id, bytes(frame.data)) == (pdu.can_id, pdu.data)
        assert got.payload == b"\x01\x00\x64" and bus.sent_frames == 1
        pack.close()
    # Outside the attack bus the in-process path is unchanged: the channel itself.
    pack = paired_pack(7)
    assert isinstance(pack.link(1, "module"), PairedChannel)
    pack.close()


def test_a_bus_that_loses_the_attackers_frames_fails_loudly():
    lossy = BusConfig(interface="virtual", channel="modbatt-test-lossy-attack", faults="loss=0.6,seed=2")
    with pytest.raises(TransportError, match="lost"), attack_bus(lossy, timeout=0.3):
        attacks.run("replay_can_pairing", 7)


@pytest.mark.skipif(not multicast_available()[0], reason=multicast_available()[1])
def test_on_udp_multicast_sockets_the_outcomes_hold():
    # A run id of this test alone: a group and port no other run uses (docs/buses.md §2.3).
    config = resolve_bus("udp_multicast", run_id=f"test-attacks-{uuid.uuid4().hex}", ignore_config=True)
    chosen = ("replay_can_pairing", "downgrade_flag_strip", "fragment_injection", "restart_receiver_replay")
    results = attacks.run_parameter(",".join(chosen), 7, bus=config)
    for name, outcome in results.items():
        spec = attacks.get(name)  # a case key names its profile: name@profile
        assert (outcome.outcome, outcome.reason) == spec.expected(name.partition("@")[2] or spec.profiles[0]), name
        assert outcome.counters["bus_frames"] > 0
