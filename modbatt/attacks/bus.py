"""Bus attackers: fragment injection, reassembly exhaustion, flooding with bad MACs and random IDs.

The broadcast transport carries bytes, not trust: the CRC-32 catches mixed-up or injected
fragments, the reassembler's hard limits bound memory and refuse new work rather than evict old
work, and whatever is reassembled still has to pass its own signature. Flooding a receiver only
moves its reject counters; the replay window and memory stay put and genuine frames still verify.
"""

from __future__ import annotations

import contextlib
import random
import sys
from typing import Any

from ..can.fragment import Reassembler, ReassemblyLimits, fragment_message
from ..can.ids import SEED_LAYOUT, CanIdFields
from ..errors import Reason, VerificationError
from ..model.policy import MessageClass
from . import onbus
from ._world import paired_pack
from .outcome import Outcome, counted
from .registry import scenario

FAMILY = "bus"


def _node_of(can_id: int) -> int:
    return can_id & 0xFF


def _heard(can_id: int, data: bytes) -> bytes:
    """A fragment as the victim's handle heard it: sent by the attacker's node on the attack bus, if any."""
    bus = onbus.active()
    return data if bus is None else bus.hear(can_id, data)


def _feed(asm: Reassembler, can_id: int, data: bytes, t: float) -> list:
    return asm.feed(can_id, _heard(can_id, data), t)


