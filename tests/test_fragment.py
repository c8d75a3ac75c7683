"""Large payloads: ISO-TP on python-can's virtual bus, and the bounded broadcast reassembler."""

from __future__ import annotations

import os
import random
import threading
import uuid
import zlib
from collections.abc import Generator

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modbatt.can import fragment as fr
from modbatt.can.fragment import Fragmenter, Reassembler, ReassemblyLimits
from modbatt.errors import ConfigError, Reason
from modbatt.transport.isotp_link import IsoTpLink

CARRIER = 0x1800_1001  # any carrier ID; the reassembler does not interpret it


def _feed_all(r: Reassembler, frames: list[bytes], now: float = 0.0, can_id: int = CARRIER) -> list[bytes]:
    out: list[bytes] = []
    for f in frames:
        out += [m.payload for m in r.feed(can_id, f, now)]
    return out


# -- format ---------------------------------------------------------------------------------


def test_header_layout_classic() -> None:
    msg = bytes(range(10))
    frames = fr.fragment_message(msg, transfer_id=5, pad_classic=False)
    stream = msg + zlib.crc32(msg).to_bytes(4, "big")
    assert frames[0] == bytes([0x50, 0x00, 0x00, 10]) + stream[:4]
    assert frames[1] == bytes([0x50, 0x01]) + stream[4:10]
    assert frames[2] == bytes([0x50, 0x02]) + stream[10:14]  # short last frame, no padding
    assert fr.fragment_count(10) == 3
    padded = fr.fragment_message(msg, transfer_id=5)  # default: pad to DLC 8
    assert padded[2] == frames[2] + bytes([fr.PAD_BYTE, fr.PAD_BYTE])


def test_high_index_bits_and_4k_message() -> None:
    frames = Fragmenter().fragment(os.urandom(fr.MAX_PAYLOAD))
    assert len(frames) == fr.fragment_count(fr.MAX_PAYLOAD) == 684
    assert frames[300][:2] == (300).to_bytes(2, "big")
    assert all(len(f) == 8 for f in frames[:-1])


def test_fd_frames_use_valid_lengths() -> None:
    for size in (0, 1, 59, 60, 61, 100, 1000, fr.MAX_PAYLOAD):
        for f in fr.fragment_message(os.urandom(size), 0, mtu=64):
            assert len(f) <= 8 or len(f) in fr.FD_LENGTHS


def test_fragmenter_cycles_transfer_ids_and_refuses_oversize() -> None:
    f = Fragmenter(first_transfer_id=14)
    assert [f.fragment(b"x")[0][0] >> 4 for _ in range(3)] == [14, 15, 0]
    with pytest.raises(ConfigError):
        f.fragment(bytes(fr.MAX_PAYLOAD + 1))
    with pytest.raises(ConfigError):
        Fragmenter(mtu=10)
    with pytest.raises(ConfigError):
        ReassemblyLimits(max_message_size=70_000)


# -- reassembly: success ------------------------------------------------------------------------


@pytest.mark.parametrize("mtu", [8, 64])
@pytest.mark.parametrize("size", [0, 1, 4, 100, 577, fr.MAX_PAYLOAD])
def test_in_order(mtu: int, size: int) -> None:
    msg = os.urandom(size)
    r = Reassembler(ReassemblyLimits(mtu=mtu))
    assert _feed_all(r, Fragmenter(mtu=mtu).fragment(msg)) == [msg]
    assert r.buffered_bytes == 0 and r.active_transfers == 0 and not r.drops


def test_out_of_order_and_interleaved_senders() -> None:
    rng = random.Random(7)
    msgs = {0x101: os.urandom(700), 0x102: os.urandom(300)}
    tagged = [(cid, f) for cid, m in msgs.items() for f in Fragmenter().fragment(m)]
    rng.shuffle(tagged)
    r = Reassembler()
    got = {}
    for cid, f in tagged:
        for m in r.feed(cid, f, 0.1):
            got[m.can_id] = m.payload
    assert got == msgs and not r.drops


