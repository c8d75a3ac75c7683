"""The gateway wired into the pack simulator: two python-can buses, the routing core, the state gate."""

from __future__ import annotations

import pytest

from modbatt.encoding import strict_loads
from modbatt.model.pairing import Restrictions
from modbatt.nodes.events import EntityEvent
from modbatt.protocol.gateway import AppFrame
from modbatt.protocol.pack_state import PackState
from modbatt.sim.gateway import GatewaySimulation

ON = 3


@pytest.fixture
def sim():
    with GatewaySimulation(3, seed=5) as s:
        yield s


def test_a_vcu_command_crosses_as_a_pairing_tier_command_and_the_status_comes_back_on_the_app_bus(sim):
    sim.run(0.6)
    assert sim.vcu.reported == {1: 0, 2: 0, 3: 0}  # the modules' status, bridged in clear
    sim.command(contactor=ON)
    sim.run(0.6)
    assert sim.module_states() == {1: ON, 2: ON, 3: ON}
    assert sim.vcu.reported == {1: ON, 2: ON, 3: ON}
    stats = sim.stats
    # Off at the start, then on: two commands and two acks per module, each one pairing-tier unit.
    assert stats.units_rx["charge_command/pairing"] == 12
    assert sim.gstats.commands_forwarded["pack-contactor"] == 6
    assert sim.gstats.acks == sim.gstats.commands_forwarded.total()
    assert sim.gateway.counts["unchanged"] > 0  # the VCU repeats itself every 250 ms; the modules hear it once
    assert not stats.rejects and not sim.gateway.rejections


def test_nothing_crosses_before_the_keys_are_confirmed():
    with GatewaySimulation(2, seed=5, confirm=False) as sim:
        sim.command(contactor=ON)
        sim.run(0.6)
        assert all(m.state is PackState.PAIRED for m in sim.security.values())
        assert sim.module_states() == {1: 0, 2: 0} and sim.gstats.commands_forwarded.total() == 0
        assert sim.gateway.rejections["wrong_state"] > 0
        assert sim.vcu.reported == {1: 0, 2: 0}  # telemetry is bridged in paired already


def test_injection_from_the_app_bus_is_dropped_and_counted(sim):
    sim.run(0.3)
    before = sim.stats.commands_received
    injected = [
        AppFrame(0x123, b"\x01" * 8),  # not in the catalog
        AppFrame(0x407, bytes(8), is_extended=True),  # the WEB4 key push: extended, never routed
        AppFrame(0x410, bytes(8)),  # a pack-to-VCU message travelling the wrong way
        AppFrame(0x404, bytes([9, 3, 0, 0, 0, 0, 0, 0])),  # a module this pack does not serve
        AppFrame(0x400, b"\x03"),  # a short frame
    ]
    assert sim.inject(injected) == 5
    assert sim.gateway.rejections == {"unroutable": 3, "wrong_peer": 2, "malformed": 1}
    assert sim.stats.commands_received == before and sim.module_states() == {1: 0, 2: 0, 3: 0}


def test_an_escalated_module_refuses_pairing_tier_commands_but_takes_an_emergency_shutdown(sim):
    sim.command(contactor=ON)
    sim.run(0.6)
    sim.anomaly(1)
    assert sim.security[1].state is PackState.ESCALATED
    sim.command(contactor=2)
    sim.run(0.6)
    assert sim.module_states() == {1: ON, 2: 2, 3: 2}
    assert sim.gateway.rejections["tier_too_low"] > 0  # the gate wants the binding tier; the rule says pairing
    sim.emergency_shutdown(1)
    assert sim.module_states()[1] == 0 and sim.modules[1].shutdowns == 1
    assert sim.stats.units_rx["emergency_shutdown/pairing"] == 2  # one frame each way, not a signed unit
    assert not sim.stats.rejects


