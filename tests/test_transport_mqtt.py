"""The binding API over MQTT v5 through a real mosquitto: end to end, drops, bad and hostile input."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest_mqtt import mosquitto  # noqa: F401  (the broker fixture)
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from modbatt.crypto.suite import PrivateKey
from modbatt.errors import Reason, TransportError
from modbatt.model.access import AccessData, TransportProtocol
from modbatt.protocol.messages import ControllerRequest
from modbatt.transport.http import RemoteRejection
from modbatt.transport.mosquitto import MosquittoBroker, free_port
from modbatt.transport.mqtt import OP_PROPERTY, STATUS_PROPERTY, MqttEntityClient, MqttEntityServer, mqtt_endpoint
from modbatt.workbench.mixed import MixedBench

SENSOR = "sensor-01"


@pytest.fixture
def bench(mosquitto: MosquittoBroker) -> Iterator[MixedBench]:  # noqa: F811
    with MixedBench(("mqtt",), mqtt_broker=mosquitto.address, seed=11, timeout=2.0, retries=2) as b:
        yield b


def _swap_client(bench: MixedBench, **kwargs: Any) -> MqttEntityClient:
    """Route MQTT through a client with test timeouts (closed with the bench)."""
    assert bench.broker is not None
    client = MqttEntityClient(*bench.broker, **kwargs)
    bench._stack.callback(client.close)
    bench.router.routes[TransportProtocol.MQTT] = client
    bench.mqtt_client = client
    return client


def _reserve(bench: MixedBench, node: Any) -> MqttEntityServer:
    """Serve ``node`` (maybe a wrapper) on the sensor's topic in place of the bench's server."""
    sensor = bench.entities[SENSOR]
    sensor.server.stop()
    assert bench.broker is not None
    server = MqttEntityServer(node, *bench.broker)
    bench._stack.callback(server.stop)
    sensor.server = server
    return server.start()


class _Wrapped:
    """An entity node with a hook run before the first ``handle`` (in the server's worker thread)."""

    def __init__(self, node: Any, hook: Any) -> None:
        self._node, self._hook, self.calls = node, hook, 0

    @property
    def access_data(self) -> AccessData:
        return self._node.access_data

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        if self.calls == 1:
            self._hook()
        return self._node.handle(op, payload)


class _RawPeer:
    """A bare paho client: publishes arbitrary requests and collects answers on its reply topic."""

    def __init__(self, broker: tuple[str, int], reply: str = "modbatt/reply/raw-test") -> None:
        self.reply = reply
        self.answers: list[tuple[int, bytes, bytes]] = []  # (status, correlation, payload)
        self._got = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-test", protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.connect(*broker)
        self.client.loop_start()
        self.client.subscribe(reply, qos=1)[1]
        time.sleep(0.2)  # SUBACK (bounded; the broker is local)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        status = dict(getattr(msg.properties, "UserProperty", []) or []).get(STATUS_PROPERTY, "-1")
        with self._got:
            self.answers.append((int(status), bytes(msg.properties.CorrelationData or b""), bytes(msg.payload)))
            self._got.notify_all()

    def send(
        self,
        topic: str,
        payload: bytes,
        *,
        op: str | None = "generate-keys",
        correlation: bytes | None = None,
        reply: str | None = None,
    ) -> bytes:
        props = Properties(PacketTypes.PUBLISH)
        correlation = correlation if correlation is not None else os.urandom(8)
        if reply != "":
            props.ResponseTopic = reply or self.reply
            props.CorrelationData = correlation
        if op is not None:
            props.UserProperty = [(OP_PROPERTY, op)]
        self.client.publish(topic, payload, qos=1, properties=props).wait_for_publish(2)
        return correlation

    def wait(self, count: int, timeout: float = 3.0) -> list[tuple[int, bytes, bytes]]:
        with self._got:
            self._got.wait_for(lambda: len(self.answers) >= count, timeout)
            return list(self.answers)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _topic(bench: MixedBench) -> str:
    return mqtt_endpoint(bench.entities[SENSOR].access_data.endpoint)[2]


# -- end to end ---------------------------------------------------------------------------------


def test_bind_and_pair_over_mqtt(bench: MixedBench) -> None:
    sensor = bench.entities[SENSOR]
    outcome = bench.bind(sensor)
    bench.pair(sensor)
    assert sensor.node.binding(outcome.record.binding_id) is not None
    assert bench.pack.binding(outcome.record.binding_id) is not None
    assert bench.router.calls["MQTT"] == 4  # generate-keys, distribute-key, pairing-accept, pairing-offer
    assert bench.mqtt_client.counters["answers"] == 4 and bench.mqtt_client.counters["retries"] == 0
    assert sensor.server.counters["handled"] == 4 and not sensor.server.rejections


def test_mqtt_endpoint_parsing() -> None:
    assert mqtt_endpoint("mqtt://broker.local/modbatt/entity/x") == ("broker.local", 1883, "modbatt/entity/x")
    assert mqtt_endpoint("mqtt://10.0.0.2:1884/a") == ("10.0.0.2", 1884, "a")
    client = MqttEntityClient("127.0.0.1", free_port())
    with pytest.raises(TransportError, match="names broker"):
        client.call("mqtt://elsewhere:1883/t", "revoke", {})
    with pytest.raises(TransportError, match="not an mqtt"):
        client.call("mqtt://h/a/#", "revoke", {})
    client.close()


# -- unreachable ---------------------------------------------------------------------------------


def test_nobody_on_the_topic_is_a_clear_error_and_records_nothing(bench: MixedBench) -> None:
    sensor = bench.entities[SENSOR]
    sensor.server.stop()  # the sensor is gone: its topic has no subscriber
    client = _swap_client(bench, timeout=1.0, retries=1, retry_delay=0.05)
    started = time.monotonic()
    with pytest.raises(TransportError, match="no entity subscribes"):
        bench.bind(sensor)
    assert time.monotonic() - started < 2.0  # PUBACK "no matching subscribers": no timeout needed
    assert client.counters["no_subscribers"] == 4  # generate-keys, then the abort's revoke: 2 attempts each
    assert bench.ledger.size == 0 and not sensor.bound
    assert bench.pack.machine.bindings == {}  # the pack's fresh key was aborted (revoke over HTTP)


def test_broker_unreachable_is_a_clear_error() -> None:
    client = MqttEntityClient("127.0.0.1", free_port(), connect_timeout=0.3, retries=1, retry_delay=0.05)
    with pytest.raises(TransportError, match=r"broker 127\.0\.0\.1:\d+ is unreachable"):
        client.call(f"mqtt://127.0.0.1:{client.broker[1]}/t", "revoke", {"x": 1})
    client.close()


# -- a broker that drops --------------------------------------------------------------------------


def test_broker_restart_mid_request_is_retried_without_double_processing(
    bench: MixedBench,
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    sensor = bench.entities[SENSOR]
    wrapped = _Wrapped(sensor.node, lambda: mosquitto.restart(down_for=0.3))
    server = _reserve(bench, wrapped)
    client = _swap_client(bench, timeout=1.5, retries=4, connect_timeout=3.0, retry_delay=0.1)
    outcome = bench.bind(sensor)
    assert bench.ledger.size == 1
    assert sensor.node.binding(outcome.record.binding_id) is not None
    assert client.counters["drops"] >= 1 and client.counters["retries"] >= 1
    # The repeat was either answered from the cache or its answer was the first's: never run twice.
    assert server.counters["handled"] == 2
    assert not sensor.node.rejections


def test_broker_gone_mid_request_is_a_clear_error_and_nothing_half_recorded(
    bench: MixedBench,
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    sensor = bench.entities[SENSOR]
    _reserve(bench, _Wrapped(sensor.node, mosquitto.stop))
    _swap_client(bench, timeout=1.0, retries=1, connect_timeout=0.5, retry_delay=0.05)
    with pytest.raises(TransportError, match="cannot reach mqtt://"):
        bench.bind(sensor)
    assert bench.ledger.size == 0
    assert bench.controller.records.names() == []  # no binding record, not even a partial one
    assert bench.pack.machine.bindings == {}  # the pack got its revoke over HTTP


# -- bad and hostile input -------------------------------------------------------------------------


def test_malformed_messages_get_classified_rejections_or_are_dropped(bench: MixedBench) -> None:
    assert bench.broker is not None
    server = bench.entities[SENSOR].server
    topic = _topic(bench)
    peer = _RawPeer(bench.broker)
    try:
        # The two dropped ones first: they get no answer to wait for, but the broker delivers one
        # publisher's messages in order, so they are handled before the answered ones below.
        peer.send(topic, b"{}", reply="")  # nowhere to answer: dropped
        peer.send(topic, b"{}", reply="elsewhere/victim")  # would reflect: dropped
        c1 = peer.send(topic, b"\xff not json")
        c2 = peer.send(topic, b'{"a": 1, "a": 2}')
        c3 = peer.send(topic, b"{}", op=None)
        c4 = peer.send(topic, b"{}")
        c5 = peer.send(topic, b"x" * (17 * 1024))
        c6 = peer.send(topic, b"{}", op="no-such-op")
        answers = {corr: (status, json.loads(body)) for status, corr, body in peer.wait(6)}
    finally:
        peer.close()
    assert answers[c1] == (400, answers[c1][1]) and answers[c1][1]["error"] == "malformed"
    assert answers[c2][0] == 400 and "duplicate" in answers[c2][1]["detail"]
    assert answers[c3][0] == 400 and OP_PROPERTY in answers[c3][1]["detail"]
    assert answers[c4][0] == 400 and answers[c4][1]["error"] == "malformed"  # judged by the entity node
    assert answers[c5] == (413, {"error": "oversized", "detail": "request exceeds 16384 bytes"})
    assert answers[c6][0] == 404
    assert server.counters["no_response_topic"] == 1 and server.counters["bad_response_topic"] == 1
    assert server.rejections[Reason.MALFORMED] == 4 and server.rejections[Reason.OVERSIZED] == 1
    assert server.counters["errors"] == 0
    # The server survived all of it.
    bench.bind(bench.entities[SENSOR])
    assert bench.ledger.size == 1


def test_forged_requests_are_rejected_and_change_nothing(bench: MixedBench) -> None:
    sensor = bench.entities[SENSOR]
    rogue = PrivateKey.generate()
    forged = ControllerRequest(
        "generate-keys",
        str(uuid.uuid4()),
        os.urandom(16),
        int(time.time() * 1000),
        SENSOR,
        {"partner_access_data": bench.pack.access_data},
    ).sign(rogue)
    with pytest.raises(RemoteRejection) as info:
        bench.mqtt_client.call(sensor.access_data.endpoint, "generate-keys", forged.to_json())
    assert info.value.reason is Reason.UNAUTHORIZED
    # A genuine request with one field changed after signing: the signature no longer covers it.
    genuine = forged.sign(bench.controller_key)
    tampered = genuine.to_json() | {"target": SENSOR, "issued_at": genuine.issued_at_ms + 1}
    with pytest.raises(RemoteRejection) as info:
        bench.mqtt_client.call(sensor.access_data.endpoint, "generate-keys", tampered)
    assert info.value.reason is Reason.UNAUTHORIZED
    assert sensor.node.machine.bindings == {}
    assert sensor.server.rejections[Reason.UNAUTHORIZED] == 2


def test_answers_on_a_wrong_correlation_id_are_ignored_and_counted(bench: MixedBench) -> None:
    assert bench.broker is not None
    sensor = bench.entities[SENSOR]
    client = bench.mqtt_client
    rogue = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="rogue", protocol=mqtt.MQTTv5)
    rogue.connect(*bench.broker)
    rogue.loop_start()

    def inject() -> None:
        # While the real request waits: a forged "answer" with another correlation id, and one without any.
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = os.urandom(16)
        props.UserProperty = [(STATUS_PROPERTY, "200")]
        rogue.publish(client.reply_topic, b'{"forged": true}', qos=1, properties=props).wait_for_publish(2)
        bare = Properties(PacketTypes.PUBLISH)
        bare.UserProperty = [(STATUS_PROPERTY, "403")]
        rogue.publish(client.reply_topic, b'{"error": "bad_signature"}', qos=1, properties=bare).wait_for_publish(2)
        deadline = time.monotonic() + 2
        while client.counters["unknown_correlation"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

    _reserve(bench, _Wrapped(sensor.node, inject))
    try:
        outcome = bench.bind(sensor)
    finally:
        rogue.disconnect()
        rogue.loop_stop()
    assert bench.ledger.size == 1 and sensor.node.binding(outcome.record.binding_id) is not None
    assert client.counters["unknown_correlation"] == 2
    assert client.counters["answers"] == 2


def test_duplicate_delivery_is_answered_from_the_cache(bench: MixedBench) -> None:
    assert bench.broker is not None
    sensor = bench.entities[SENSOR]
    request = ControllerRequest(
        "generate-keys",
        str(uuid.uuid4()),
        os.urandom(16),
        int(time.time() * 1000),
        SENSOR,
        {"partner_access_data": bench.pack.access_data},
    ).sign(bench.controller_key)
    body = json.dumps(request.to_json()).encode()
    peer = _RawPeer(bench.broker)
    try:
        corr = peer.send(_topic(bench), body)
        peer.wait(1)
        peer.send(_topic(bench), body, correlation=corr)  # QoS 1 may deliver twice; a retry looks the same
        answers = peer.wait(2)
        peer.send(_topic(bench), body)  # same request, new correlation: reaches the entity, which refuses
        third = peer.wait(3)[2]
    finally:
        peer.close()
    assert answers[0] == answers[1] and answers[0][0] == 200
    assert sensor.server.counters["cached_answers"] == 1
    assert third[0] == 409 and json.loads(third[2])["error"] == "replay"
    assert len(sensor.node.machine.bindings) == 1


def test_a_failing_message_handler_is_counted_and_paho_keeps_delivering(bench: MixedBench) -> None:
    """Whatever a handler raises is one dropped message: paho's network thread must not end with it."""
    assert bench.broker is not None
    server = bench.entities[SENSOR].server
    real_put = server._queue.put_nowait
    failures = iter([RuntimeError("handler bug")])

    def put_once_failing(job: Any) -> None:
        err = next(failures, None)
        if err is not None:
            raise err
        real_put(job)

    server._queue.put_nowait = put_once_failing  # type: ignore[method-assign]
    peer = _RawPeer(bench.broker)
    try:
        peer.send(_topic(bench), b"{}")  # its handler fails: dropped and counted
        deadline = time.monotonic() + 3
        while server.counters["errors"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        peer.close()
    assert server.counters["errors"] == 1
    bench.bind(bench.entities[SENSOR])  # the next genuine request is still received and served
    assert bench.ledger.size == 1