def test_reassembled_message_metadata() -> None:
    r = Reassembler()
    frames = Fragmenter(first_transfer_id=9).fragment(b"announce+signature" * 10)
    out = [m for i, f in enumerate(frames) for m in r.feed(CARRIER, f, 1.0 + i * 0.01)]
    (m,) = out
    assert (m.can_id, m.sender, m.transfer_id) == (CARRIER, CARRIER, 9)
    assert m.started == 1.0 and m.completed == pytest.approx(1.0 + (len(frames) - 1) * 0.01)


# -- reassembly: every drop class ----------------------------------------------------------------


def test_duplicate_fragment_keeps_first_copy() -> None:
    msg = os.urandom(50)
    frames = Fragmenter().fragment(msg)
    r = Reassembler()
    out = _feed_all(r, [frames[0], frames[1], frames[1]])
    forged = frames[2][:2] + bytes(len(frames[2]) - 2)
    out += _feed_all(r, [frames[2], forged, *frames[3:]])  # a later forgery cannot replace it
    assert out == [msg]
    assert r.drops == {Reason.DUPLICATE: 2}
    assert r.counters() == {"duplicate": 2, "completed": 1, "active": 0, "buffered_bytes": 0}


def test_late_copy_after_delivery_is_duplicate_not_a_second_message() -> None:
    msg = b"short"  # one classic fragment pair
    frames = Fragmenter().fragment(msg)
    r = Reassembler()
    assert _feed_all(r, frames) == [msg]
    assert _feed_all(r, frames, now=0.5) == []
    assert r.drops == {Reason.DUPLICATE: len(frames)}
    # The sender reusing the id later with a new message is a new transfer, not a copy.
    f = Fragmenter()
    again = f.fragment(b"other")
    assert _feed_all(r, again, now=0.6) == [b"other"]


def test_injected_fragment_breaks_crc() -> None:
    msg = os.urandom(40)
    frames = Fragmenter().fragment(msg)
    injected = frames[3][:2] + bytes(b ^ 0xFF for b in frames[3][2:])
    r = Reassembler()
    # The forgery races ahead of the genuine fragment 3, which is then the duplicate.
    out = _feed_all(r, [*frames[:3], injected, *frames[3:]])
    assert out == []
    assert r.drops == {Reason.DUPLICATE: 1, Reason.HASH_MISMATCH: 1}
    assert r.buffered_bytes == 0 and r.active_transfers == 0
    # Fragments still arriving for the abandoned transfer are stale, not a new transfer.
    assert _feed_all(r, frames[5:7], now=0.2) == []
    assert r.drops[Reason.STALE] == 2 and r.active_transfers == 0


def test_oversized() -> None:
    r = Reassembler(ReassemblyLimits(max_message_size=256))
    too_big = fr.fragment_message(os.urandom(300), 0)
    assert _feed_all(r, too_big[:1]) == []  # announced total > limit
    assert _feed_all(r, too_big[50:51]) == []  # index past the limit, total unknown
    assert r.drops == {Reason.OVERSIZED: 2}
    assert r.buffered_bytes == 0 and r.active_transfers == 0


@pytest.mark.parametrize(
    "data",
    [
        b"",  # empty
        b"\x00",  # shorter than the header
        b"\x00\x00\x00",  # fragment 0 without total
        b"\x00\x05",  # fragment 5, no data
        bytes(9),  # longer than the classic mtu
    ],
)
def test_malformed_frames(data: bytes) -> None:
    r = Reassembler()
    assert r.feed(CARRIER, data, 0.0) == []
    assert r.drops == {Reason.MALFORMED: 1}
    assert r.buffered_bytes == 0


def test_malformed_lengths_and_types() -> None:
    r = Reassembler()
    frames = Fragmenter().fragment(os.urandom(30))
    short_middle = frames[2][:-1]  # a middle fragment shorter than its slot
    assert _feed_all(r, [frames[0], frames[1], short_middle]) == []
    assert r.drops == {Reason.MALFORMED: 1} and r.active_transfers == 0
    beyond = fr.fragment_message(os.urandom(500), 1)[40]  # index 40 of a 2-fragment transfer
    assert _feed_all(r, [fr.fragment_message(b"x", 1)[0], beyond]) == []
    assert r.drops[Reason.MALFORMED] == 2
    assert r.feed(CARRIER, "text", 0.0) == []  # type: ignore[arg-type]
    assert r.feed(-1, b"\x00\x00\x00\x01x", 0.0) == []
    assert r.drops[Reason.MALFORMED] == 4