def _heard_many(frames: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Many frames as the victim's handle heard them (in arrival order), or as they are in process."""
    bus = onbus.active()
    if bus is None:
        return frames
    return [(m.arbitration_id, bytes(m.data)) for m in bus.hear_many(frames)]


def _channel(link: object) -> Any:
    """The channel itself: a unit the reassembler completed already crossed the bus as fragments."""
    return getattr(link, "channel", link)


@scenario("fragment_injection", family=FAMILY, expected=("detected", "hash_mismatch"))
def fragment_injection(seed: int | None = None) -> Outcome:
    """Race forged fragments into a signed announce's broadcast transfer; then a self-consistent forgery."""
    pack = paired_pack(seed)
    tx, rx = pack.link(1, "module"), _channel(pack.link(1, "pack"))
    unit = tx.send(MessageClass.IDENTITY, b"module-01 announce")
    frames = fragment_message(unit.data, 3)
    asm = Reassembler(sender_of=_node_of)
    t = 0.0
    # 1. a forged fragment 2 races ahead of the real one: the real copy is a duplicate, the CRC fails.
    _feed(asm, unit.can_id, frames[0], t)
    _feed(asm, unit.can_id, frames[1], t)
    _feed(asm, unit.can_id, frames[2][:2] + bytes(len(frames[2]) - 2), t)
    delivered = [m for f in frames[2:] for m in _feed(asm, unit.can_id, f, t)]
    # 2. the sender repeats with a new transfer id; the real message arrives whole and verifies.
    for f in fragment_message(unit.data, 4):
        delivered += _feed(asm, unit.can_id, f, t + 0.01)
    verified = 0
    for msg in delivered:
        rx.receive(msg.can_id, msg.payload, reassembled=True)
        verified += 1
    # 3. a forger who computes a valid CRC over edited bytes: reassembled, then the signature fails.
    edited = bytearray(unit.data)
    edited[6] ^= 0x80  # a fresh freshness value, so the replay window lets it through to the signature
    edited[9] ^= 0x01
    for f in fragment_message(bytes(edited), 5):
        for msg in _feed(asm, unit.can_id, f, t + 0.02):
            with contextlib.suppress(VerificationError):
                rx.receive(msg.can_id, msg.payload, reassembled=True)
    counters = {**counted("reassembler.drops", asm.drops), **counted("pack_link.rejects", rx.rejects)}
    counters.update(completed=asm.completed, verified=verified)
    pack.close()
    ok = asm.drops[Reason.HASH_MISMATCH] >= 1 and verified == 1 and rx.rejects[Reason.BAD_SIGNATURE] == 1
    if not ok:
        return Outcome("succeeded", "accepted", counters, "an injected fragment went unnoticed")
    return Outcome("detected", Reason.HASH_MISMATCH.value, counters, "CRC drops the mix; the signature drops forgeries")


@scenario("reassembly_exhaustion", family=FAMILY, expected=("detected", "exhausted"))
def reassembly_exhaustion(seed: int | None = None) -> Outcome:
    """Open thousands of 4 KiB transfers from spoofed senders and trickle them to hold every slot."""
    rng = random.Random(seed)
    lim = ReassemblyLimits()
    asm = Reassembler(lim, sender_of=_node_of)
    peak = {"buffered": 0, "active": 0, "tombstones": 0}
    t = 0.0
    flood: list[tuple[int, bytes]] = []
    for i in range(5000):
        node = rng.randrange(0x20, 0xFF)
        can_id = SEED_LAYOUT.encode(CanIdFields(function=0x001, node=node))  # announce, a spoofed node id
        first = (i % 16 << 12).to_bytes(2, "big") + (4095).to_bytes(2, "big") + bytes(4)
        flood += [(can_id, first), (can_id, ((i % 16 << 12) | rng.randrange(1, 600)).to_bytes(2, "big") + bytes(6))]
    for i, (can_id, data) in enumerate(_heard_many(flood)):
        asm.feed(can_id, data, t)
        if i % 2 == 0:
            continue  # one step per spoofed transfer: its first fragment and a trickled one
        t += 0.0001
        peak = {
            k: max(v, n)
            for (k, v), n in zip(peak.items(), (asm.buffered_bytes, asm.active_transfers, asm.tombstones), strict=True)
        }
    # A genuine 600-byte message during the flood is refused, and gets through once the flood's
    # transfers time out (the refusal policy delays new work; it never evicts old work).
    genuine = bytes(range(256)) * 2 + bytes(88)
    during = [m for f in fragment_message(genuine, 0) for m in _feed(asm, 0x10001, f, t)]
    later = [m for f in fragment_message(genuine, 1) for m in _feed(asm, 0x10001, f, t + lim.transfer_timeout + 1)]
    counters = counted("reassembler.drops", asm.drops)
    counters.update({f"peak_{k}": v for k, v in peak.items()})
    counters.update(genuine_during_flood=len(during), genuine_after_timeout=len(later))
    bounded = (
        peak["buffered"] <= lim.max_buffered_bytes and peak["active"] <= lim.max_transfers
        and peak["tombstones"] <= lim.max_tombstones
    )  # fmt: skip
    if not bounded or len(later) != 1 or later[0].payload != genuine:
        return Outcome("succeeded", "unbounded", counters, "reassembly state outgrew its limits or lost a message")
    return Outcome("detected", Reason.EXHAUSTED.value, counters, "hard limits: refused and counted, memory bounded")


@scenario("bus_flood", family=FAMILY, expected=("detected", "bad_mac"))
def bus_flood(seed: int | None = None) -> Outcome:
    """20 000 frames with random IDs and data, and 20 000 with valid IDs but bad MACs, at one receiver."""
    rng = random.Random(seed)
    pack = paired_pack(seed)
    tx, rx = pack.link(1, "module"), pack.link(1, "pack")
    genuine = tx.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    real_id = genuine.can_id
    window_before = rx.window_state()
    flood: list[tuple[int, bytes]] = []
    for _ in range(20_000):
        flood.append((rng.getrandbits(29), rng.randbytes(rng.randrange(0, 9))))
        flood.append((real_id, rng.randbytes(len(genuine.data))))
    target = _channel(rx)  # each flood frame as the victim's handle heard it, into its channel
    for can_id, data in _heard_many(flood):
        with contextlib.suppress(VerificationError):
            target.receive(can_id, data)
    window_after = rx.window_state()
    cache = SEED_LAYOUT.decode.cache_info()  # type: ignore[attr-defined]
    got = rx.receive(genuine.can_id, genuine.data)  # the genuine frame still verifies after the flood
    assert got is not None
    counters = counted("pack_link.rejects", rx.rejects)
    counters.update(
        frames=40_000, genuine_verified=int(got.payload == b"\x0c\x80"), decode_cache=cache.currsize,
        decode_cache_max=cache.maxsize or 0, window_moved=int(window_before != window_after),
        link_bytes=sys.getsizeof(rx.rejects),
    )  # fmt: skip
    pack.close()
    if window_before != window_after or got.payload != b"\x0c\x80" or cache.currsize > (cache.maxsize or 0):
        return Outcome("succeeded", "state_moved", counters, "the flood changed receiver state")
    # A classic 4-byte tag is forged with probability 2^-32 per try; at 40 000 tries the odds are ~1e-5.
    return Outcome("detected", Reason.BAD_MAC.value, counters, "counted by reason; no state moved")
