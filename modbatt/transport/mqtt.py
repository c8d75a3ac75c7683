"""MQTT transport: the binding API as MQTT v5 request/response over a real broker (paho-mqtt 2.x).

Message mapping (see docs/transports.md):

* **request**: the controller publishes the request JSON (the same body ``POST /api/binding/{op}``
  carries) to the entity's topic from its access data (``mqtt://HOST[:PORT]/TOPIC``), QoS 1, with
  the v5 properties *Response Topic* (the controller's own ``modbatt/reply/<client id>``),
  *Correlation Data* (16 fresh random bytes per call), *User Property* ``modbatt-op = <op>`` (the
  HTTP path segment), *Content Type* ``application/json`` and *Message Expiry Interval* (a request
  nobody picked up in time is dropped by the broker rather than delivered late).
* **answer**: the entity publishes the answer JSON to that response topic, QoS 1, echoing the
  correlation data, with *User Property* ``modbatt-status = <HTTP-style status>``.

Delivery is at least once (QoS 1), so the server keeps a small bounded cache of answers keyed by
(response topic, correlation data, op, request bytes): a duplicate delivery or a client retry of
the same call gets the first answer again instead of a ``replay`` rejection, and nothing is
processed twice. The protocol's own replay protection is untouched: anything not byte-identical
reaches the entity.

This module carries bytes and never judges them: the entity node decides, the controller verifies.
Both ends count what they drop (``counters``; a message whose handler fails counts as ``errors``
and never ends paho's network thread), never crash on input, and run a bounded number of
threads (paho's network thread, plus one worker on the server) that ``close()`` stops.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..encoding import strict_json_loads
from ..errors import ConfigError, EncodingError, Reason, TransportError
from .http import _raise_rejection
from .serving import EntityHandler

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_PORT",
    "MAX_REQUEST_BYTES",
    "OP_PROPERTY",
    "REPLY_PREFIX",
    "STATUS_PROPERTY",
    "MqttEntityClient",
    "MqttEntityServer",
    "guarded",
    "mqtt_endpoint",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 1883
#: Response topics live under this prefix; a server answers nowhere else (no reflection to any topic).
REPLY_PREFIX = "modbatt/reply/"
OP_PROPERTY = "modbatt-op"
STATUS_PROPERTY = "modbatt-status"
CONTENT_TYPE = "application/json"
#: Same cap as the HTTP API (a distribute-key request is about 2 KiB).
MAX_REQUEST_BYTES = 16 * 1024
_CORRELATION_BYTES = 16
_NO_MATCHING_SUBSCRIBERS = 16  # MQTT v5 PUBACK reason code 0x10
_NO_STATUS = -1


def mqtt_endpoint(endpoint: str) -> tuple[str, int, str]:
    """``(host, port, topic)`` of an ``mqtt://HOST[:PORT]/TOPIC`` endpoint (ConfigError otherwise)."""
    parts = urlsplit(endpoint)
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigError(f"{endpoint!r} has an invalid port") from None
    topic = parts.path.lstrip("/")
    # Check the raw text: urlsplit would read a wildcard "#" as a URL fragment and drop it.
    wild = any(c in endpoint for c in "#+?\0")
    if parts.scheme != "mqtt" or not parts.hostname or not topic or wild:
        raise ConfigError(f"{endpoint!r} is not an mqtt://HOST[:PORT]/TOPIC endpoint")
    return parts.hostname, port, topic


def _new_client(client_id: str) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    # Reconnect fast after a broker restart; paho's default starts at 1 s and doubles up to 2 min.
    client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]
    return client


def guarded(handler: Callable[..., None]) -> Callable[..., None]:
    """Wrap a paho message callback of an object with ``counters``: an exception is one dropped
    message, counted as ``errors``, instead of the end of paho's network thread (paho re-raises
    a callback's exception out of its loop unless ``suppress_exceptions`` is set)."""

    @functools.wraps(handler)
    def wrapper(self: Any, *args: Any) -> None:
        try:
            handler(self, *args)
        except Exception:
            self.counters["errors"] += 1
            log.exception("MQTT message dropped: its handler failed")

    return wrapper