def test_timeouts_gap_and_lifetime_then_stale() -> None:
    lim = ReassemblyLimits(gap_timeout=1.0, transfer_timeout=3.0, tombstone_ttl=5.0)
    r = Reassembler(lim)
    frames = Fragmenter().fragment(os.urandom(200))
    _feed_all(r, frames[:5], now=0.0)
    assert r.expire(1.0) == 0 and r.active_transfers == 1  # exactly at the limit is still alive
    assert r.feed(CARRIER, frames[5], 1.5) == []  # 1.5 s of silence > gap_timeout
    assert r.drops == {Reason.TIMEOUT: 1, Reason.STALE: 1}
    assert r.buffered_bytes == 0
    # A trickle that keeps within the gap still ends at transfer_timeout.
    r2 = Reassembler(lim)
    t = 0.0
    for f in frames[:10]:
        r2.feed(CARRIER, f, t)
        t += 0.9
    assert r2.drops[Reason.TIMEOUT] == 1
    # Once the tombstone ages out, a fragment opens a new (doomed) transfer instead of STALE.
    r.feed(CARRIER, frames[6], 100.0)
    assert r.active_transfers == 1 and r.drops[Reason.STALE] == 1


def test_concurrency_limits() -> None:
    lim = ReassemblyLimits(max_transfers=3, max_transfers_per_sender=2)
    r = Reassembler(lim, sender_of=lambda cid: cid & 0xFF)
    f = Fragmenter()
    firsts = [f.fragment(os.urandom(100))[0] for _ in range(3)]
    r.feed(0x1001, firsts[0], 0.0)
    r.feed(0x2001, firsts[1], 0.0)  # same sender 0x01 through another carrier ID
    r.feed(0x3001, firsts[2], 0.0)
    assert r.drops == {Reason.RATE_LIMITED: 1}
    assert r.transfers_of(0x01) == 2
    r.feed(0x1002, firsts[0], 0.0)
    r.feed(0x1003, firsts[0], 0.0)
    assert r.drops[Reason.EXHAUSTED] == 1 and r.active_transfers == 3


def test_buffer_budget() -> None:
    lim = ReassemblyLimits(max_buffered_bytes=100)
    r = Reassembler(lim)
    frames = Fragmenter().fragment(os.urandom(300))
    _feed_all(r, frames)
    assert r.drops == {Reason.EXHAUSTED: 1, Reason.STALE: len(frames) - 18}
    assert r.buffered_bytes == 0


def test_clock_stepping_back_does_not_extend_deadlines() -> None:
    r = Reassembler(ReassemblyLimits(gap_timeout=1.0))
    frames = Fragmenter().fragment(os.urandom(100))
    r.feed(CARRIER, frames[0], 10.0)
    r.feed(CARRIER, frames[1], 2.0)  # clock jumped back: treated as 10.0
    assert r.expire(11.5) == 1


def test_drop_hook_sees_reason() -> None:
    seen = []
    r = Reassembler(on_drop=lambda cid, exc: seen.append((cid, exc.reason)))
    r.feed(0x42, b"\x01", 0.0)
    assert seen == [(0x42, Reason.MALFORMED)]


# -- bounded state, whatever arrives ---------------------------------------------------------------

_LIM = ReassemblyLimits(
    max_message_size=512,
    max_transfers=4,
    max_transfers_per_sender=2,
    max_buffered_bytes=700,
    gap_timeout=0.5,
    transfer_timeout=2.0,
    max_tombstones=6,
    tombstone_ttl=1.0,
)


