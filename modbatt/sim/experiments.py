"""Experiments for ``modbatt sweep`` (module-level functions, so worker processes can pickle them)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

from .busmodel import BUSES
from .cpu import platforms
from .latency import run_level
from .load import simulate_pack_load
from .transactions import LEVELS

__all__ = ["SWEEP_EXPERIMENTS"]


def _sweep_level_latency(
    level: str, platform: str = "HOST", bus: str = "classic 500k", stuffing: str = "worst"
) -> dict[str, Any]:
    """One transaction's latency row (see :func:`run_level`); ``bus`` is a name in :data:`BUSES`."""
    if level not in LEVELS or bus not in BUSES or platform not in ("HOST", "MCU"):
        raise ValueError(f"unknown level {level!r}, platform {platform!r} or bus {bus!r}")
    return run_level(level, platforms()[platform], BUSES[bus], stuffing=stuffing)


def _sweep_pack_load(
    modules: int = 31, bus: str = "classic 250k", duration: float = 10.0, stuffing: str = "worst"
) -> list[dict[str, Any]]:
    """Per-class rows of :func:`simulate_pack_load`, each with the run's bus load attached."""
    result = simulate_pack_load(int(modules), bus, duration=float(duration), stuffing=stuffing)
    summary = result.summary
    return [{**row, "bus_load": summary["bus_load"], "frames_per_s": summary["frames_per_s"]} for row in result.rows]


#: Experiments for ``modbatt sweep`` (module-level functions, so worker processes can pickle them).
SWEEP_EXPERIMENTS: Final = MappingProxyType({"level_latency": _sweep_level_latency, "pack_load": _sweep_pack_load})
