"""The fault-injecting bus: stated rates hold over many frames, a seed reproduces a run, bus-off is dark.

Rates are checked with wide bounds over a few thousand frames (binomial standard deviation at
p = 0.1, n = 3000 is about 0.0055; the bounds are several of those), never with timing.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Iterator

import can
import pytest

from modbatt.errors import ConfigError, TransportError
from modbatt.transport.canbus import BusConfig, EchoFilteringUdpMulticastBus, open_bus
from modbatt.transport.faultbus import CAN_ERR_BUSOFF, CAN_ERR_PROT, FaultBus, FaultSpec

N = 3000


class Clock:
    """A settable monotonic clock: delays, holds and bus-off move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pair() -> Iterator[tuple[can.BusABC, can.BusABC]]:
    channel = f"faultbus-{uuid.uuid4().hex}"
    sender = can.Bus(interface="virtual", channel=channel)
    receiver = can.Bus(interface="virtual", channel=channel)
    yield sender, receiver
    sender.shutdown()
    receiver.shutdown()


def _frames(n: int = N) -> list[can.Message]:
    return [can.Message(arbitration_id=0x100, data=i.to_bytes(4, "big") + b"\xa5\x5a\x00\xff") for i in range(n)]


def _drain(bus: can.BusABC) -> list[can.Message]:
    out = []
    while (msg := bus.recv(timeout=0)) is not None:
        out.append(msg)
    return out


def _run(spec: str, pair: tuple[can.BusABC, can.BusABC], n: int = N) -> tuple[list[can.Message], FaultBus]:
    sender, receiver = pair
    faulty = FaultBus(receiver, spec, owns_inner=False, clock=Clock())  # time stands still: no hold expires
    for msg in _frames(n):
        sender.send(msg)
    got = _drain(faulty)
    return got, faulty


def test_spec_text_round_trips_and_refuses_nonsense() -> None:
    spec = FaultSpec.parse("loss=0.1, dup=0.02,reorder=0.02,corrupt=0.01,seed=7")
    assert spec == FaultSpec(loss=0.1, dup=0.02, reorder=0.02, corrupt=0.01, seed=7)
    assert FaultSpec.parse(str(spec)) == spec and str(spec) == "loss=0.1,dup=0.02,reorder=0.02,corrupt=0.01,seed=7"
    assert FaultSpec.parse("") is None and FaultSpec.parse(None) is None
    bad_specs = ["loss=1.5", "loss=nan", "jitter=0.1", "loss", "loss=abc", "dir=sideways", "burst=0"]
    for bad in (*bad_specs, "loss=0.1,loss=0.2", "delay_s=inf", "seed=1.5"):
        with pytest.raises(ConfigError):
            FaultSpec.parse(bad)


def test_loss_rate_holds(pair: tuple[can.BusABC, can.BusABC]) -> None:
    got, faulty = _run("loss=0.1,seed=1", pair)
    lost = faulty.counters["rx_lost"]
    assert 0.07 * N < lost < 0.13 * N
    assert len(got) == N - lost == faulty.counters["rx_frames"] - lost


def test_duplication_corruption_and_error_bursts_hold(pair: tuple[can.BusABC, can.BusABC]) -> None:
    got, faulty = _run("dup=0.05,corrupt=0.05,errors=0.02,burst=2,seed=2", pair)
    frames = [m for m in got if not m.is_error_frame]
    errors = [m for m in got if m.is_error_frame]
    dups, corrupted, bursts = (faulty.counters[k] for k in ("rx_duplicated", "rx_corrupted", "error_bursts"))
    assert 0.03 * N < dups < 0.07 * N and 0.03 * N < corrupted < 0.07 * N and 0.005 * N < bursts < 0.035 * N
    assert len(frames) == N + dups and len(errors) == 2 * bursts
    assert all(m.arbitration_id == CAN_ERR_PROT for m in errors)
    sent = {bytes(m.data[:4]): bytes(m.data) for m in _frames()}
    flipped = 0
    for m in frames:
        original = sent.get(bytes(m.data[:4]))
        if original is None or original != bytes(m.data):  # a flipped bit, in the index or the payload
            diff = sum(bin(a ^ b).count("1") for a, b in zip(bytes(m.data), original or b"", strict=False))
            flipped += 1
            assert original is None or diff == 1
    assert flipped <= corrupted + dups  # a duplicate of a corrupted frame is corrupted too


def test_reordering_swaps_neighbours_and_loses_nothing(pair: tuple[can.BusABC, can.BusABC]) -> None:
    got, faulty = _run("reorder=0.05,seed=3", pair)
    order = [int.from_bytes(m.data[:4], "big") for m in got]
    held = faulty.counters["rx_reordered"]
    assert 0.03 * N < held < 0.07 * N
    still_held = N - len(order)  # a frame held last has nothing to swap with (the clock stands still)
    assert still_held in (0, 1) and sorted(order) == list(range(N - still_held))
    inversions = sum(1 for a, b in itertools.pairwise(order) if b < a)
    assert inversions == held - still_held