def _user_property(props: Properties | None, name: str) -> str | None:
    for key, value in getattr(props, "UserProperty", None) or ():
        if key == name:
            return str(value)
    return None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Controller side
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    """One outstanding call: filled in by paho's thread, read by the caller under the client's lock."""

    mid: int | None = None
    status: int | None = None
    answer: Any = None
    no_subscribers: bool = False
    refused: str = ""


class MqttEntityClient:
    """:class:`~modbatt.transport.http.EntityClient` over MQTT v5 request/response.

    ``timeout`` bounds the wait for an answer per attempt, ``connect_timeout`` the wait for a
    (re)connection per attempt, and ``retries`` the further attempts after a drop, a timeout or an
    empty topic, spaced ``retry_delay`` × 2^n (at most 2 s). Every attempt of one call re-sends the
    same bytes with the same correlation data, so an answer to any of them completes the call and
    the entity's answer cache makes the repeat harmless. Raises :class:`TransportError` when no answer comes, and
    :class:`~modbatt.transport.http.RemoteRejection` for a classified 4xx rejection.
    """

    def __init__(
        self,
        broker_host: str,
        broker_port: int = DEFAULT_PORT,
        *,
        client_id: str | None = None,
        timeout: float = 5.0,
        retries: int = 2,
        connect_timeout: float = 3.0,
        retry_delay: float = 0.2,
        check_broker: bool = True,
    ) -> None:
        if retries < 0 or timeout <= 0 or connect_timeout <= 0 or retry_delay < 0:
            raise ConfigError("timeouts must be positive and retries not negative")
        self.broker = (broker_host, int(broker_port))
        self.client_id = client_id or f"modbatt-ctl-{os.urandom(6).hex()}"
        self.reply_topic = REPLY_PREFIX + self.client_id
        self.timeout = timeout
        self.retries = retries
        self.connect_timeout = connect_timeout
        self.retry_delay = retry_delay
        self.check_broker = check_broker
        #: Transport events: ``unknown_correlation`` (answers ignored), ``malformed_answer``,
        #: ``retries``, ``no_subscribers``, ``drops`` (connection lost), ``answers``.
        self.counters: collections.Counter[str] = collections.Counter()
        self._cond = threading.Condition()
        self._pending: dict[bytes, _Pending] = {}
        # mid -> PUBACK reason code that beat publish() back to the caller
        self._early_acks: collections.OrderedDict[int, int] = collections.OrderedDict()
        self._ready = False  # connected and subscribed to the reply topic
        self._epoch = 0  # bumped on every disconnect, so a waiting call notices a drop
        self._started = False
        self._closed = False
        self._client = _new_client(self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._sub_mid: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> MqttEntityClient:
        """Start paho's network thread and connect in the background (idempotent)."""
        with self._cond:
            if self._closed:
                raise TransportError("this MQTT client is closed")
            if self._started:
                return self
            self._started = True
        self._client.connect_async(*self.broker, keepalive=10)
        self._client.loop_start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """True once connected and subscribed to the reply topic (waits at most ``timeout``)."""
        self.start()
        with self._cond:
            return self._cond.wait_for(lambda: self._ready, self.connect_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Disconnect and stop the network thread; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            started = self._started
            self._cond.notify_all()
        if started:
            self._client.disconnect()
            self._client.loop_stop()

    def __enter__(self) -> MqttEntityClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paho callbacks (network thread) --------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker %s:%s refused the controller: %s", *self.broker, reason)
            return
        # Clean sessions: subscriptions do not survive a reconnect, so subscribe every time.
        result, mid = client.subscribe(self.reply_topic, qos=1)
        with self._cond:
            self._sub_mid = mid if result == mqtt.MQTT_ERR_SUCCESS else None

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, mid: int, codes: list[Any], _props: Any) -> None:
        with self._cond:
            if mid == self._sub_mid and codes and not codes[0].is_failure:
                self._ready = True
                self._cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _ud: Any, _flags: Any, _reason: Any, _props: Any) -> None:
        with self._cond:
            self._ready = False
            self._epoch += 1
            self.counters["drops"] += 1
            self._cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _ud: Any, mid: int, reason: Any, _props: Any) -> None:
        code = int(getattr(reason, "value", 0))
        with self._cond:
            target = next((p for p in self._pending.values() if p.mid == mid), None)
            if target is None:
                # PUBACK can beat publish() returning the mid to the caller: park it, oldest out first
                # (acks of abandoned attempts land here too and must not pin memory).
                self._early_acks[mid] = code
                while len(self._early_acks) > 64:
                    self._early_acks.popitem(last=False)
                return
            self._apply_ack(target, code)
            self._cond.notify_all()

    def _apply_ack(self, pending: _Pending, code: int) -> None:
        if code == _NO_MATCHING_SUBSCRIBERS:
            pending.no_subscribers = True
        elif code >= 0x80:
            pending.refused = f"broker refused the request (reason code {code})"

    @guarded
    def _on_message(self, _c: mqtt.Client, _ud: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        correlation = getattr(props, "CorrelationData", None)
        with self._cond:
            pending = self._pending.get(bytes(correlation)) if correlation else None
            if pending is None or pending.status is not None:
                # Not ours, from an earlier call, or a second copy: ignore and count (never trust it).
                self.counters["unknown_correlation"] += 1
                return
            try:
                status = int(_user_property(props, STATUS_PROPERTY) or _NO_STATUS)
                answer = strict_json_loads(message.payload)
            except (ValueError, EncodingError):
                status = _NO_STATUS
            if not 100 <= status <= 599:
                self.counters["malformed_answer"] += 1
                return
            pending.status, pending.answer = status, answer
            self.counters["answers"] += 1
            self._cond.notify_all()

    # -- EntityClient --------------------------------------------------------------------------

    def call(self, endpoint: str, op: str, payload: dict[str, Any]) -> Any:
        """Send one binding-API request to the entity at ``endpoint`` and return its JSON answer."""
        try:
            host, port, topic = mqtt_endpoint(endpoint)
        except ConfigError as exc:
            raise TransportError(str(exc)) from None
        if self.check_broker and (host, port) != self.broker:
            raise TransportError(
                f"{endpoint} names broker {host}:{port}, but this client talks to {self.broker[0]}:{self.broker[1]}"
            )
        data = _dumps(payload)
        if len(data) > MAX_REQUEST_BYTES:
            raise TransportError(f"request of {len(data)} bytes exceeds the {MAX_REQUEST_BYTES}-byte MQTT limit")
        self.start()
        correlation = os.urandom(_CORRELATION_BYTES)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = correlation
        props.UserProperty = [(OP_PROPERTY, op)]
        props.ContentType = CONTENT_TYPE
        props.MessageExpiryInterval = max(1, math.ceil(self.timeout))
        pending = _Pending()
        with self._cond:
            self._pending[correlation] = pending
        try:
            return self._attempts(endpoint, topic, data, props, pending)
        finally:
            with self._cond:
                self._pending.pop(correlation, None)

    def _attempts(self, endpoint: str, topic: str, data: bytes, props: Properties, pending: _Pending) -> Any:
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                self.counters["retries"] += 1
                # Back off exponentially (capped): after a broker restart the entity may resubscribe
                # a little later than we do, and its topic then briefly has no subscriber.
                time.sleep(min(self.retry_delay * 2 ** (attempt - 1), 2.0))
            with self._cond:
                if self._closed:
                    raise TransportError("this MQTT client is closed")
                ready = self._cond.wait_for(
                    lambda: self._ready or self._closed or pending.status is not None, self.connect_timeout
                )
                if pending.status is not None:  # an earlier attempt's answer came in meanwhile
                    return self._result(endpoint, pending)
                if not ready or self._closed:
                    last = f"MQTT broker {self.broker[0]}:{self.broker[1]} is unreachable"
                    continue
                epoch = self._epoch
                pending.no_subscribers, pending.refused, pending.mid = False, "", None
            info = self._client.publish(topic, data, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                last = f"publish failed ({mqtt.error_string(info.rc)})"
                continue
            deadline = time.monotonic() + self.timeout
            with self._cond:
                pending.mid = info.mid
                early = self._early_acks.pop(info.mid, None)
                if early is not None:
                    self._apply_ack(pending, early)

                def settled(epoch: int = epoch) -> bool:
                    return (
                        pending.status is not None
                        or pending.no_subscribers
                        or bool(pending.refused)
                        or self._epoch != epoch
                        or self._closed
                    )

                self._cond.wait_for(settled, max(0.0, deadline - time.monotonic()))
                if pending.status is not None:
                    return self._result(endpoint, pending)
                if pending.no_subscribers:
                    self.counters["no_subscribers"] += 1
                    last = f"no entity subscribes to topic {topic!r}"
                elif pending.refused:
                    last = pending.refused
                elif self._epoch != epoch:
                    last = "the broker connection dropped during the request"
                else:
                    last = f"no answer within {self.timeout:g} s"
        raise TransportError(f"cannot reach {endpoint}: {last} (after {self.retries + 1} attempts)")

    @staticmethod
    def _result(endpoint: str, pending: _Pending) -> Any:
        assert pending.status is not None
        if pending.status >= 500:
            raise TransportError(f"{endpoint} is unavailable (status {pending.status})")
        if pending.status != 200:
            _raise_rejection(pending.status, pending.answer)
        return pending.answer


# ---------------------------------------------------------------------------------------------
# Entity side
# ---------------------------------------------------------------------------------------------


def _rejection(reason: Reason, detail: str) -> dict[str, Any]:
    return {"error": reason.value, "detail": detail}


@dataclass(slots=True)
class _Job:
    response_topic: str
    correlation: bytes
    op: str | None
    payload: bytes
    key: bytes = field(default=b"")


class MqttEntityServer:
    """Serves one entity's binding API on its MQTT topic, answering through ``node.handle``.

    A message without response topic or correlation data is dropped and counted (there is nowhere
    to answer); a response topic outside :data:`REPLY_PREFIX` likewise (the entity must not be
    turned into a publisher to arbitrary topics). Everything else gets an answer: malformed,
    oversized or forged requests a classified rejection, from the node or from here when the bytes
    never parse. Requests wait in a bounded queue for one worker thread; an overflow is answered
    ``rate_limited``.
    """

    def __init__(
        self,
        node: EntityHandler,
        broker_host: str,
        broker_port: int = DEFAULT_PORT,
        *,
        topic: str | None = None,
        client_id: str | None = None,
        queue_size: int = 16,
        cache_size: int = 64,
        cache_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.broker = (broker_host, int(broker_port))
        self.topic = topic or mqtt_endpoint(node.access_data.endpoint)[2]
        self.client_id = client_id or f"modbatt-ent-{node.access_data.device_id}-{os.urandom(3).hex()}"
        #: Transport events: ``handled``, ``no_response_topic``, ``bad_response_topic``, ``cached_answers``,
        #: ``overloaded``, ``drops``, ``errors``.
        self.counters: collections.Counter[str] = collections.Counter()
        #: Classified rejections answered (from the node or for bytes that never parsed), by reason.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._cache: collections.OrderedDict[bytes, tuple[float, int, bytes]] = collections.OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._client = _new_client(self.client_id)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> MqttEntityServer:
        """Connect, subscribe and start the worker; raises TransportError if not subscribed in time."""
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name=f"mqtt-entity-{self.topic}", daemon=True)
            self._worker.start()
            self._client.connect_async(*self.broker, keepalive=10)
            self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TransportError(f"cannot subscribe to {self.topic!r} on {self.broker[0]}:{self.broker[1]}")
        return self

    def wait_subscribed(self, timeout: float) -> bool:
        """True once (re)subscribed to the entity topic, e.g. after a broker restart."""
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        """Stop the worker and the network thread; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._client.disconnect()
            self._client.loop_stop()

    close = stop

    def __enter__(self) -> MqttEntityServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- paho callbacks (network thread): cheap checks only ---------------------------------

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT broker refused entity %s: %s", self.topic, reason)
            return
        result, mid = client.subscribe(self.topic, qos=1)
        with self._lock:
            self._sub_mid = mid if result == mqtt.MQTT_ERR_SUCCESS else None

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, mid: int, codes: list[Any], _props: Any) -> None:
        with self._lock:
            if mid == self._sub_mid and codes and not codes[0].is_failure:
                self._subscribed.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self._subscribed.clear()
        self.counters["drops"] += 1

    @guarded
    def _on_message(self, _c: mqtt.Client, _ud: Any, message: mqtt.MQTTMessage) -> None:
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
        if not response_topic or not correlation:
            self.counters["no_response_topic"] += 1
            return
        if not response_topic.startswith(REPLY_PREFIX) or "#" in response_topic or "+" in response_topic:
            self.counters["bad_response_topic"] += 1
            return
        job = _Job(response_topic, bytes(correlation), _user_property(props, OP_PROPERTY), bytes(message.payload))
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self.counters["overloaded"] += 1
            self._answer(job, 429, _rejection(Reason.RATE_LIMITED, "the entity is busy; retry later"))

    # -- worker ----------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._serve(job)
            except Exception:  # never let one message kill the entity's only worker
                self.counters["errors"] += 1
                log.exception("MQTT entity %s failed on one request", self.topic)

    def _serve(self, job: _Job) -> None:
        job.key = hashlib.sha256(
            b"\0".join((job.response_topic.encode(), job.correlation, (job.op or "").encode(), job.payload))
        ).digest()
        cached = self._cached(job.key)
        if cached is not None:
            self.counters["cached_answers"] += 1
            self._publish(job, cached[0], cached[1])
            return
        status, answer = self._decide(job)
        if 400 <= status < 500 and isinstance(answer, dict):
            with contextlib.suppress(ValueError):  # "not_found" and similar are not verification reasons
                self.rejections[Reason(answer.get("error"))] += 1
        self.counters["handled"] += 1
        body = _dumps(answer)
        if status < 500:  # a storage failure may succeed on retry: do not pin it
            self._remember(job.key, status, body)
        self._publish(job, status, body)

    def _decide(self, job: _Job) -> tuple[int, Any]:
        if len(job.payload) > MAX_REQUEST_BYTES:
            return 413, _rejection(Reason.OVERSIZED, f"request exceeds {MAX_REQUEST_BYTES} bytes")
        if not job.op:
            return 400, _rejection(Reason.MALFORMED, f"the {OP_PROPERTY} user property is missing")
        try:
            payload = strict_json_loads(job.payload)
        except EncodingError as exc:
            return 400, _rejection(Reason.MALFORMED, f"body is {exc}")
        return self.node.handle(job.op, payload)

    def _answer(self, job: _Job, status: int, answer: Any) -> None:
        self._publish(job, status, _dumps(answer))

    def _publish(self, job: _Job, status: int, body: bytes) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = job.correlation
        props.UserProperty = [(STATUS_PROPERTY, str(status))]
        props.ContentType = CONTENT_TYPE
        # While the broker is away paho keeps QoS 1 messages and sends them on reconnect.
        self._client.publish(job.response_topic, body, qos=1, properties=props)

    def _cached(self, key: bytes) -> tuple[int, bytes] | None:
        now = self._clock()
        with self._lock:
            while self._cache and next(iter(self._cache.values()))[0] < now:
                self._cache.popitem(last=False)
            hit = self._cache.get(key)
            return (hit[1], hit[2]) if hit else None

    def _remember(self, key: bytes, status: int, body: bytes) -> None:
        with self._lock:
            self._cache[key] = (self._clock() + self._cache_ttl, status, body)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
