"""Latency of one transaction alone on an idle bus, per level, protocol, platform and bus, against its budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import BusProfile
from .busmodel import BUSES, CanBusModel, wire_seconds
from .cpu import CpuProfile, Platform, platforms
from .eventloop import EventLoop
from .transactions import (
    BUDGET_SOURCE,
    BUDGETS,
    LEVELS,
    Compute,
    Process,
    ProfileModel,
    Transfer,
    level_steps,
    protocol_named,
    transaction,
    transfer_frames,
    unit_bytes,
)

__all__ = ["latency_table", "run_level", "step_rows"]


def run_level(
    level: str,
    platform: Platform,
    profile: BusProfile,
    *,
    protocol: ProfileModel | str = "seed",
    stuffing: str = "worst",
    node: int = 0x01,
    layout: IdLayout = SEED_LAYOUT,
) -> dict[str, Any]:
    """Simulate one transaction of ``level`` alone on an idle bus; return one tidy row."""
    proto = protocol if isinstance(protocol, ProfileModel) else protocol_named(protocol)
    loop = EventLoop()
    bus = CanBusModel(loop, profile, stuffing=stuffing)
    steps = level_steps(level, proto, profile)
    finished: list[float] = []
    proc = Process(loop, bus, transaction(steps, platform, profile, node, layout), lambda: finished.append(loop.now))
    loop.run()
    total = finished[0] - proc.start
    budget = BUDGETS[level]
    units = [s for s in steps if isinstance(s, Transfer)]

    def side(actor: str) -> float:
        return sum(
            platform.cpu(actor).cost(s.op, s.nbytes) for s in steps if isinstance(s, Compute) and s.actor == actor
        )

    return {
        "level": level,
        "protocol": proto.name,
        "platform": platform.name,
        "pack_cpu": platform.pack.name,
        "module_cpu": platform.module.name,
        "bus": profile.name,
        "fd": profile.fd,
        "nominal_bitrate": profile.nominal_bitrate,
        "data_bitrate": profile.data_bitrate if profile.brs else profile.nominal_bitrate,
        "stuffing": stuffing,
        "units": len(units),
        "unit_bytes": sum(unit_bytes(profile, s) for s in units),
        "frames": proc.frames,
        "wire_ms": proc.wire * 1e3,
        "queue_ms": max(total - proc.wire - proc.compute, 0.0) * 1e3,
        "compute_ms": proc.compute * 1e3,
        "pack_compute_ms": side("pack") * 1e3,
        "module_compute_ms": side("module") * 1e3,
        "latency_ms": total * 1e3,
        "budget_ms": budget * 1e3,
        "met": total <= budget,
        "margin_ms": (budget - total) * 1e3,
        "budget_source": BUDGET_SOURCE[level],
    }


def latency_table(
    levels: Iterable[str] | None = None,
    platform_names: Iterable[str] | None = None,
    buses: Iterable[str] | None = None,
    *,
    protocols: Iterable[str] = ("seed",),
    stuffing: str | Iterable[str] = "worst",
    host: CpuProfile | None = None,
    as_frame: bool = True,
) -> Any:
    """Latency per level × protocol × platform × bus (× stuffing) on an idle bus: a DataFrame (or list of dicts).

    Columns: level, protocol, platform, pack_cpu, module_cpu, bus, fd, nominal_bitrate,
    data_bitrate, stuffing, units, unit_bytes, frames, wire_ms, queue_ms, compute_ms,
    pack_compute_ms, module_compute_ms, latency_ms, budget_ms, met, margin_ms (budget − latency;
    negative = missed by that much), budget_source.
    """
    plats = platforms(host)
    stuffings = [stuffing] if isinstance(stuffing, str) else list(stuffing)
    rows = [
        run_level(level, plats[p], BUSES[b], protocol=proto, stuffing=s)
        for level in (levels or LEVELS)
        for proto in protocols
        for p in (platform_names or plats)
        for b in (buses or BUSES)
        for s in stuffings
    ]
    if not as_frame:
        return rows
    import pandas as pd  # deferred: pandas costs ~0.3 s to import

    return pd.DataFrame(rows)


def step_rows(
    level: str,
    platform: Platform,
    profile: BusProfile,
    *,
    protocol: ProfileModel | str = "seed",
    stuffing: str = "worst",
    queue_ms: dict[int, float] | None = None,
) -> list[dict[str, Any]]:
    """One row per step of a transaction: who, what, and its compute or wire (and queueing) time.

    ``queue_ms`` optionally adds a queueing delay per transfer step (by step index), as measured
    under a pack's load by :func:`modbatt.sim.design.design_point`.
    """
    proto = protocol if isinstance(protocol, ProfileModel) else protocol_named(protocol)
    rows = []
    for i, step in enumerate(level_steps(level, proto, profile)):
        if isinstance(step, Compute):
            rows.append({"step": i, "actor": step.actor, "kind": "compute", "what": step.label or step.op,
                         "op": step.op, "bytes": step.nbytes, "frames": 0,
                         "compute_ms": platform.cpu(step.actor).cost(step.op, step.nbytes) * 1e3,
                         "wire_ms": 0.0, "queue_ms": 0.0})  # fmt: skip
        else:
            frames = transfer_frames(profile, step)
            rows.append({"step": i, "actor": step.sender, "kind": "transfer", "what": step.label,
                         "op": f"{step.tier.label} unit", "bytes": unit_bytes(profile, step), "frames": len(frames),
                         "compute_ms": 0.0, "wire_ms": sum(wire_seconds(profile, n, stuffing) for n in frames) * 1e3,
                         "queue_ms": (queue_ms or {}).get(i, 0.0)})  # fmt: skip
    return rows
