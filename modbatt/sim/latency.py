"""Latency of one transaction alone on an idle bus, per level, platform and bus, against its budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import BusProfile
from .busmodel import BUSES, CanBusModel
from .cpu import CpuProfile, Platform, platforms
from .eventloop import EventLoop
from .transactions import _BUDGET_SOURCE, BUDGETS, LEVELS, Compute, Transfer, _Process, _transaction, _unit_bytes

__all__ = ["latency_table", "run_level"]


def run_level(
    level: str,
    platform: Platform,
    profile: BusProfile,
    *,
    stuffing: str = "worst",
    node: int = 0x01,
    layout: IdLayout = SEED_LAYOUT,
) -> dict[str, Any]:
    """Simulate one transaction of ``level`` alone on an idle bus; return one tidy row."""
    loop = EventLoop()
    bus = CanBusModel(loop, profile, stuffing=stuffing)
    steps = LEVELS[level](profile)
    finished: list[float] = []
    proc = _Process(loop, bus, _transaction(steps, platform, profile, node, layout), lambda: finished.append(loop.now))
    loop.run()
    total = finished[0] - proc.start
    budget = BUDGETS[level]
    units = [s for s in steps if isinstance(s, Transfer)]
    return {
        "level": level,
        "platform": platform.name,
        "pack_cpu": platform.pack.name,
        "module_cpu": platform.module.name,
        "bus": profile.name,
        "fd": profile.fd,
        "nominal_bitrate": profile.nominal_bitrate,
        "data_bitrate": profile.data_bitrate if profile.brs else profile.nominal_bitrate,
        "stuffing": stuffing,
        "units": len(units),
        "unit_bytes": sum(_unit_bytes(profile, s.tier, s.payload) for s in units),
        "frames": proc.frames,
        "wire_ms": proc.wire * 1e3,
        "queue_ms": max(total - proc.wire - proc.compute, 0.0) * 1e3,
        "compute_ms": proc.compute * 1e3,
        "pack_compute_ms": sum(
            platform.pack.cost(s.op, s.nbytes) for s in steps if isinstance(s, Compute) and s.actor == "pack"
        )
        * 1e3,
        "module_compute_ms": sum(
            platform.module.cost(s.op, s.nbytes) for s in steps if isinstance(s, Compute) and s.actor == "module"
        )
        * 1e3,
        "latency_ms": total * 1e3,
        "budget_ms": budget * 1e3,
        "met": total <= budget,
        "margin_ms": (budget - total) * 1e3,
        "budget_source": _BUDGET_SOURCE[level],
    }


def latency_table(
    levels: Iterable[str] | None = None,
    platform_names: Iterable[str] | None = None,
    buses: Iterable[str] | None = None,
    *,
    stuffing: str | Iterable[str] = "worst",
    host: CpuProfile | None = None,
    as_frame: bool = True,
) -> Any:
    """Latency per level × platform × bus (× stuffing): a pandas DataFrame (or list of dicts).

    Columns: level, platform, pack_cpu, module_cpu, bus, fd, nominal_bitrate, data_bitrate,
    stuffing, units, unit_bytes, frames, wire_ms, queue_ms, compute_ms, pack_compute_ms,
    module_compute_ms, latency_ms, budget_ms, met, margin_ms (budget − latency; negative = missed
    by that much), budget_source.
    """
    plats = platforms(host)
    stuffings = [stuffing] if isinstance(stuffing, str) else list(stuffing)
    rows = [
        run_level(level, plats[p], BUSES[b], stuffing=s)
        for level in (levels or LEVELS)
        for p in (platform_names or plats)
        for b in (buses or BUSES)
        for s in stuffings
    ]
    if not as_frame:
        return rows
    import pandas as pd  # deferred: pandas costs ~0.3 s to import

    return pd.DataFrame(rows)
