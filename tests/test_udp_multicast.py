"""udp_multicast through modbatt's echo-filtering wrapper, in one process and across two.

Each test run uses its own port and IPv4 group (239.0.0.0/8, administratively scoped, TTL 1), so
parallel runs and other users of python-can's default group do not cross-talk. Tests skip only
if this host cannot create a multicast socket at all.
"""

from __future__ import annotations

import random
import select
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import can
import pytest

from modbatt.errors import TransportError
from modbatt.transport.canbus import BusConfig, EchoFilteringUdpMulticastBus, open_bus

WAIT = 2.0  # bound for every single wait, seconds


@pytest.fixture(scope="module")
def group_port() -> tuple[str, int]:
    rng = random.SystemRandom()
    group = f"239.{rng.randrange(1, 255)}.{rng.randrange(0, 256)}.{rng.randrange(1, 255)}"
    port = rng.randrange(20000, 60000)
    try:
        probe = open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port}))
    except TransportError as exc:
        pytest.skip(f"this host cannot create IPv4 multicast sockets: {exc}")
    probe.shutdown()
    return group, port


@pytest.fixture
def buses(group_port: tuple[str, int]) -> Iterator[list[can.BusABC]]:
    opened: list[can.BusABC] = []
    yield opened
    for bus in opened:
        bus.shutdown()


def _open(group_port: tuple[str, int], opened: list[can.BusABC], **kwargs: object) -> EchoFilteringUdpMulticastBus:
    group, port = group_port
    bus = open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port, **kwargs}))
    assert isinstance(bus, EchoFilteringUdpMulticastBus)
    opened.append(bus)
    return bus


def _drain(bus: can.BusABC, seconds: float = 0.1) -> list[can.Message]:
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(timeout=left)
        if msg is not None:
            got.append(msg)
    return got


def test_sender_never_sees_its_own_frames(buses: list[can.BusABC], group_port: tuple[str, int]) -> None:
    a = _open(group_port, buses)
    b = _open(group_port, buses)
    own = _open(group_port, buses, receive_own_messages=True)
    frames = [can.Message(arbitration_id=0x100 + i, data=bytes([i] * 8)) for i in range(20)]
    for msg in frames:
        a.send(msg)
    got_b = _drain(b)
    assert [m.arbitration_id for m in got_b] == [m.arbitration_id for m in frames]
    assert all(m.channel is None and m.is_rx for m in got_b)  # the tag is not shown to peers
    assert _drain(a) == [] and a.echoes_dropped == len(frames)
    # identical frames from another node are NOT mistaken for own echoes
    b.send(frames[0])
    assert [m.arbitration_id for m in _drain(a)] == [frames[0].arbitration_id]
    # receive_own_messages=True (python-can refuses it here): own frames come back marked Tx
    assert len(_drain(own)) == len(frames) + 1  # it heard a and b
    own.send(frames[1])
    back = _drain(own)
    assert len(back) == 1 and not back[0].is_rx
    assert frames[1].channel is None  # the caller's message was not mutated


# The peer process: answers every 0x100 frame with 0x200 and the same data, counts what it sees.
_ECHO_PEER = textwrap.dedent(
    """
    import sys, time, can
    from modbatt.transport.canbus import BusConfig, open_bus
    group, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    bus = open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port}))
    print("ready", flush=True)
    replies = own = 0
    deadline = time.monotonic() + 20
    while replies < n and time.monotonic() < deadline:
        msg = bus.recv(timeout=0.5)
        if msg is None:
            continue
        if msg.arbitration_id == 0x200:
            own += 1  # our own reply came back: the filter failed
        elif msg.arbitration_id == 0x100:
            bus.send(can.Message(arbitration_id=0x200, data=msg.data))
            replies += 1
    time.sleep(0.05)
    while bus.recv(timeout=0.05) is not None:
        own += 1
    print(f"replies={replies} own={own} dropped={bus.echoes_dropped}", flush=True)
    bus.shutdown()
    """
)


def test_two_processes_echo(buses: list[can.BusABC], group_port: tuple[str, int]) -> None:
    group, port = group_port
    n = 200
    bus = _open(group_port, buses)
    peer = subprocess.Popen(
        [sys.executable, "-c", _ECHO_PEER, group, str(port), str(n)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout is not None
        ready, _, _ = select.select([peer.stdout], [], [], 15)
        assert ready and peer.stdout.readline().strip() == "ready", "peer did not start"
        round_trips = []
        replies = own_seen = 0
        for i in range(n):
            payload = i.to_bytes(4, "big") + b"RTTP"
            started = time.perf_counter()
            bus.send(can.Message(arbitration_id=0x100, data=payload))
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                msg = bus.recv(timeout=deadline - time.monotonic())
                if msg is None:
                    break
                if msg.arbitration_id == 0x100:
                    own_seen += 1
                elif msg.arbitration_id == 0x200 and bytes(msg.data) == payload:
                    round_trips.append(time.perf_counter() - started)
                    replies += 1
                    break
        own_seen += sum(1 for m in _drain(bus) if m.arbitration_id == 0x100)
        out, err = peer.communicate(timeout=15)
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.communicate(timeout=5)
    assert peer.returncode == 0, err
    assert replies == n and own_seen == 0
    assert bus.echoes_dropped == n
    assert f"replies={n} own=0 dropped={n}" in out
    median_us = statistics.median(round_trips) * 1e6
    print(f"udp_multicast round trip across processes: median {median_us:.0f} µs over {n}")
