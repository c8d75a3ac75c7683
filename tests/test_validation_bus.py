"""Validation levels 1-7 and escalation as real frames on a python-can bus (transport/validation_bus.py)."""

from __future__ import annotations

import pytest

from modbatt.can.functions import FUNCTIONS, RESYNC_FUNCTIONS
from modbatt.can.ids import SEED_LAYOUT
from modbatt.errors import TransportError
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.link import node_id_of
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.nodes.validation import run_all_levels, run_escalation_scenario
from modbatt.transport.canbus import BusConfig, resolve_bus
from modbatt.transport.validation_bus import ValidationBus


def _paired(seed: int = 7):
    dep = InMemoryDeployment(seed=seed, modules=1)
    pack, module = dep.pack, dep.modules[1]
    record = dep.bind(pack, module).record
    pairing = pair_entities(dep.controller, pack, module, record.binding_id)
    return dep, record.binding_id, pairing.certificate.metadata.pairing_id


def _bus() -> BusConfig:
    """A virtual bus of this test alone (the bus rule, python-can's configuration left out)."""
    return resolve_bus("virtual", ignore_config=True)


def _functions(frames) -> set[str]:
    return {FUNCTIONS[SEED_LAYOUT.decode(m.arbitration_id).function].name for m in frames}


def test_every_level_crosses_the_bus_and_the_wire_count_matches_the_model():
    dep, bid, pid = _paired()
    config = _bus()
    channels = {"pack": dep.pack.channel(pid), "module": dep.modules[1].channel(pid)}
    with ValidationBus(config, node_id_of(dep.modules[1].access_data), channels=channels) as driver:
        levels = run_all_levels(dep.controller, dep.pack, dep.modules[1], bid, pid, bus=driver)
        heard = driver.tap.frames  # type: ignore[union-attr]
    assert {k: v["outcome"] for k, v in levels.items()} == {str(n): "ok" for n in range(1, 8)}
    for level, result in levels.items():
        wire = result["wire"]
        assert wire["frames"] > 0, level
        # Every frame the model counts for the units carried was heard on the wire, and no other.
        assert wire["frames"] == wire["model_frames"], (level, wire)
        assert wire["data_bytes"] == wire["model_data_bytes"], (level, wire)
        assert wire["model_wire_ms"] > 0
    # L1 and L2 are broadcasts, the rest point to point on VALIDATION; every ID decodes.
    assert _functions(heard) == {"ANNOUNCE", "WITNESS", "VALIDATION"}
    assert {u["transport"] for u in levels["1"]["wire"]["units"]} == {"broadcast_fragments"}
    assert {u["transport"] for u in levels["3"]["wire"]["units"]} == {"isotp"}
    # The paired levels went through the channels: both ends counted nothing refused.
    assert not channels["pack"].counters() and not channels["module"].counters()


def test_in_process_results_are_unchanged_by_the_bus_apart_from_the_wire_figures():
    dep, bid, pid = _paired()
    on_bus = run_all_levels(dep.controller, dep.pack, dep.modules[1], bid, pid, bus=_bus())
    dep2, bid2, pid2 = _paired()
    in_process = run_all_levels(dep2.controller, dep2.pack, dep2.modules[1], bid2, pid2)
    assert "wire" not in in_process["3"]
    for level in in_process:
        assert {k: v for k, v in on_bus[level].items() if k != "wire"}.keys() == in_process[level].keys()
        assert on_bus[level]["bytes"] == in_process[level]["bytes"]


def test_a_restarted_module_is_resynchronised_over_the_bus_before_the_paired_levels():
    dep, bid, pid = _paired()
    dep.pack.channel(pid), dep.modules[1].channel(pid)  # the session was opened before the restart
    module = dep.restart(dep.modules[1])
    assert not module.channel(pid).synced  # a restart queues a resync challenge, windows unsynced
    config = _bus()
    channels = {"pack": dep.pack.channel(pid), "module": module.channel(pid)}
    with ValidationBus(config, node_id_of(module.access_data), channels=channels) as driver:
        levels = run_all_levels(dep.controller, dep.pack, module, bid, pid, bus=driver)
        heard = driver.tap.frames  # type: ignore[union-attr]
    assert levels["4"]["outcome"] == "ok" and levels["5"]["outcome"] == "ok"
    assert channels["module"].synced and channels["pack"].synced
    control = [m for m in heard if SEED_LAYOUT.decode(m.arbitration_id).function in RESYNC_FUNCTIONS]
    assert {FUNCTIONS[SEED_LAYOUT.decode(m.arbitration_id).function].name for m in control} >= {
        "RESYNC_RESTART", "RESYNC_ANSWER"
    }


def test_a_bus_that_loses_frames_fails_loudly_naming_the_level():
    dep, bid, pid = _paired()
    config = BusConfig(interface="virtual", channel="modbatt-test-lossy-validation", faults="loss=0.5,seed=3")
    channels = {"pack": dep.pack.channel(pid), "module": dep.modules[1].channel(pid)}
    node = node_id_of(dep.modules[1].access_data)
    with (
        ValidationBus(config, node, channels=channels, timeout=0.5) as driver,
        pytest.raises(TransportError, match=r"level \d.*(lost|could not)"),
    ):
        run_all_levels(dep.controller, dep.pack, dep.modules[1], bid, pid, bus=driver)


def test_escalation_runs_on_the_bus_with_the_same_events():
    dep, bid, pid = _paired()
    events_log = []

    class Log:
        def log(self, kind, **fields):
            events_log.append((kind, fields))

    on_bus = run_escalation_scenario(dep.controller, dep.pack, dep.modules[1], bid, pid, bus=_bus(),
                                     events=Log())  # type: ignore[arg-type]
    dep2, bid2, pid2 = _paired()
    in_process = run_escalation_scenario(dep2.controller, dep2.pack, dep2.modules[1], bid2, pid2)
    assert [e["event"] for e in on_bus] == [e["event"] for e in in_process]
    assert [e.get("rejection") for e in on_bus] == [e.get("rejection") for e in in_process]
    (wire,) = [f for kind, f in events_log if kind == "escalation_wire"]
    assert wire["frames"] == wire["model_frames"] > 0
    kinds = {u["transport"] for u in wire["units"]}
    assert {"broadcast_fragments", "isotp"} <= kinds


def test_the_driver_refuses_what_it_cannot_carry():
    with ValidationBus(_bus(), 1) as driver:
        with pytest.raises(Exception, match="VALIDATION is not broadcast"):
            driver.carry("pack", "module", b"x", via="broadcast:VALIDATION")
        with pytest.raises(Exception, match="cannot carry"):
            driver.carry("pack", "pack", b"x", via="isotp")
        with pytest.raises(Exception, match="channels"):
            driver.carry("pack", "module", b"x", via="channel")
