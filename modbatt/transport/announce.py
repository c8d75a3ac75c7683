"""Carriers for level-1 announces on every transport: CAN broadcast, an MQTT topic, an HTTP POST.

An announce is opaque bytes here (the signed CBOR from
:class:`~modbatt.protocol.validation.announce.Announcer`); a carrier only moves it and hands it to
a *sink* ``sink(data, source) -> Reason | None`` with a ``source`` URL saying where it came from
(``can://CHANNEL/0xNN``, ``mqtt://HOST:PORT/TOPIC``, ``http://PEER``). Verifying it and learning
the access data it carries is the controller's job (:class:`modbatt.nodes.discovery.Directory`).

* **CAN**: the broadcast fragmentation of :mod:`modbatt.can.fragment` (ISO-TP cannot serve one
  sender and many receivers) on function ``ANNOUNCE`` (0x001), direction node-to-controller,
  binding tier signalled, the function table's priority, the announcer's node id in the ID.
* **MQTT**: QoS 1, not retained (a stale announce is refused by its timestamp anyway, and a
  retained one would be replayed to every new subscriber), topic ``modbatt/announce/<device id>``;
  the controller subscribes to ``modbatt/announce/+``.
* **HTTP**: ``POST /api/announce`` with ``Content-Type: application/cbor`` on the controller's
  announce endpoint; 202 when accepted, 422 ``{"error": reason}`` when the sink refused it.

Every receiver caps sizes, never raises into the library thread that delivered the bytes, and
counts what it drops. A sink runs in that thread (the CAN Notifier, paho's network loop, the
HTTP worker), so it must not block on I/O: a sink that called back over the same CAN Notifier
would wait for frames its own thread has to deliver. ``Directory.offer`` only verifies and records;
reaching the entity happens later, from the caller's thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import can
import httpx
import paho.mqtt.client as mqtt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..can.fragment import Fragmenter, Reassembler, ReassemblyLimits
from ..can.functions import function_named
from ..can.ids import SEED_LAYOUT, CanIdFields, IdLayout
from ..errors import Reason, TransportError, VerificationError
from ..model.tier import Tier
from .mqtt import DEFAULT_PORT, _new_client, guarded

__all__ = [
    "ANNOUNCE_FUNCTION",
    "ANNOUNCE_PATH",
    "ANNOUNCE_TOPIC_PREFIX",
    "MAX_ANNOUNCE_BYTES",
    "AnnounceSink",
    "CanAnnounceListener",
    "CanAnnounceSender",
    "MqttAnnounceListener",
    "MqttAnnouncer",
    "announce_can_id",
    "create_announce_app",
    "post_announce",
]

log = logging.getLogger(__name__)

_FUNCTION = function_named("ANNOUNCE")
ANNOUNCE_FUNCTION = _FUNCTION.code
ANNOUNCE_TOPIC_PREFIX = "modbatt/announce/"
ANNOUNCE_PATH = "/api/announce"
#: An announce with an escalation request is well under 1 KiB; refuse anything bigger early.
MAX_ANNOUNCE_BYTES = 4096
#: The function table's priority for ANNOUNCE (6 if the table carries none).
_PRIORITY: int = getattr(_FUNCTION, "priority", 6)

#: ``sink(announce bytes, source URL)``: ``None`` when accepted, else the rejection reason.
AnnounceSink = Callable[[bytes, str], "Reason | None"]


def _deliver(sink: AnnounceSink, data: bytes, source: str, counters: collections.Counter[str]) -> Reason | None:
    try:
        verdict = sink(data, source)
    except Exception:  # a faulty sink must not kill the bus or network thread that called it
        counters["sink_errors"] += 1
        log.exception("announce sink failed on an announce from %s", source)
        return Reason.MALFORMED
    counters["accepted" if verdict is None else "refused"] += 1
    return verdict


# ---------------------------------------------------------------------------------------------
# CAN broadcast
# ---------------------------------------------------------------------------------------------


def announce_can_id(node: int, layout: IdLayout = SEED_LAYOUT) -> int:
    """The carrier ID of ``node``'s announce fragments."""
    return layout.encode(
        CanIdFields(function=ANNOUNCE_FUNCTION, node=node, direction=1, priority=_PRIORITY, tier=Tier.BINDING)
    )


