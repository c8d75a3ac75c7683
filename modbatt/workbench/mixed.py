"""One controller, any protocol: bind, pair and discover a mixed set of entities over real transports.

:class:`MixedBench` builds an auth controller whose single
:class:`~modbatt.transport.routing.RoutingEntityClient` reaches

* a battery **module on CAN** (``can``): the binding API over ISO-TP on the python-can bus the bus
  rule chooses (the embedded ``virtual`` bus when nothing is configured;
  :mod:`modbatt.transport.can_entity`), announces as broadcast fragments;
* a **gateway on HTTP** (``http``): the FastAPI binding API under uvicorn, announces by POST;
* a **sensor on MQTT** (``mqtt``): MQTT v5 request/response through a real mosquitto
  (:mod:`modbatt.transport.mqtt`), announces on ``modbatt/announce/<device id>``;

and a **pack controller** (always on HTTP, as pack controllers are the IP-capable gateways of a
pack) that each of them is bound and paired with. The same protocol machines run behind every
transport; only the carrier differs. :func:`run_mixed_demo` is what ``modbatt demo --transports``
calls.

Pairing runs over the same transports: :func:`~modbatt.nodes.pairing_flow.pair_over` sends the
certificate, both offers and the confirmation through the routing client, to each entity's
:class:`~modbatt.nodes.pairing_flow.PairingService` behind its CAN link, HTTP app or MQTT topic.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, cast

import can

from ..crypto.keystore import KeyStore
from ..crypto.rng import RandomSource, SeededRandom, SystemRandom
from ..crypto.suite import PrivateKey
from ..errors import ConfigError, ModbattError
from ..ledger import Ledger
from ..model.access import AccessData, LctRef, TransportProtocol
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..nodes.authority import authorize_binding
from ..nodes.controller import AuthController, BindingOutcome
from ..nodes.discovery import Directory
from ..nodes.entity import EntityNode
from ..nodes.entity_api import create_entity_app
from ..nodes.pairing_flow import PairingOutcome, pair_over
from ..nodes.services import entity_services
from ..protocol.validation.announce import Announcer
from ..transport.announce import (
    CanAnnounceListener,
    CanAnnounceSender,
    MqttAnnounceListener,
    MqttAnnouncer,
    create_announce_app,
    post_announce,
)
from ..transport.can_entity import CanEntityClient, CanEntityServer, can_endpoint
from ..transport.canbus import BusConfig, open_bus, resolve_bus
from ..transport.http import HttpEntityClient, ServerThread
from ..transport.mosquitto import MosquittoBroker
from ..transport.mqtt import MqttEntityClient, MqttEntityServer
from ..transport.routing import RoutingEntityClient
from ..transport.serving import OpRouter

__all__ = ["TRANSPORTS", "MixedBench", "MixedEntity", "parse_broker", "run_mixed_demo"]

TRANSPORTS = ("can", "http", "mqtt")
PACK_DEVICE = "pack-01"
#: Default entity per transport: (device id, protocol).
_DEFAULT_ENTITY = {
    "can": ("module-01", TransportProtocol.CAN),
    "http": ("gateway-01", TransportProtocol.HTTP),
    "mqtt": ("sensor-01", TransportProtocol.MQTT),
}
CAN_CHANNEL_LABEL = "can0"
MQTT_ENTITY_TOPIC = "modbatt/entity/"


def parse_broker(text: str | tuple[str, int] | None) -> tuple[str, int] | None:
    """``"HOST:PORT"`` (or a tuple, or None) as ``(host, port)``; ConfigError for anything else."""
    if text is None or isinstance(text, tuple):
        return text
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--mqtt-broker wants HOST:PORT, not {text!r}")
    return host, int(port)


def _transports(names: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if name not in TRANSPORTS:
            raise ConfigError(f"unknown transport {raw!r} (choose from {', '.join(TRANSPORTS)})")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError("name at least one transport (can, http, mqtt)")
    return tuple(out)


@dataclass
class MixedEntity:
    """One entity of the bench, its server, and what happened to it."""

    name: str
    transport: str
    node: EntityNode
    server: Any = field(repr=False, default=None)
    store: Any = field(repr=False, default=None)  # the entity's key store (survives a move)
    binding_id: str | None = None
    bound: bool = False
    paired: bool = False
    discovered: bool = False
    error: str | None = None
    announcer: Announcer | None = field(repr=False, default=None)

    @property
    def access_data(self) -> AccessData:
        return self.node.access_data

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.transport,
            "device_id": self.access_data.device_id,
            "endpoint": self.access_data.endpoint,
            "bound": self.bound,
            "paired": self.paired,
            "discovered": self.discovered,
            "binding_id": self.binding_id,
            "error": self.error,
        }


class MixedBench:
    """A controller, a pack controller (HTTP) and one entity per named transport, all served for real.

    Use as a context manager: every server, thread, bus and (if it started one) broker is stopped
    on exit. ``mqtt_broker`` names an existing broker; without one and with ``mqtt`` requested, a
    private mosquitto is started on a free local port (ConfigError if mosquitto is not installed).
    """

    def __init__(
        self,
        transports: Iterable[str] = TRANSPORTS,
        *,
        mqtt_broker: tuple[str, int] | str | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        retries: int = 1,
        profile: ProtocolProfile = DEFAULT_PROFILE,
        bus: BusConfig | None = None,
    ) -> None:
        self.transports = _transports(transports)
        self.profile = ProtocolProfile(profile)
        #: The CAN bus (the bus rule when not given: python-can's configuration, else the embedded one).
        self.bus_config: BusConfig | None = None
        if "can" in self.transports:
            self.bus_config = bus if bus is not None else resolve_bus()
        self.clock = clock
        self.rng: RandomSource = SeededRandom(seed) if seed is not None else SystemRandom()
        self._stack = ExitStack()
        try:
            self._setup(parse_broker(mqtt_broker), timeout, retries)
        except BaseException:
            self._stack.close()
            raise

    # -- construction ----------------------------------------------------------------------

    def _setup(self, broker: tuple[str, int] | None, timeout: float, retries: int) -> None:
        reproducible = self.rng.reproducible
        self.controller_key = PrivateKey.generate(self.rng)
        self.authority_key = PrivateKey.generate(self.rng)
        self.ledger = Ledger(":memory:", signer=self.controller_key, clock=self.clock)
        self._stack.callback(self.ledger.close)
        self.directory = Directory(clock=self.clock)
        self.entities: dict[str, MixedEntity] = {}
        self._can_senders: dict[int, CanAnnounceSender] = {}
        self.broker_owned = False
        self.broker: tuple[str, int] | None = None
        routes: dict[TransportProtocol, Any] = {}

        http = HttpEntityClient(timeout=timeout, retries=retries)
        self._stack.callback(http.close)
        routes[TransportProtocol.HTTP] = http
        # The controller's announce endpoint (HTTP announces POST here).
        self.announce_server = ServerThread()
        self._stack.callback(self.announce_server.stop)
        self.announce_server.start(create_announce_app(self.directory.offer))

        if "can" in self.transports:
            # Two handles on the bus: the controller's gateway and the field side the module sits on.
            assert self.bus_config is not None
            self.gateway_bus = open_bus(self.bus_config)
            self._stack.callback(self.gateway_bus.shutdown)
            self.field_bus = open_bus(self.bus_config)
            self._stack.callback(self.field_bus.shutdown)
            self.can_client = CanEntityClient(self.gateway_bus, timeout=timeout, retries=retries)
            self._stack.callback(self.can_client.close)
            routes[TransportProtocol.CAN] = self.can_client
            self.can_listener = CanAnnounceListener(self.directory.offer, channel=CAN_CHANNEL_LABEL)
            self.can_client.notifier().add_listener(self.can_listener)
            self.field_notifier = can.Notifier(self.field_bus, [], timeout=0.05)
            self._stack.callback(self.field_notifier.stop)

        if "mqtt" in self.transports:
            if broker is None:
                owned = MosquittoBroker()
                self._stack.callback(owned.close)
                owned.start()
                broker, self.broker_owned = owned.address, True
            self.broker = broker
            self.mqtt_client = MqttEntityClient(*broker, timeout=timeout, retries=retries)
            self._stack.callback(self.mqtt_client.close)
            routes[TransportProtocol.MQTT] = self.mqtt_client
            self.mqtt_listener = MqttAnnounceListener(self.directory.offer, *broker)
            self._stack.callback(self.mqtt_listener.stop)
            self.mqtt_listener.start()

        self.router = RoutingEntityClient(routes, resolver=self.directory.endpoint_for)
        self.controller = AuthController(
            controller_key=self.controller_key,
            authority_key=self.authority_key.public_key,
            ledger=self.ledger,
            client=self.router,
            records=KeyStore.in_memory(reproducible=reproducible),
            clock=self.clock,
            rng=self.rng,
        )
        lct = LctRef("lct:web4:pack-01", "modbatt-ledger")
        self.pack = self._serve_http(PACK_DEVICE, lct).node
        for name in self.transports:
            device_id, _ = _DEFAULT_ENTITY[name]
            self.add_entity(name, device_id)

    def _provision(self, access: AccessData, store: Any = None) -> EntityNode:
        return EntityNode.provision(
            store if store is not None else KeyStore.in_memory(reproducible=self.rng.reproducible),
            access_data=access,
            controller_key=self.controller_key.public_key,
            clock=self.clock,
            rng=self.rng,
        )

    def _services(self, node: EntityNode) -> OpRouter:
        """The node's binding API, its pairing steps and its validation service, on one endpoint."""
        return entity_services(node, clock=self.clock)

    def _serve_http(self, device_id: str, lct: LctRef | None = None, store: Any = None) -> MixedEntity:
        server = ServerThread()
        self._stack.callback(server.stop)
        store = store if store is not None else KeyStore.in_memory(reproducible=self.rng.reproducible)
        node = self._provision(AccessData(server.url, TransportProtocol.HTTP, device_id, lct), store)
        server.start(create_entity_app(cast(EntityNode, self._services(node))))
        return MixedEntity(device_id, "http", node, server, store)

    def add_entity(
        self, transport: str, device_id: str, *, node_id: int = 0x01, topic: str | None = None, store: Any = None
    ) -> MixedEntity:
        """Provision and serve one more entity on ``transport`` (tests add unreachable or moved ones)."""
        if transport not in self.transports:
            raise ConfigError(f"this bench has no {transport} transport")
        if transport == "http":
            entity = self._serve_http(device_id, store=store)
        else:
            store = store if store is not None else KeyStore.in_memory(reproducible=self.rng.reproducible)
            if transport == "can":
                access = AccessData(f"can://{CAN_CHANNEL_LABEL}/0x{node_id:02x}", TransportProtocol.CAN, device_id)
                node = self._provision(access, store)
                server: Any = CanEntityServer(self._services(node), self.field_bus, notifier=self.field_notifier)
                server.start()
                self._stack.callback(server.stop)
            else:
                assert self.broker is not None
                host, port = self.broker
                endpoint = f"mqtt://{host}:{port}/{topic or MQTT_ENTITY_TOPIC + device_id}"
                node = self._provision(AccessData(endpoint, TransportProtocol.MQTT, device_id), store)
                server = MqttEntityServer(self._services(node), host, port)
                self._stack.callback(server.stop)
                server.start()
            entity = MixedEntity(device_id, transport, node, server, store)
        self.entities[device_id] = entity
        return entity

    def move(self, entity: MixedEntity, *, node_id: int = 0x05, topic: str | None = None) -> MixedEntity:
        """Re-serve ``entity`` at a new address (same key store, so same bindings): a device that moved.

        CAN: a new node id; HTTP: a new port; MQTT: a new topic. The controller's binding record
        still names the old endpoint: only an announce tells it where the entity went.
        """
        entity.server.stop()
        moved = self.add_entity(
            entity.transport,
            entity.access_data.device_id,
            node_id=node_id,
            topic=topic or f"{MQTT_ENTITY_TOPIC}moved/{entity.access_data.device_id}",
            store=entity.store,
        )
        moved.binding_id, moved.bound, moved.paired = entity.binding_id, entity.bound, entity.paired
        moved.announcer = entity.announcer
        return moved

    # -- the protocol steps ------------------------------------------------------------------

    def bind(self, entity: MixedEntity) -> BindingOutcome:
        """Bind ``entity`` with the pack controller through the routing client."""
        auth = authorize_binding(self.authority_key, self.pack, entity.node, self.clock(), self.rng)
        outcome = self.controller.bind(self.pack.access_data, entity.access_data, auth)
        entity.binding_id, entity.bound = outcome.record.binding_id, True
        self.directory.trust(outcome.record)
        return outcome

    def pair(self, entity: MixedEntity) -> PairingOutcome:
        """Pair the bound ``entity`` with the pack controller."""
        if entity.binding_id is None:
            raise ConfigError(f"{entity.name} is not bound")
        # Over the transports: the certificate, both offers and the confirmation travel through
        # the same routing client as the binding API (the module's CAN link, the sensor's MQTT topic).
        outcome = pair_over(self.controller, self.router, entity.binding_id, profile=self.profile)
        entity.paired = True
        return outcome

    def announce(self, entity: MixedEntity, access: AccessData | None = None) -> bytes:
        """Send ``entity``'s level-1 announce over its own transport (its current access data unless given).

        Returns the announce bytes (e.g. to hand to :class:`modbatt.nodes.discovery.Discovery`).
        """
        if entity.binding_id is None:
            raise ConfigError(f"{entity.name} has no binding key to announce with")
        state = entity.node.binding(entity.binding_id)
        if state is None:
            raise ConfigError(f"{entity.name} no longer holds binding {entity.binding_id}")
        target = access or entity.access_data
        if entity.announcer is None or entity.announcer.access_data != target:
            # Keep the sequence running across a move: the verifier refuses a sequence number it saw.
            seq = entity.announcer._seq if entity.announcer is not None else 0
            entity.announcer = Announcer(
                binding_id=entity.binding_id, access_data=target, binding_key=state.private_key, seq=seq
            )
        data = entity.announcer.announce(self.clock())
        if entity.transport == "can":
            self.can_sender(can_endpoint(target.endpoint)[1]).send(data)
        elif entity.transport == "mqtt":
            assert self.broker is not None
            announcer = MqttAnnouncer(*self.broker, device_id=target.device_id)
            try:
                announcer.announce(data)
            finally:
                announcer.close()
        else:
            post_announce(self.announce_server.url, data)
        return data

    def can_sender(self, node: int) -> CanAnnounceSender:
        """The one announce sender of CAN node ``node`` (it keeps the transfer ids advancing)."""
        if node not in self._can_senders:
            self._can_senders[node] = CanAnnounceSender(self.field_bus, node)
        return self._can_senders[node]

    def run(self, discover_timeout: float = 5.0) -> None:
        """Bind, pair and announce every entity; failures are recorded per entity, not raised."""
        for entity in self.entities.values():
            try:
                self.bind(entity)
                self.pair(entity)
                self.announce(entity)
            except ModbattError as exc:
                entity.error = f"{type(exc).__name__}: {exc}"
        bound = [e for e in self.entities.values() if e.bound and e.error is None]
        self.directory.wait_for((e.access_data.device_id for e in bound), discover_timeout)
        for entity in self.entities.values():
            entity.discovered = entity.access_data.device_id in self.directory.entities

    def summary(self) -> dict[str, Any]:
        counters: dict[str, Any] = {}
        if "can" in self.transports:
            counters["can"] = dict(self.can_client.counters)
        if "mqtt" in self.transports:
            counters["mqtt"] = dict(self.mqtt_client.counters)
        return {
            "transports": list(self.transports),
            "can_bus": self.bus_config.to_json() if self.bus_config is not None else None,
            "pack": {"device_id": PACK_DEVICE, "endpoint": self.pack.access_data.endpoint, "transport": "http"},
            "entities": [e.to_dict() for e in self.entities.values()],
            "discovered": [d.to_dict() for d in self.directory.entities.values()],
            "mqtt_broker": f"{self.broker[0]}:{self.broker[1]}" if self.broker else None,
            "mqtt_broker_started": self.broker_owned,
            "ledger_size": self.ledger.size,
            "calls": dict(self.router.calls),
            "transport_counters": counters,
            "announce_rejections": {r.value: n for r, n in self.directory.rejections.items()},
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with contextlib.suppress(ModbattError):
            self._stack.close()

    def __enter__(self) -> MixedBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_mixed_demo(
    transports: Iterable[str] = TRANSPORTS,
    mqtt_broker: tuple[str, int] | str | None = None,
    *,
    seed: int | None = None,
    timeout: float = 5.0,
    profile: ProtocolProfile = DEFAULT_PROFILE,
    bus: BusConfig | None = None,
) -> dict[str, Any]:
    """Bind and pair one entity per named transport with a pack controller, then discover them.

    ``profile`` is the protocol profile of every pairing (docs/profiles.md).

    Returns ``{"entities": [{"name", "transport", "bound", "paired", "discovered", …}], "discovered",
    "pack", "mqtt_broker", "ledger_size", "calls", "transport_counters", "elapsed_s", …}``.
    """
    started = time.monotonic()
    with MixedBench(
        transports, mqtt_broker=mqtt_broker, seed=seed, timeout=timeout, profile=profile, bus=bus
    ) as bench:
        bench.run()
        result = bench.summary()
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result
