"""One controller, any protocol: a module on CAN, a gateway on HTTP, a sensor on MQTT, all for real."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from conftest_mqtt import mosquitto  # noqa: F401  (the broker fixture)

from modbatt.crypto.suite import PrivateKey
from modbatt.errors import ConfigError, Reason, TransportError, VerificationError
from modbatt.model.access import TransportProtocol
from modbatt.nodes.discovery import probe_http_entity
from modbatt.nodes.validation import Discovery
from modbatt.protocol.validation.announce import Announcer
from modbatt.transport.announce import post_announce
from modbatt.transport.mosquitto import MosquittoBroker
from modbatt.transport.routing import RoutingEntityClient, protocol_of
from modbatt.workbench.mixed import MixedBench, parse_broker, run_mixed_demo


def test_run_mixed_demo_binds_pairs_and_discovers_one_entity_per_transport(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    before = set(threading.enumerate())
    result = run_mixed_demo(("can", "http", "mqtt"), mosquitto.address, seed=31)
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []  # clean shutdown
    entities = {e["transport"]: e for e in result["entities"]}
    assert set(entities) == {"can", "http", "mqtt"}
    for transport, entity in entities.items():
        assert entity["bound"] and entity["paired"] and entity["discovered"], (transport, entity)
        assert entity["error"] is None
    assert {d["via"] for d in result["discovered"]} == {"CAN", "HTTP", "MQTT"}
    # generate-keys and distribute-key (binding), pairing-accept and pairing-offer (pairing, entity b)
    assert result["calls"]["CAN"] == 4 and result["calls"]["MQTT"] == 4
    assert result["mqtt_broker"] == f"{mosquitto.host}:{mosquitto.port}" and not result["mqtt_broker_started"]
    assert result["ledger_size"] == 9  # per entity: binding, pairing issued, pairing completed
    assert result["transport_counters"]["mqtt"].get("unknown_correlation", 0) == 0


def test_discovery_reaches_moved_entities_through_their_announced_protocol(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    with MixedBench(mqtt_broker=mosquitto.address, seed=32, timeout=6.0, retries=0) as bench:
        bench.run()
        old = {name: e.access_data.endpoint for name, e in bench.entities.items()}
        moved = [bench.move(entity) for entity in list(bench.entities.values())]
        for entity in moved:
            bench.announce(entity)
        # The directory already knows these devices from the first run: wait for the NEW announces
        # (their moved endpoints), not merely for the ids to be present.
        deadline = time.monotonic() + 10.0
        while any(
            (d := bench.directory.entities.get(e.access_data.device_id)) is None
            or d.access_data.endpoint != e.access_data.endpoint
            for e in moved
        ):
            assert time.monotonic() < deadline, "moved entities were not rediscovered"
            time.sleep(0.01)
        for entity in moved:
            found = bench.directory.entities[entity.access_data.device_id]
            assert found.access_data.endpoint == entity.access_data.endpoint != old[entity.name]
            assert found.via is entity.access_data.protocol  # each announced on its own transport
        # The binding records still name the old endpoints; the directory reroutes every revoke.
        for entity in moved:
            assert entity.binding_id is not None
            _, _, unreached = bench.controller.revoke(entity.binding_id)
            assert unreached == []
            assert entity.node.binding(entity.binding_id) is None  # the moved entity destroyed its key
        assert bench.router.calls["rerouted"] == 3
        assert not bench.directory.rejections


def test_validation_discovery_proves_liveness_over_each_transport(
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    """``modbatt.nodes.validation.Discovery`` (announce + level-7 challenge) over CAN, HTTP and MQTT."""
    with MixedBench(mqtt_broker=mosquitto.address, seed=36, timeout=6.0, retries=0) as bench:
        for entity in bench.entities.values():
            bench.bind(entity)
        discovery = Discovery(bench.controller, bench.router.routes)
        moved = [bench.move(entity) for entity in list(bench.entities.values())]
        found = {e.transport: discovery.on_announce(bench.announce(e), time.time()) for e in moved}
        assert {t: (d.reached_via, d.moved) for t, d in found.items()} == {
            "can": ("CAN", True),
            "http": ("HTTP", True),
            "mqtt": ("MQTT", True),
        }
        assert not discovery.rejections
        assert bench.can_client.counters["answers"] == 3  # generate-keys, distribute-key, validate


def test_forged_replayed_and_unbound_announces_are_refused() -> None:
    with MixedBench(("can", "http"), seed=33, timeout=2.0, retries=0) as bench:
        gateway, module = bench.entities["gateway-01"], bench.entities["module-01"]
        bench.bind(gateway)
        bench.bind(module)
        assert gateway.binding_id is not None and module.binding_id is not None
        state = gateway.node.binding(gateway.binding_id)
        assert state is not None
        genuine = Announcer(
            binding_id=gateway.binding_id, access_data=gateway.access_data, binding_key=state.private_key
        )
        data = genuine.announce(time.time())
        post_announce(bench.announce_server.url, data)
        with pytest.raises(VerificationError) as info:
            post_announce(bench.announce_server.url, data)  # the same bytes again
        assert info.value.reason is Reason.REPLAY
        rogue = Announcer(
            binding_id=gateway.binding_id, access_data=gateway.access_data, binding_key=PrivateKey.generate()
        )
        with pytest.raises(VerificationError) as info:
            post_announce(bench.announce_server.url, rogue.announce(time.time()))
        assert info.value.reason is Reason.UNKNOWN_BINDING
        with pytest.raises(VerificationError) as info:
            post_announce(bench.announce_server.url, b"\x00 not cbor")
        assert info.value.reason is Reason.MALFORMED
        # Over CAN: a replayed broadcast is refused by the same machine and counted.
        bench.announce(module)
        assert bench.directory.wait_for(["module-01"], timeout=2.0)
        mstate = module.node.binding(module.binding_id)
        assert mstate is not None
        replay = Announcer(binding_id=module.binding_id, access_data=module.access_data, binding_key=mstate.private_key)
        bench.can_sender(0x01).send(replay.announce(time.time()))  # a fresh transfer carrying seq 0 again
        deadline = time.monotonic() + 2.0
        while bench.can_listener.counters["refused"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bench.can_listener.counters == {"accepted": 1, "refused": 1}
        assert bench.directory.rejections[Reason.REPLAY] == 2
        assert set(bench.directory.entities) == {"gateway-01", "module-01"}


def test_unreachable_http_entity_records_nothing_and_aborts_the_pack_key() -> None:
    with MixedBench(("http",), seed=34, timeout=1.0, retries=0) as bench:
        ghost = bench.add_entity("http", "gateway-09")
        ghost.server.stop()
        with pytest.raises(TransportError, match=r"cannot reach http://127\.0\.0\.1"):
            bench.bind(ghost)
        assert bench.ledger.size == 0 and bench.controller.records.names() == []
        assert bench.pack.machine.bindings == {}
        # The rest of the set is unaffected.
        bench.bind(bench.entities["gateway-01"])
        assert bench.ledger.size == 1


def test_http_probe_gives_claimed_access_data_of_an_unbound_entity() -> None:
    with MixedBench(("http",), seed=35) as bench:
        gateway = bench.entities["gateway-01"]
        access, key_id = probe_http_entity(gateway.access_data.endpoint)
        assert access == gateway.access_data and key_id == gateway.node.identity_key.key_id().hex()
        gateway.server.stop()
        with pytest.raises(TransportError, match="cannot probe"):
            probe_http_entity(gateway.access_data.endpoint, timeout=0.5)


def test_routing_configuration_errors_are_clear() -> None:
    router = RoutingEntityClient({})
    with pytest.raises(TransportError, match="no MQTT transport is configured"):
        router.call("mqtt://h/t", "revoke", {})
    with pytest.raises(TransportError, match="no known transport scheme"):
        router.call("ftp://h/t", "revoke", {})
    assert protocol_of("https://x") is TransportProtocol.HTTP
    with pytest.raises(ConfigError, match="unknown transport 'zigbee'"):
        MixedBench(("can", "zigbee"))
    assert parse_broker("127.0.0.1:1883") == ("127.0.0.1", 1883)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        parse_broker("localhost")


@pytest.fixture
def _no_mosquitto(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MODBATT_MOSQUITTO", "/nonexistent/mosquitto")
    yield


@pytest.mark.usefixtures("_no_mosquitto")
def test_mqtt_without_broker_or_mosquitto_says_how_to_fix_it() -> None:
    with pytest.raises(ConfigError, match="apt-get install mosquitto"):
        run_mixed_demo(("mqtt",))


def test_demo_cli_binds_one_entity_per_transport(mosquitto: MosquittoBroker, capsys) -> None:  # noqa: F811
    """`modbatt demo --transports can,http,mqtt --mqtt-broker HOST:PORT --json` (issue form)."""
    import json

    from modbatt.cli import main

    broker = f"{mosquitto.host}:{mosquitto.port}"
    assert main(["demo", "--transports", "can,http,mqtt", "--mqtt-broker", broker, "--json"]) == 0
    entities = json.loads(capsys.readouterr().out)["entities"]
    assert [(e["transport"], e["bound"]) for e in entities] == [("can", True), ("http", True), ("mqtt", True)]
    assert all({"name", "transport", "bound"} <= set(e) for e in entities)