class CanAnnounceSender:
    """Broadcasts announces from one node as fragments (classic 8-byte frames unless ``mtu`` says FD).

    Keep one sender per node for its lifetime: it advances the 4-bit transfer id per announce, and
    receivers drop a transfer that reuses a recent id with the same first fragment as a duplicate.
    """

    def __init__(
        self, bus: can.BusABC, node: int, *, mtu: int = 8, layout: IdLayout = SEED_LAYOUT, first_transfer_id: int = 0
    ) -> None:
        self._bus = bus
        self.can_id = announce_can_id(node, layout)
        self._fragmenter = Fragmenter(mtu=mtu, max_message_size=MAX_ANNOUNCE_BYTES, first_transfer_id=first_transfer_id)
        self._fd = mtu > 8

    def send(self, data: bytes, timeout: float = 1.0) -> int:
        """Send one announce; returns the number of frames (TransportError if the bus refuses)."""
        frames = self._fragmenter.fragment(data)
        try:
            for frame in frames:
                self._bus.send(
                    can.Message(arbitration_id=self.can_id, is_extended_id=True, data=frame, is_fd=self._fd),
                    timeout=timeout,
                )
        except can.CanError as exc:
            raise TransportError(f"cannot broadcast an announce: {exc}") from None
        return len(frames)


class CanAnnounceListener(can.Listener):
    """A python-can listener: reassembles announce fragments from every node and feeds the sink.

    Add it to the bus's one Notifier (``notifier.add_listener``). Frames of other functions are
    ignored; refused fragments are counted in ``reassembler.drops``.
    """

    def __init__(
        self,
        sink: AnnounceSink,
        *,
        channel: str = "can0",
        layout: IdLayout = SEED_LAYOUT,
        limits: ReassemblyLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink = sink
        self.channel = channel
        self._layout = layout
        self._clock = clock
        self._lock = threading.Lock()
        self.reassembler = Reassembler(limits or ReassemblyLimits(max_message_size=MAX_ANNOUNCE_BYTES))
        #: ``accepted``, ``refused`` (by the sink), ``sink_errors``.
        self.counters: collections.Counter[str] = collections.Counter()

    def on_message_received(self, msg: can.Message) -> None:
        if not msg.is_extended_id or msg.is_error_frame:
            return
        try:
            fields = self._layout.decode(msg.arbitration_id)
        except VerificationError:
            return  # not ours to judge: the secured link and the monitor classify foreign IDs
        if fields.function != ANNOUNCE_FUNCTION or fields.direction != 1:
            return
        with self._lock:  # the Notifier has one thread, but a listener may be shared
            done = self.reassembler.feed(msg.arbitration_id, bytes(msg.data), self._clock())
        for message in done:
            _deliver(self._sink, message.payload, f"can://{self.channel}/0x{fields.node:02x}", self.counters)


# ---------------------------------------------------------------------------------------------
# MQTT
# ---------------------------------------------------------------------------------------------


class MqttAnnouncer:
    """An entity's announce publisher (one connection, reused)."""

    def __init__(self, broker_host: str, broker_port: int = DEFAULT_PORT, *, device_id: str) -> None:
        self.topic = ANNOUNCE_TOPIC_PREFIX + device_id
        self._client = _new_client(f"modbatt-ann-{device_id}-{os.urandom(3).hex()}")
        self._connected = threading.Event()
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_disconnect = lambda *_a: self._connected.clear()
        self._broker = (broker_host, int(broker_port))
        self._started = False

    def announce(self, data: bytes, timeout: float = 3.0) -> None:
        """Publish one announce (QoS 1) and wait for the broker's acknowledgement."""
        if not self._started:
            self._started = True
            self._client.connect_async(*self._broker, keepalive=10)
            self._client.loop_start()
        if not self._connected.wait(timeout):
            raise TransportError(f"MQTT broker {self._broker[0]}:{self._broker[1]} is unreachable")
        info = self._client.publish(self.topic, data, qos=1, retain=False)
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError) as exc:
            raise TransportError(f"announce not published: {exc}") from None
        if not info.is_published():
            raise TransportError(f"announce not acknowledged within {timeout:g} s")

    def close(self) -> None:
        if self._started:
            self._client.disconnect()
            self._client.loop_stop()
            self._started = False


