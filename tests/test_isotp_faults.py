"""Binding and pairing over ISO-TP through the fault bus (docs/delivery.md §3), on the path the
notebooks take (:class:`~modbatt.workbench.onbus.DeploymentOnBus`, ``deployment.bind``,
``on_bus.pair``): under 10 % loss and under a bus-off in the middle of a transfer each transaction
completes or fails with ``Reason.TIMEOUT``, the controller records nothing of a failed one, and a
retry succeeds once the bus is back."""

from __future__ import annotations

import logging
import time

import can
import pytest

from modbatt.errors import Reason, TransportError
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.transport.canbus import BusConfig, open_bus
from modbatt.transport.faultbus import FaultBus
from modbatt.transport.isotp_link import IsoTpLink
from modbatt.workbench.onbus import DeploymentOnBus

LOSSY = "loss=0.1,dup=0.02,reorder=0.02,corrupt=0.01,seed={seed}"


@pytest.fixture(autouse=True)
def _quiet_isotp() -> None:
    logging.getLogger("isotp").setLevel(logging.ERROR)  # framing faults are counted, not logged


def _wait_until_back(bus: can.BusABC) -> None:
    deadline = time.monotonic() + 10.0
    while bus.state is can.BusState.ERROR and time.monotonic() < deadline:
        time.sleep(0.05)


def _entity_bindings(deployment: InMemoryDeployment) -> dict[str, set[str]]:
    nodes = (deployment.pack, deployment.modules[1])
    return {n.access_data.device_id: set(n.machine.bindings) for n in nodes}


def _retry_binds(deployment: InMemoryDeployment) -> None:
    """Nothing was recorded of the failed binding; the retry binds, recorded alone, held by both.

    Keys of the aborted binding that its abort could not reach are the entity's to drop when new
    keys with the same partner arrive (docs/binding.md)."""
    assert deployment.controller.binding_ids() == [] and deployment.ledger.size == 0
    deployment.clock.advance(2.0)  # the retry comes later than the attempt it supersedes
    live = deployment.bind(deployment.pack, deployment.modules[1]).record.binding_id
    assert deployment.controller.binding_ids() == [live] and deployment.ledger.size == 1
    assert all(held == {live} for held in _entity_bindings(deployment).values())  # aborted keys dropped


def _bind_or_timeout(deployment: InMemoryDeployment) -> str | None:
    """The binding id, or None after a failure, which must be a classified timeout."""
    try:
        return deployment.bind(deployment.pack, deployment.modules[1]).record.binding_id
    except TransportError as exc:
        assert exc.reason is Reason.TIMEOUT, exc
        return None


@pytest.mark.parametrize("seed", [3, 8])
def test_binding_at_ten_percent_loss_completes_or_times_out_and_a_retry_binds(seed: int) -> None:
    dep = InMemoryDeployment(seed=7, modules=1)
    config = BusConfig(interface="virtual", channel=f"isotp-loss-{seed}", faults=LOSSY.format(seed=seed))
    with DeploymentOnBus(dep, config, timeout=0.5) as on_bus:
        first = _bind_or_timeout(dep)
        pack, module = dep.pack.access_data.device_id, dep.modules[1].access_data.device_id
        assert dep.controller.binding_of(pack, module) == first  # recorded only if it completed
        assert sum(b.counters["rx_lost"] for b in on_bus.fault_buses()) > 0  # the loss was real
        if first is None:
            on_bus.set_faults(None)  # the bus recovers
            _retry_binds(dep)


def test_a_bus_off_in_the_middle_of_a_binding_fails_it_cleanly_and_the_retry_binds() -> None:
    dep = InMemoryDeployment(seed=7, modules=1)
    config = BusConfig(interface="virtual", channel="isotp-busoff-bind", faults="seed=1")
    with DeploymentOnBus(dep, config, timeout=0.5) as on_bus:
        # The gateway goes dark at its 120th frame: inside the first distribute-key request
        # (~150 classic frames), after both entities generated and stored their keys.
        on_bus.gateway_bus.set_spec("busoff_after=120,busoff_s=1.5")
        with pytest.raises(TransportError) as caught:
            dep.bind(dep.pack, dep.modules[1])
        assert caught.value.reason is Reason.TIMEOUT
        assert on_bus.gateway_bus.counters["bus_off_episodes"] == 1
        assert all(_entity_bindings(dep).values())  # the abort could not reach the entities: they kept keys
        _wait_until_back(on_bus.gateway_bus)
        _retry_binds(dep)


def test_a_bus_off_in_the_middle_of_a_pairing_fails_it_cleanly_and_the_retry_pairs() -> None:
    dep = InMemoryDeployment(seed=7, modules=1)
    config = BusConfig(interface="virtual", channel="isotp-busoff-pair", faults="seed=1")
    with DeploymentOnBus(dep, config, timeout=0.5) as on_bus:
        binding = dep.bind(dep.pack, dep.modules[1]).record.binding_id
        on_bus.gateway_bus.set_spec("busoff_after=20,busoff_s=1.5")  # inside the certificate to the first entity
        with pytest.raises(TransportError) as caught:
            on_bus.pair(binding)
        assert caught.value.reason is Reason.TIMEOUT
        (issued,) = dep.controller.pairing_ids()
        assert dep.controller.pending_pairing(issued).sessions == ()  # nothing completed, nothing recorded
        _wait_until_back(on_bus.gateway_bus)
        outcome = on_bus.pair(binding)
        pid = outcome.certificate.metadata.pairing_id
        assert len(dep.controller.pending_pairing(pid).sessions) == 1
        for node in (dep.pack, dep.modules[1]):
            assert node.pairing_secrets(pid) is not None  # both ends hold the session: the channel opens
        dep.ledger.verify()


def test_a_link_survives_a_frame_the_bus_refuses() -> None:
    # can-isotp sends from its own thread; a bus that refuses a frame (bus-off) must fail that one
    # transfer with a classified error, not end the thread and every later transfer with it.
    config = BusConfig(interface="virtual", channel="isotp-refused", faults="seed=1")
    tx_bus, rx_bus = open_bus(config), open_bus(config)
    assert isinstance(tx_bus, FaultBus)
    try:
        with IsoTpLink(tx_bus, 0x700, 0x701) as tx, IsoTpLink(rx_bus, 0x701, 0x700) as rx:
            tx_bus.enter_bus_off(0.5)
            with pytest.raises(TransportError) as caught:
                tx.send(bytes(100), timeout=2.0)
            assert caught.value.reason is Reason.TIMEOUT and "refused" in str(caught.value)
            assert tx.refused >= 1
            _wait_until_back(tx_bus)
            tx.send(bytes(range(100)), timeout=2.0)
            assert rx.recv(timeout=2.0) == bytes(range(100))
    finally:
        tx_bus.shutdown()
        rx_bus.shutdown()
