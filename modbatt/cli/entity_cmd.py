"""``modbatt entity``: serve an entity over HTTP, MQTT or CAN, or show what an authority needs to know.

``entity serve`` answers the binding API, the pairing steps and ``validate`` on one endpoint
(:func:`modbatt.nodes.services.entity_services`), over the transport its flags name:

* ``--port N``: HTTP (uvicorn), endpoint ``http://HOST:PORT``;
* ``--mqtt-broker HOST:PORT``: MQTT v5 request/response, endpoint ``mqtt://HOST:PORT/TOPIC``;
* ``--can-node 0xNN``: ISO-TP on the bus the bus options choose (docs/buses.md §2), endpoint
  ``can://LABEL/0xNN``.

The endpoint goes into the entity's access data, which ``entity show`` prints together with the
identity key: the two things a binding authority needs for a grant (docs/controller.md).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ..crypto.suite import PublicKey
from ..errors import ConfigError, TransportError
from ..model._fields import b64
from ..model.access import AccessData, LctRef, TransportProtocol
from ..nodes.entity import EntityNode
from ..workbench.deployment import open_keystore
from .bus_options import add_bus_arguments, bus_from_args, bus_given

_STORE = "entity.keystore"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("entity", help="run an entity (pack controller, module) over HTTP, MQTT or CAN")
    actions = p.add_subparsers(dest="entity_command", metavar="ACTION")
    actions.required = True

    serve = actions.add_parser(
        "serve",
        help="serve the binding API, pairing and validation over HTTP, MQTT or CAN",
        description="Serve one entity until Ctrl-C. Name exactly one transport: --port (HTTP), --mqtt-broker "
        "(MQTT) or --can-node (CAN, on the bus the bus options choose).",
    )
    serve.add_argument("--state", type=Path, required=True, help="the entity's state directory")
    http = serve.add_argument_group("HTTP")
    http.add_argument("--port", type=int, help="TCP port (0 = any free port)")
    http.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    http.add_argument("--endpoint", help="advertised endpoint URL (default http://HOST:PORT)")
    mqtt = serve.add_argument_group("MQTT")
    mqtt.add_argument("--mqtt-broker", metavar="HOST:PORT", help="the broker to serve through")
    mqtt.add_argument("--topic", help="request topic (default modbatt/entity/DEVICE_ID)")
    can = serve.add_argument_group("CAN")
    can.add_argument("--can-node", metavar="0xNN", help="this module's node id on the bus (0x01-0x1F …)")
    can.add_argument("--can-label", default="can0", help="bus label in the can:// endpoint (default can0)")
    add_bus_arguments(serve)
    _provisioning(serve)
    serve.set_defaults(handler=_serve)

    show = actions.add_parser("show", help="print the entity's access data and identity public key")
    show.add_argument("--state", type=Path, required=True)
    show.set_defaults(handler=_show)


def _provisioning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("first run (provisioning)")
    g.add_argument("--device-id", help="this entity's device id")
    g.add_argument("--controller-key", type=Path, help="DER SubjectPublicKeyInfo of the one controller to obey")
    g.add_argument("--lct-id", help="bound LCT id (lct:...)")
    g.add_argument("--chain-id", default="modbatt-ledger", help="bound LCT chain or ledger id")


def _load(args: argparse.Namespace) -> tuple[Any, EntityNode | None]:
    """The entity's key store and node (None before the first run, which needs the provisioning flags)."""
    store_path = args.state / _STORE
    first = not store_path.exists()
    if first and not (getattr(args, "device_id", None) and getattr(args, "controller_key", None)):
        raise ConfigError(f"{args.state} holds no entity yet: pass --device-id and --controller-key on first run")
    store = open_keystore(store_path)
    return store, None if first else EntityNode(store)


def _provisioned(
    args: argparse.Namespace, store: Any, node: EntityNode | None, endpoint: str, protocol: TransportProtocol
) -> EntityNode:
    """The entity at ``endpoint``: provisioned on first run, its access data updated when it moved."""
    controller_key = None
    if args.controller_key is not None:
        try:
            controller_key = PublicKey.from_spki_der(args.controller_key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.controller_key}: {exc.strerror}") from None
    device_id = args.device_id or (node.access_data.device_id if node is not None else None)
    lct = LctRef(args.lct_id, args.chain_id) if args.lct_id else (node.access_data.bound_lct if node else None)
    if node is not None:
        controller_key = controller_key or node.machine.controller_key
    assert device_id is not None and controller_key is not None
    access = AccessData(endpoint, protocol, device_id, lct)
    if node is not None and node.access_data == access and controller_key == node.machine.controller_key:
        return node
    return EntityNode.provision(store, access_data=access, controller_key=controller_key)