def test_a_seed_reproduces_the_run(pair: tuple[can.BusABC, can.BusABC]) -> None:
    spec = "loss=0.1,dup=0.05,reorder=0.05,corrupt=0.05,seed=11"
    first, a = _run(spec, pair, 500)
    second, b = _run(spec, pair, 500)
    assert [bytes(m.data) for m in first] == [bytes(m.data) for m in second] and a.counters == b.counters
    third, _ = _run(spec.replace("seed=11", "seed=12"), pair, 500)
    assert [bytes(m.data) for m in third] != [bytes(m.data) for m in first]


def test_delayed_frames_arrive_later_not_never(pair: tuple[can.BusABC, can.BusABC]) -> None:
    sender, receiver = pair
    clock = Clock()
    faulty = FaultBus(receiver, "delay=1,delay_s=5", owns_inner=False, clock=clock)
    sender.send(can.Message(arbitration_id=0x1, data=b"\x01"))
    assert faulty.recv(timeout=0) is None and faulty.counters["rx_delayed"] == 1
    clock.now += 5
    got = faulty.recv(timeout=0)
    assert got is not None and bytes(got.data) == b"\x01"


def test_bus_off_is_dark_for_its_episode(pair: tuple[can.BusABC, can.BusABC]) -> None:
    sender, receiver = pair
    clock = Clock()
    node = FaultBus(receiver, "busoff_at=1,busoff_s=10", owns_inner=False, clock=clock)
    node.send(can.Message(arbitration_id=0x2, data=b"\x00"))  # before the episode: sends go out
    assert sender.recv(timeout=1) is not None
    clock.now += 1
    with pytest.raises(can.CanOperationError, match="bus-off"):
        node.send(can.Message(arbitration_id=0x2, data=b"\x01"))
    assert node.state is can.BusState.ERROR
    notice = node.recv(timeout=0)
    assert notice is not None and notice.is_error_frame and notice.arbitration_id == CAN_ERR_BUSOFF
    sender.send(can.Message(arbitration_id=0x3, data=b"\x02"))  # dropped while dark
    assert node.recv(timeout=0) is None and sender.recv(timeout=0) is None
    clock.now += 10
    assert node.state is can.BusState.ACTIVE
    node.send(can.Message(arbitration_id=0x2, data=b"\x03"))
    assert sender.recv(timeout=1) is not None
    sender.send(can.Message(arbitration_id=0x3, data=b"\x04"))
    back = node.recv(timeout=1)
    assert back is not None and bytes(back.data) == b"\x04"
    assert node.counters["bus_off_refused"] == 1 and node.counters["bus_off_dropped"] == 1
    assert node.counters["bus_off_episodes"] == 1
    node.enter_bus_off(2.0)  # on demand, e.g. from a simulator's schedule
    with pytest.raises(can.CanOperationError):
        node.send(can.Message(arbitration_id=0x2, data=b"\x05"))


def test_send_side_faults_reach_every_receiver(pair: tuple[can.BusABC, can.BusABC]) -> None:
    sender, receiver = pair
    faulty = FaultBus(sender, "loss=0.2,dup=0.1,dir=tx,seed=5", owns_inner=False)
    for msg in _frames(1000):
        faulty.send(msg)
    got = _drain(receiver)
    assert len(got) == 1000 - faulty.counters["tx_lost"] + faulty.counters["tx_duplicated"]
    assert 150 < faulty.counters["tx_lost"] < 250


def test_open_bus_wraps_virtual_with_a_spec_from_configuration() -> None:
    channel = f"faultbus-cfg-{uuid.uuid4().hex}"
    config = BusConfig.from_mapping({"interface": "virtual", "channel": channel, "faults": "loss=0.5,seed=9"})
    assert config.faults == FaultSpec(loss=0.5, seed=9) and "with faults (loss=0.5,seed=9)" in config.describe()
    with open_bus(config) as rx, can.Bus(interface="virtual", channel=channel) as tx:
        assert isinstance(rx, FaultBus) and "faults" in rx.channel_info
        for msg in _frames(400):
            tx.send(msg)
        got = _drain(rx)
        assert len(got) == 400 - rx.counters["rx_lost"] and 140 < rx.counters["rx_lost"] < 260
    assert BusConfig.resolve("virtual", ignore_config=True, faults="dup=0.1").faults == FaultSpec(dup=0.1)
    with pytest.raises(ConfigError):
        BusConfig(faults="loss=2")


def test_open_bus_wraps_udp_multicast_under_a_notifier() -> None:
    rng = random.SystemRandom()
    group = f"239.{rng.randrange(1, 255)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    port = rng.randrange(20000, 60000)
    try:
        tx = open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port}))
    except TransportError as exc:
        pytest.skip(f"this host cannot create IPv4 multicast sockets: {exc}")
    rx = open_bus(BusConfig(interface="udp_multicast", channel=group, kwargs={"port": port}, faults="dup=1,seed=1"))
    got: list[can.Message] = []
    notifier = can.Notifier(rx, [got.append], timeout=0.05)
    try:
        assert isinstance(rx, FaultBus) and isinstance(rx.inner, EchoFilteringUdpMulticastBus)
        tx.send(can.Message(arbitration_id=0x18FF50E5, data=b"\x01"))
        deadline = time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [bytes(m.data) for m in got] == [b"\x01", b"\x01"] and rx.counters["rx_duplicated"] == 1
    finally:
        notifier.stop()
        rx.shutdown()
        tx.shutdown()
    assert rx.inner._is_shutdown  # the wrapper owns the interface it opened