def test_the_pack_does_not_forward_what_the_pairing_restricts():
    allowed = Restrictions(("charge_command", "emergency_shutdown"), (), 0)
    with GatewaySimulation(2, seed=5, restrictions=allowed) as sim:
        sim.command(contactor=ON, balancing=1)
        sim.run(0.6)
        assert sim.module_states() == {1: ON, 2: ON}
        assert sim.gstats.commands_forwarded == {"pack-contactor": 2}
        # pack-balancing, refused for each module every time the VCU repeats its command
        assert sim.gateway.rejections["unauthorized"] == 2 * sim.gstats.app_frames_rx
        assert all(m.balancing == 0 for m in sim.modules.values())


@pytest.mark.parametrize("protocol", ["seed", "efficient"])
def test_renewal_before_expiry_in_the_running_pack_loses_nothing(protocol):
    with GatewaySimulation(2, seed=5, valid_for_s=30, renew_lead_s=10, overlap_s=1.0, protocol=protocol) as sim:
        sim.command(contactor=ON)
        first = {n: c.metadata.pairing_id for n, c in sim.certificates.items()}
        sim.run(26.0)
        assert sim.gstats.renewals == 2 and sim.gstats.expiries == 0
        assert {n: c.metadata.pairing_id for n, c in sim.certificates.items()} != first
        assert {c.metadata.profile.value for c in sim.certificates.values()} == {protocol}  # renewals keep it
        assert all(m.state is PackState.ACTIVE for m in sim.security.values())
        stats = sim.stats
        assert not stats.rejects and sum(stats.units_rx.values()) == sum(stats.units_tx.values())
        kinds = [strict_loads(e) for e in sim.dep.ledger.entries()]
        renewed = [e for e in kinds if e["kind"] == "pairing_renewed"]
        retired = [e for e in kinds if e["kind"] == "pairing_revoked"]
        assert {e["renews"] for e in renewed} == set(first.values()) == {e["pairing_id"] for e in retired}
        assert sim.vcu.reported == {1: ON, 2: ON}
        for node_id, pid in first.items():
            assert sim.dep.pack.pairing_secrets(pid) is None and sim.dep.modules[node_id].pairing_secrets(pid) is None


def test_a_pairing_that_expires_is_replaced_by_a_new_one():
    with GatewaySimulation(1, seed=5, valid_for_s=5) as sim:
        sim.command(contactor=ON)
        sim.run(6.0)
        assert sim.gstats.expiries == 1
        events = [(s["event"], s["to"]) for s in sim.gstats.lifecycle]
        assert ("expired", "expired") in events and events[-1] == ("confirmed", "active")
        assert sim.security[1].state is PackState.ACTIVE
        sim.command(contactor=2)
        sim.run(0.6)
        assert sim.module_states() == {1: 2}  # commands flow on the new pairing


def test_a_partition_defers_the_renewal_keeps_the_traffic_and_the_ledger_catches_up():
    with GatewaySimulation(1, seed=5, valid_for_s=30, renew_lead_s=10, overlap_s=1.0) as sim:
        sim.command(contactor=ON)
        sim.run(15.0)
        flushed = sum(sim.gstats.flushes)
        assert flushed >= 3 and not sim.outbox.pending  # bound, paired, confirmed: in the ledger already
        sim.partition()
        sim.run(12.0)  # past the lead time: the renewal cannot be had
        assert sim.gstats.renewals == 0 and sim.gstats.deferred == {1: sim.certificates[1].metadata.pairing_id}
        assert [EntityEvent.decode(e).kind for e in sim.outbox.pending] == ["renewal_deferred"]
        stats = sim.stats
        assert not stats.rejects and sim.vcu.reported == {1: ON}  # the pairing carried on all along
        sim.heal()
        sim.run(3.0)  # still before the old certificate expires (t = 30)
        assert sim.gstats.renewals == 1 and sim.gstats.expiries == 0
        assert sim.security[1].state is PackState.ACTIVE and not sim.outbox.pending
        kinds = [strict_loads(e) for e in sim.dep.ledger.entries()]
        events = [e["event"] for e in kinds if e["kind"] == "entity_event"]
        assert "renewal_deferred" in events and events.count("pack_state") >= 4
        assert sim.outbox.head.tree_size <= sim.dep.ledger.size
        assert not sim.stats.rejects
