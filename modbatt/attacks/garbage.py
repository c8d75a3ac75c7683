"""Garbage on the wire: datagrams that are not CAN frames, sent to a ``udp_multicast`` bus.

Any process on the host can send a UDP datagram to the multicast group without any key. python-can
raises from ``recv()`` for a datagram that is not a msgpack frame; unhandled, that ends the
``can.Notifier`` thread serving every ISO-TP link and binding-API server on the bus, and the node
is deaf until restarted. The victim here is a pack and a module serving the binding API over
ISO-TP (:class:`~modbatt.transport.can_entity.CanEntityServer`) on one ``udp_multicast`` bus, and
the controller's gateway (:class:`~modbatt.transport.can_entity.CanEntityClient`) on another
socket of the same group: the CAN-only binding path of docs/transports.md.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import can
import msgpack

from ..errors import Reason, TransportError
from ..nodes.inmemory import InMemoryDeployment
from ..transport.can_entity import CanEntityClient, CanEntityServer
from ..transport.canbus import BusConfig, open_bus
from .outcome import Outcome
from .registry import scenario

__all__ = ["UdpPack", "garbage_datagrams", "send_datagrams", "udp_pack"]

FAMILY = "bus"


@dataclass
class UdpPack:
    """A pack and one module serving the binding API on ``udp_multicast``; the controller's gateway."""

    dep: InMemoryDeployment
    group: str
    port: int
    field_bus: can.BusABC
    gateway_bus: can.BusABC
    field_notifier: can.Notifier
    servers: list[CanEntityServer]
    client: CanEntityClient


@contextlib.contextmanager
def udp_pack(seed: int | None = None, *, timeout: float = 3.0, retries: int = 2) -> Iterator[UdpPack]:
    """Open the victim on a fresh group and port (no cross-talk with other users of the host)."""
    group = f"239.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
    port = 20000 + secrets.randbelow(40000)
    config = BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port})
    with contextlib.ExitStack() as stack:
        dep = InMemoryDeployment(seed=seed, modules=1)
        stack.callback(dep.ledger.close)
        field_bus = open_bus(config)
        stack.callback(field_bus.shutdown)
        gateway_bus = open_bus(config)
        stack.callback(gateway_bus.shutdown)
        notifier = can.Notifier(field_bus, [], timeout=0.05)
        stack.callback(notifier.stop)
        servers = []
        for node in (dep.pack, dep.modules[1]):
            server = CanEntityServer(node, field_bus, notifier=notifier).start()
            stack.callback(server.stop)
            servers.append(server)
        client = CanEntityClient(gateway_bus, timeout=timeout, retries=retries)
        stack.callback(client.close)
        dep.controller.client = client
        yield UdpPack(dep, group, port, field_bus, gateway_bus, notifier, servers, client)


def garbage_datagrams(rng: random.Random, count: int) -> list[bytes]:
    """Datagrams python-can cannot turn into a frame: raw bytes, msgpack of the wrong shape or values."""
    fixed = [
        b"",
        b"\xff" * 3,
        b"not msgpack at all",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"arbitration_id": -1, "data": b"x"}),
        msgpack.packb({"arbitration_id": 0x100, "data": bytes(100), "is_fd": False}),
        msgpack.packb({"no_such_field": 1}),
        msgpack.packb({1: 2}),
    ]
    return (fixed + [rng.randbytes(rng.randrange(1, 200)) for _ in range(count)])[: max(count, len(fixed))]


def send_datagrams(group: str, port: int, datagrams: list[bytes]) -> None:
    """Send ``datagrams`` to the group as any local process can: a plain UDP socket, no key."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        for datagram in datagrams:
            sock.sendto(datagram, (group, port))


@scenario("udp_garbage_datagram", family=FAMILY, expected=("detected", "malformed"))
def udp_garbage_datagram(seed: int | None = None) -> Outcome:
    """Datagrams that are not CAN frames, sent to a udp_multicast group before and during a binding over ISO-TP."""
    rng = random.Random(seed)
    with udp_pack(seed) as pack:
        before = garbage_datagrams(rng, 16)
        send_datagrams(pack.group, pack.port, before)
        stop = threading.Event()

        def sprinkle() -> None:  # more garbage while the binding's ISO-TP transfers run
            while not stop.wait(0.02):
                send_datagrams(pack.group, pack.port, garbage_datagrams(rng, 1)[:1])

        spoiler = threading.Thread(target=sprinkle, name="garbage-sender", daemon=True)
        spoiler.start()
        try:
            bound = int(pack.dep.bind(pack.dep.pack, pack.dep.modules[1]).record is not None)
        except TransportError:  # the attack worked: the node stopped receiving
            bound = 0
        finally:
            stop.set()
            spoiler.join(5)
        counters = {
            "field_bus.malformed": int(getattr(pack.field_bus, "malformed", 0)),
            "gateway_bus.malformed": int(getattr(pack.gateway_bus, "malformed", 0)),
            "field_notifier_alive": int(pack.field_notifier.exception is None),
            "bound": bound,
            "server_errors": sum(s.counters["errors"] for s in pack.servers),
        }
    dropped = counters["field_bus.malformed"] >= len(before) and counters["gateway_bus.malformed"] >= len(before)
    if not (counters["bound"] and counters["field_notifier_alive"] and dropped):
        return Outcome("succeeded", "deafened", counters, "a datagram stopped a receiver or went uncounted")
    return Outcome("detected", Reason.MALFORMED.value, counters, "dropped and counted; the binding still completed")