def _transport(args: argparse.Namespace) -> str:
    chosen = [name for name, flag in (("http", args.port), ("mqtt", args.mqtt_broker), ("can", args.can_node))
              if flag is not None]  # fmt: skip
    if len(chosen) != 1:
        raise ConfigError("name exactly one transport: --port N (HTTP), --mqtt-broker HOST:PORT or --can-node 0xNN")
    if chosen[0] != "can" and bus_given(args):
        raise ConfigError("the bus options go with --can-node")
    if chosen[0] != "http" and args.endpoint:
        raise ConfigError("--endpoint goes with --port (HTTP); MQTT and CAN endpoints follow from their flags")
    return chosen[0]


@contextmanager
def _until_stopped() -> Iterator[threading.Event]:
    """An event set by SIGINT or SIGTERM (serve until then)."""
    done = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda *_: done.set())
    try:
        yield done
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _serve(args: argparse.Namespace) -> int:
    from ..nodes.services import entity_services

    transport = _transport(args)
    with ExitStack() as stack:
        if transport == "http":
            from ..nodes.entity_api import create_entity_app
            from ..transport.http import ServerThread

            server = stack.enter_context(ServerThread(host=args.host, port=args.port))  # binds now: the URL is known
            store, held = _load(args)
            node = _provisioned(args, store, held, args.endpoint or server.url, TransportProtocol.HTTP)
            server.start(create_entity_app(entity_services(node)))  # type: ignore[arg-type]
            where = server.url
        elif transport == "mqtt":
            from ..transport.mqtt import MqttEntityServer
            from ..workbench.mixed import MQTT_ENTITY_TOPIC, parse_broker

            broker = parse_broker(args.mqtt_broker)
            assert broker is not None
            _check_broker(broker)
            store, held = _load(args)
            device = args.device_id or (held.access_data.device_id if held is not None else "")
            topic = args.topic or MQTT_ENTITY_TOPIC + device
            endpoint = f"mqtt://{broker[0]}:{broker[1]}/{topic}"
            node = _provisioned(args, store, held, endpoint, TransportProtocol.MQTT)
            server = MqttEntityServer(entity_services(node), *broker, topic=topic)
            stack.callback(server.stop)
            server.start()
            where = endpoint
        else:
            from ..transport.can_entity import CanEntityServer
            from ..transport.canbus import open_bus

            node_id = _node_id(args.can_node)
            bus_config = bus_from_args(args, embedded=False, purpose="an entity served over CAN")
            bus = open_bus(bus_config)  # fails here, before the entity's state is touched
            stack.callback(bus.shutdown)
            store, held = _load(args)
            node = _provisioned(args, store, held, f"can://{args.can_label}/0x{node_id:02x}", TransportProtocol.CAN)
            server = CanEntityServer(entity_services(node), bus, node_id=node_id, fd=bus_config.fd)
            stack.callback(server.stop)
            server.start()
            where = f"{node.access_data.endpoint} on {bus_config.describe(source=True)}"
        with _until_stopped() as done:
            print(f"entity {node.access_data.device_id} serving its binding API at {where}", flush=True)
            done.wait()
    return 0


def _node_id(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFF:
        raise ConfigError(f"--can-node wants a node id 0x00-0xFF, not {text!r}")
    return value


def _check_broker(broker: tuple[str, int]) -> None:
    """A broker that is down is one line before anything is written (not a subscribe timeout later)."""
    import socket

    try:
        socket.create_connection(broker, timeout=3.0).close()
    except OSError as exc:
        raise TransportError(f"MQTT broker {broker[0]}:{broker[1]} is not reachable: {exc.strerror or exc}") from None


def _show(args: argparse.Namespace) -> int:
    _, node = _load(args)
    assert node is not None
    out: dict[str, Any] = {
        "access_data": node.access_data.to_dict(),
        "identity_public_key": b64(node.identity_key.to_spki_der()),
    }
    print(json.dumps(out, indent=2))
    return 0