class MqttAnnounceListener:
    """The controller's subscription to ``modbatt/announce/+``; feeds each announce to the sink."""

    def __init__(self, sink: AnnounceSink, broker_host: str, broker_port: int = DEFAULT_PORT) -> None:
        self._sink = sink
        self.broker = (broker_host, int(broker_port))
        self._client = _new_client(f"modbatt-disc-{os.urandom(4).hex()}")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *_a: self._subscribed.clear()
        self._client.on_message = self._on_message
        self._subscribed = threading.Event()
        self._sub_mid: int | None = None
        self._started = False
        #: ``accepted``, ``refused``, ``oversized``, ``sink_errors``, ``errors`` (a handler failure).
        self.counters: collections.Counter[str] = collections.Counter()

    def start(self, timeout: float = 5.0) -> MqttAnnounceListener:
        if not self._started:
            self._started = True
            self._client.connect_async(*self.broker, keepalive=10)
            self._client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise TransportError(f"cannot subscribe to announces on {self.broker[0]}:{self.broker[1]}")
        return self

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._client.disconnect()
            self._client.loop_stop()

    close = stop

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not getattr(reason, "is_failure", False):
            self._sub_mid = client.subscribe(ANNOUNCE_TOPIC_PREFIX + "+", qos=1)[1]

    def _on_subscribe(self, _c: mqtt.Client, _ud: Any, mid: int, codes: list[Any], _props: Any) -> None:
        if mid == self._sub_mid and codes and not codes[0].is_failure:
            self._subscribed.set()

    @guarded
    def _on_message(self, _c: mqtt.Client, _ud: Any, message: mqtt.MQTTMessage) -> None:
        if len(message.payload) > MAX_ANNOUNCE_BYTES:
            self.counters["oversized"] += 1
            return
        source = f"mqtt://{self.broker[0]}:{self.broker[1]}/{message.topic}"
        _deliver(self._sink, bytes(message.payload), source, self.counters)


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def create_announce_app(sink: AnnounceSink) -> FastAPI:
    """The controller's announce endpoint: ``POST /api/announce`` with a CBOR body."""
    app = FastAPI(title="modbatt announce endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    counters: collections.Counter[str] = collections.Counter()
    app.state.counters = counters

    @app.post(ANNOUNCE_PATH)
    async def announce(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_ANNOUNCE_BYTES):
            counters["oversized"] += 1
            return JSONResponse({"error": Reason.OVERSIZED.value}, status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_ANNOUNCE_BYTES:
                counters["oversized"] += 1
                return JSONResponse({"error": Reason.OVERSIZED.value}, status_code=413)
        peer = request.client.host if request.client else "unknown"
        verdict = _deliver(sink, bytes(body), f"http://{peer}", counters)
        if verdict is not None:
            return JSONResponse({"error": Reason(verdict).value}, status_code=422)
        return JSONResponse({"accepted": True}, status_code=202)

    return app


def post_announce(url: str, data: bytes, *, timeout: float = 3.0) -> None:
    """An entity's HTTP announce: POST to the controller; TransportError or RemoteRejection-like errors."""
    target = url.rstrip("/") + ANNOUNCE_PATH
    try:
        response = httpx.post(target, content=data, headers={"content-type": "application/cbor"}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise TransportError(f"cannot reach {target}: {type(exc).__name__}") from None
    if response.status_code == 202:
        return
    reason = Reason.MALFORMED
    with contextlib.suppress(ValueError, AttributeError):
        reason = Reason(response.json().get("error"))
    raise VerificationError(reason, f"the controller refused the announce (HTTP {response.status_code})")
