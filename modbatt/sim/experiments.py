"""Experiments for ``modbatt sweep`` (module-level functions, so worker processes can pickle them)."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

from ..errors import ConfigError
from .busmodel import BUSES
from .cpu import platforms
from .design import design_point, resolve_platforms
from .latency import run_level
from .load import simulate_pack_load
from .transactions import LEVELS, PROTOCOLS

__all__ = ["SWEEP_EXPERIMENTS"]


def _check(name: str, value: Any, known: Any) -> None:
    if value not in known:
        raise ConfigError(f"unknown {name} {value!r}; known: {', '.join(map(str, known))}")


def _sweep_level_latency(
    level: str, platform: str = "HOST", bus: str = "classic 500k", stuffing: str = "worst", protocol: str = "seed"
) -> dict[str, Any]:
    """One transaction's latency on an idle bus (see :func:`~modbatt.sim.latency.run_level`)."""
    _check("level", level, LEVELS)
    _check("platform", platform, ("HOST", "MCU"))
    _check("bus", bus, BUSES)
    _check("protocol", protocol, PROTOCOLS)
    return run_level(level, platforms()[platform], BUSES[bus], protocol=protocol, stuffing=stuffing)


def _sweep_pack_load(
    modules: int = 31, bus: str = "classic 250k", duration: float = 10.0, stuffing: str = "worst",
    protocol: str = "seed",
) -> list[dict[str, Any]]:  # fmt: skip
    """Per-class rows of :func:`~modbatt.sim.load.simulate_pack_load`, each with the run's bus load attached."""
    _check("bus", bus, BUSES)
    _check("protocol", protocol, PROTOCOLS)
    result = simulate_pack_load(int(modules), bus, duration=float(duration), stuffing=stuffing, protocol=protocol)
    summary = result.summary
    return [{**row, "bus_load": summary["bus_load"], "frames_per_s": summary["frames_per_s"]} for row in result.rows]


def _sweep_design_space(
    protocol: str, bus: str, modules: int, platform: str = "STM32WB55 / ATmega64M1", stuffing: str = "worst",
    cpu_file: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The four budgets at one design point (see :func:`~modbatt.sim.design.design_space`).

    ``platform`` is ``"PACK / MODULE"`` or one CPU for both ends, over the built-in profiles and
    ``cpu_file`` (a profile file, docs/simulation.md §4).
    """
    _check("protocol", protocol, PROTOCOLS)
    _check("bus", bus, BUSES)
    if not 1 <= int(modules) <= 31:
        raise ConfigError(f"modules must be 1-31, not {modules!r}")
    (plat,) = resolve_platforms([platform], cpu_files=[cpu_file] if cpu_file else []).values()
    return design_point(protocol, plat, bus, int(modules), stuffing=stuffing)


#: Experiments for ``modbatt sweep``, merged into :data:`modbatt.workbench.sweep.EXPERIMENTS`.
SWEEP_EXPERIMENTS: Final = MappingProxyType(
    {"level_latency": _sweep_level_latency, "pack_load": _sweep_pack_load, "design_space": _sweep_design_space}
)