def _frame_strategy() -> st.SearchStrategy[bytes]:
    # Headers biased to few transfer ids and small indices so transfers actually build up.
    header = st.builds(
        lambda tid, idx: ((tid << 12) | idx).to_bytes(2, "big"),
        st.integers(0, 3),
        st.one_of(st.integers(0, 8), st.integers(0, 0xFFF)),
    )
    total = st.integers(0, 600).map(lambda n: n.to_bytes(2, "big"))
    body = st.binary(min_size=0, max_size=8)
    raw = st.binary(min_size=0, max_size=10)
    return st.one_of(st.builds(lambda h, t, b: (h + t + b)[:10], header, total, body), raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from([0x10, 0x11, 0x20, 0x1FFF_FFFF]), _frame_strategy(), st.floats(0, 0.4)),
        max_size=300,
    )
)
def test_random_frames_keep_state_bounded(ops: list[tuple[int, bytes, float]]) -> None:
    r = Reassembler(_LIM, sender_of=lambda cid: cid >> 4)
    now = 0.0
    for can_id, data, dt in ops:
        now += dt
        for m in r.feed(can_id, data, now):
            assert len(m.payload) <= _LIM.max_message_size
        assert r.buffered_bytes <= _LIM.max_buffered_bytes
        assert r.active_transfers <= _LIM.max_transfers
        assert all(r.transfers_of(s) <= _LIM.max_transfers_per_sender for s in (0x1, 0x2, 0x1FFF_FFF))
        assert r.tombstones <= _LIM.max_tombstones
        held = sum(t.nbytes for t in r._transfers.values())
        assert held == r.buffered_bytes == sum(len(b) for t in r._transfers.values() for b in t.fragments.values())
    r.expire(now + 10)
    assert r.buffered_bytes == 0 and r.active_transfers == 0


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.randoms(use_true_random=False), st.integers(0, 15))
def test_any_order_with_duplicates_delivers_exactly_once(msg: bytes, rnd: random.Random, tid: int) -> None:
    frames = fr.fragment_message(msg, tid)
    noisy = frames + rnd.sample(frames, k=min(3, len(frames)))
    rnd.shuffle(noisy)
    r = Reassembler()
    out = _feed_all(r, noisy)
    assert out == [msg]
    assert r.buffered_bytes == 0


# -- ISO-TP on the virtual bus ---------------------------------------------------------------------


@pytest.fixture
def bus_pair() -> Generator[tuple[can.BusABC, can.BusABC], None, None]:
    channel = f"modbatt-isotp-{uuid.uuid4().hex}"  # private channel: tests must not hear each other
    a = can.Bus(interface="virtual", channel=channel)
    b = can.Bus(interface="virtual", channel=channel)
    yield a, b
    a.shutdown()
    b.shutdown()


@pytest.mark.parametrize("size", [7, 64, 1024])
def test_isotp_round_trip_29bit(bus_pair: tuple[can.BusABC, can.BusABC], size: int) -> None:
    a, b = bus_pair
    msg = os.urandom(size)
    with IsoTpLink(a, 0x18FF_0A01, 0x18FF_0A02) as left, IsoTpLink(b, 0x18FF_0A02, 0x18FF_0A01) as right:
        assert left.address.is_tx_29bits()
        left.send(msg)
        assert right.recv(timeout=2.0) == msg
        right.send(msg[::-1])
        assert left.recv(timeout=2.0) == msg[::-1]
        assert not left.errors and not right.errors


def test_isotp_fd_and_limits(bus_pair: tuple[can.BusABC, can.BusABC]) -> None:
    a, b = bus_pair
    msg = os.urandom(fr.MAX_PAYLOAD)
    with IsoTpLink(a, 0x701, 0x702, fd=True) as left, IsoTpLink(b, 0x702, 0x701, fd=True) as right:
        assert not left.address.is_tx_29bits()
        left.send(msg)
        assert right.recv(timeout=3.0) == msg
        assert right.recv(timeout=0.01) is None
        with pytest.raises(ConfigError):
            left.send(bytes(fr.MAX_PAYLOAD + 1))


def test_isotp_address_helpers() -> None:
    assert fr.isotp_address(0x100, 0x101).is_tx_29bits() is False
    assert fr.isotp_address(0x100, 0x101, extended=True).is_tx_29bits() is True
    with pytest.raises(ConfigError):
        fr.isotp_address(0x800, 0x101, extended=False)
    with pytest.raises(ConfigError):
        fr.isotp_address(0x100, 0x100)
    assert fr.isotp_params(fd=True)["tx_data_length"] == 64
    assert fr.isotp_params(stmin=5)["stmin"] == 5


def test_isotp_bad_params_leave_no_thread(bus_pair: tuple[can.BusABC, can.BusABC]) -> None:
    before = threading.active_count()
    with pytest.raises(ConfigError):
        IsoTpLink(bus_pair[0], 0x701, 0x702, params={"tx_data_length": 7})
    assert threading.active_count() == before
