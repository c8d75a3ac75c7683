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
from ..crypto.keystore import KeyStore
from ..crypto.rng import SystemRandom
from ..crypto.suite import PrivateKey
from ..ledger import Ledger
from ..model.access import AccessData, LctRef, TransportProtocol
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..nodes.authority import authorize_binding
from ..nodes.controller import AuthController
from ..nodes.entity import EntityNode
from ..nodes.pairing_flow import pair_entities
from ..nodes.validation import LEVELS, ValidationContext
from ..transport.http import InProcessEntityClient

NAME = "validation"
DESCRIPTION = "validation levels 1-7: host µs per run, messages, bytes, classic/FD CAN frames and wire time"

_CAN_250K = dataclasses.replace(CLASSIC, name="classic-250k", nominal_bitrate=250_000)


def build_context(profile: ProtocolProfile = DEFAULT_PROFILE) -> ValidationContext:
    """A bound and paired pack + module with an in-memory controller and ledger, paired under ``profile``."""
    rng = SystemRandom()
    controller_key = PrivateKey.generate(rng)
    authority_key = PrivateKey.generate(rng)
    ledger = Ledger(":memory:", signer=controller_key)
    lct = LctRef("lct:web4:bench-pack", "bench-ledger")
    access = {
        "pack": AccessData("http://pack.invalid", TransportProtocol.HTTP, "pack-01", lct),
        "module": AccessData("can://can0/0x01", TransportProtocol.CAN, "module-01"),
    }
    nodes = {
        n: EntityNode.provision(KeyStore.in_memory(), access_data=a, controller_key=controller_key.public_key)
        for n, a in access.items()
    }
    controller = AuthController(
        controller_key=controller_key,
        authority_key=authority_key.public_key,
        ledger=ledger,
        client=InProcessEntityClient({a.endpoint: nodes[n] for n, a in access.items()}),
        records=KeyStore.in_memory(),
    )
    auth = authorize_binding(authority_key, nodes["pack"], nodes["module"], time.time(), rng)
    binding = controller.bind(access["pack"], access["module"], auth)
    pairing = pair_entities(controller, nodes["pack"], nodes["module"], binding.record.binding_id, profile=profile)
    return ValidationContext.from_nodes(
        controller, nodes["pack"], nodes["module"], binding.record.binding_id,
        pairing.certificate.metadata.pairing_id, record_index=binding.ledger_index,
    )  # fmt: skip


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
