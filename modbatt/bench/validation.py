"""Validation hierarchy: host cost, messages and CAN frames per level (1-7).

Each level runs end to end between in-memory nodes (bound and paired first, not timed): every
message built, signed/MACed, encoded, decoded and verified by its receiver, ledger statements
appended (in-memory SQLite) where the level records one. ``host_us`` is the median wall time per
run on one core of this host (everything is single-threaded CPU work), per protocol profile
(docs/profiles.md); the devices idle, untimed, before each run (under ``efficient`` they fill
their level-3 ephemeral pools then). Frames are ISO-TP frames
including flow control for each message's canonical-CBOR bytes; wire time is the worst case
(stuffing) on classic CAN at 1 Mbit/s and at the module bus's 250 kbit/s.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

from ..can.wiretime import CLASSIC, FD, isotp_frame_lengths, message_time
from ..model.access import AccessData, LctRef, TransportProtocol
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..nodes.paired import paired_deployment
from ..nodes.validation import LEVELS, ValidationContext

NAME = "validation"
DESCRIPTION = "validation levels 1-7: host µs per run, messages, bytes, classic/FD CAN frames and wire time"

_CAN_250K = dataclasses.replace(CLASSIC, name="classic-250k", nominal_bitrate=250_000)


def build_context(profile: ProtocolProfile = DEFAULT_PROFILE) -> ValidationContext:
    """A bound and paired pack + module with an in-memory controller and ledger, paired under ``profile``."""
    lct = LctRef("lct:web4:bench-pack", "bench-ledger")
    pack = AccessData("http://pack.invalid", TransportProtocol.HTTP, "pack-01", lct)
    return paired_deployment(profile=profile, clock=time.time, pack_access=pack).validation(1)


def _host_seconds(ctx: ValidationContext, fn: Callable[[ValidationContext], object], runs: int) -> float:
    """Median seconds of one run of a level; the devices idle (untimed) before each, as between levels."""
    samples = []
    for _ in range(runs):
        ctx.idle()
        t0 = time.perf_counter()
        fn(ctx)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def run(quick: bool, profiles: tuple[ProtocolProfile, ...] = tuple(ProtocolProfile)) -> list[dict]:
    """Per protocol profile and level: host time, messages, bytes, frames and wire time."""
    return [row for profile in profiles for row in _rows(profile, quick)]


def _rows(profile: ProtocolProfile, quick: bool) -> list[dict]:
    ctx = build_context(profile)
    rows = []
    for level, fn in LEVELS.items():
        ctx.idle()
        facts = fn(ctx)
        seconds = _host_seconds(ctx, fn, 15 if quick else 60)
        sizes = facts["bytes"]
        classic = [isotp_frame_lengths(n, CLASSIC) for n in sizes]
        fd = [isotp_frame_lengths(n, FD) for n in sizes]
        rows.append(
            {
                "profile": profile.value,
                "level": level,
                "host_us": round(seconds * 1e6, 1),
                "messages": len(sizes),
                "bytes": sum(sizes),
                "largest": max(sizes),
                "classic_frames": sum(len(f) for f in classic),
                "fd_frames": sum(len(f) for f in fd),
                "classic_1M_wire_ms": round(sum(message_time(CLASSIC, f) for f in classic) * 1e3, 2),
                "classic_250k_wire_ms": round(sum(message_time(_CAN_250K, f) for f in classic) * 1e3, 2),
            }
        )
    ctx.controller.ledger.close()
    return rows
