"""Fuzzing the CAN decoders of untrusted bytes: identifiers, secured frames, the selective link,
resync answers, broadcast fragments. Only classified ``VerificationError``s; state within limits."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modbatt.attacks._world import paired_pack
from modbatt.can.fragment import Reassembler, ReassemblyLimits, fragment_message
from modbatt.can.ids import LAYOUTS
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.errors import VerificationError
from modbatt.model.policy import MessageClass
from modbatt.model.tier import Tier

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ids = st.one_of(st.integers(0, (1 << 29) - 1), st.integers(-(1 << 40), 1 << 40))


@pytest.fixture(scope="module")
def links():
    packs = {p.name: paired_pack(21) for p in (CLASSIC, FD)}  # a channel lives on one bus profile
    yield {name: (pack.link(1, "pack", profile=p), pack.link(1, "module", profile=p))
           for (name, pack), p in zip(packs.items(), (CLASSIC, FD), strict=True)}  # fmt: skip
    for pack in packs.values():
        pack.close()


@FAST
@given(can_id=ids)
def test_id_layout_decode_raises_only_classified_errors(can_id):
    for layout in LAYOUTS.values():
        with contextlib.suppress(VerificationError):
            layout.decode(can_id)
        assert layout.decode.cache_info().currsize <= 4096


def _windows(channel):
    return {t: (channel._link.receiver(t).window.highest, channel._link.receiver(t).window._bitmap) for t in Tier}


@FAST
@given(can_id=ids, data=st.binary(max_size=4200), reassembled=st.booleans(), profile=st.sampled_from(["classic", "fd"]))
def test_selective_link_receive_fuzz(links, can_id, data, reassembled, profile):
    _, rx = links[profile]
    before, rejects = _windows(rx), sum(rx.rejects.values())
    try:
        rx.receive(can_id, data, reassembled=reassembled)
    except VerificationError:
        assert sum(rx.rejects.values()) == rejects + 1  # every refusal counted, once
        assert _windows(rx) == before  # and it moved no freshness state
    # (acceptance of random bytes would need a 2^-32 tag guess; it would show as no exception)


@FAST
@given(
    can_id=ids,
    data=st.binary(max_size=200),
    tier=st.sampled_from(list(Tier)),
    profile=st.sampled_from(["classic", "fd"]),
)
def test_secured_receiver_open_and_resync_fuzz(links, can_id, data, tier, profile):
    _, rx = links[profile]
    receiver = rx._link.receiver(tier)
    for fn in (lambda: receiver.open(can_id, data), lambda: receiver.open(can_id, data, reassembled=True),
               lambda: receiver.accept_resync(can_id, data)):  # fmt: skip
        with contextlib.suppress(VerificationError):
            fn()


@FAST
@given(
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 7)), min_size=1, max_size=4),
    cls=st.sampled_from([MessageClass.CHARGE_COMMAND, MessageClass.VOLTAGE_TELEMETRY, MessageClass.IDENTITY]),
)
def test_bit_flipped_genuine_frames_are_refused(links, flips, cls):
    tx, rx = links["classic"]
    pdu = tx.send(cls, b"\x01\x02\x03")
    data = bytearray(pdu.data)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    if bytes(data) == pdu.data:
        return
    with pytest.raises(VerificationError):
        rx.receive(pdu.can_id, bytes(data), reassembled=not pdu.single_frame)


frames = st.tuples(st.integers(0, 0x1FFF_FFFF), st.binary(max_size=10), st.floats(0, 3, allow_nan=False))


@settings(max_examples=60, deadline=None)
@given(script=st.lists(frames, max_size=300), genuine=st.binary(min_size=1, max_size=300))
def test_reassembler_feed_fuzz_bounded_and_genuine_gets_through(script, genuine):
    lim = ReassemblyLimits()
    asm = Reassembler(lim, sender_of=lambda i: i & 0xFF)
    now = 0.0
    for can_id, data, dt in script:
        now += dt
        asm.feed(can_id, data, now)  # never raises
        assert asm.buffered_bytes <= lim.max_buffered_bytes
        assert asm.active_transfers <= lim.max_transfers
        assert asm.tombstones <= lim.max_tombstones
        assert all(asm.transfers_of(s) <= lim.max_transfers_per_sender for s in range(256))
    # Once the junk has timed out, a genuine message on a fresh id completes.
    now += lim.transfer_timeout + lim.tombstone_ttl + 1
    got = [m for f in fragment_message(genuine, 0) for m in asm.feed(0x1ABCDE0F, f, now)]
    assert [m.payload for m in got] == [genuine]
