"""Experiments for ``modbatt sweep`` (module-level functions, so worker processes can pickle them).

``profile`` is the protocol profile in every experiment (docs/profiles.md; the latency model also
knows the modelled-only ``ed25519``); result rows carry it as the point's ``profile`` column.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Final

from ..can.ids import MODULE_NODES
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


def _without_protocol(row: dict[str, Any]) -> dict[str, Any]:
    # The model's rows name the profile "protocol"; the sweep table has it once, as the point's "profile".
    return {k: v for k, v in row.items() if k != "protocol"}


def _sweep_level_latency(
    level: str, platform: str = "HOST", bus: str = "classic 500k", stuffing: str = "worst", profile: str = "seed"
) -> dict[str, Any]:
    """One transaction's latency on an idle bus (see :func:`~modbatt.sim.latency.run_level`)."""
    _check("level", level, LEVELS)
    _check("platform", platform, ("HOST", "MCU"))
    _check("bus", bus, BUSES)
    _check("profile", profile, PROTOCOLS)
    return _without_protocol(run_level(level, platforms()[platform], BUSES[bus], protocol=profile, stuffing=stuffing))


def _sweep_pack_load(
    modules: int = 31, bus: str = "classic 250k", duration: float = 10.0, stuffing: str = "worst",
    profile: str = "seed",
) -> list[dict[str, Any]]:  # fmt: skip
    """Per-class rows of :func:`~modbatt.sim.load.simulate_pack_load`, each with the run's bus load attached."""
    _check("bus", bus, BUSES)
    _check("profile", profile, PROTOCOLS)
    result = simulate_pack_load(int(modules), bus, duration=float(duration), stuffing=stuffing, protocol=profile)
    summary = result.summary
    return [
        _without_protocol({**row, "bus_load": summary["bus_load"], "frames_per_s": summary["frames_per_s"]})
        for row in result.rows
    ]


def _sweep_design_space(
    profile: str, bus: str, modules: int, platform: str = "STM32WB55 / ATmega64M1", stuffing: str = "worst",
    cpu_file: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The four budgets at one design point (see :func:`~modbatt.sim.design.design_space`).

    ``platform`` is ``"PACK / MODULE"`` or one CPU for both ends, over the built-in profiles and
    ``cpu_file`` (a profile file, docs/simulation.md §4).
    """
    _check("profile", profile, PROTOCOLS)
    _check("bus", bus, BUSES)
    if not 1 <= int(modules) <= len(MODULE_NODES):
        raise ConfigError(f"modules must be 1-31, not {modules!r}")
    (plat,) = resolve_platforms([platform], cpu_files=[cpu_file] if cpu_file else []).values()
    return [_without_protocol(row) for row in design_point(profile, plat, bus, int(modules), stuffing=stuffing)]


def _sweep_pack_simulation(
    modules: int = 4, profile: str = "seed", fd: bool = False, duration: float = 2.0, seed: int | None = None
) -> dict[str, Any]:
    """The functional pack simulator (:class:`~modbatt.sim.pack.PackSimulation`) on a private virtual bus:
    every frame really protected, sent and verified under the profile; its totals as one row."""
    from ..can.wiretime import CLASSIC, FD
    from ..model.profile import profile_named
    from .pack import PackSimulation

    with PackSimulation(int(modules), profile=FD if fd else CLASSIC, protocol=profile_named(profile),
                        seed=seed) as sim:  # fmt: skip
        stats = sim.run(float(duration))
    totals = stats.to_dict()
    return {
        "ok": stats.ok,
        "frames_tx": sum(stats.frames_tx.values()),
        "units_tx": sum(stats.units_tx.values()),
        "commands_sent": totals["commands_sent"],
        "acks_received": totals["acks_received"],
        "rejects": sum(stats.rejects.values()),
        "wall_seconds": round(stats.wall_seconds, 3),
    }


#: Experiments for ``modbatt sweep``, merged into :data:`modbatt.workbench.sweep.EXPERIMENTS`.
SWEEP_EXPERIMENTS: Final = MappingProxyType(
    {
        "level_latency": _sweep_level_latency,
        "pack_load": _sweep_pack_load,
        "design_space": _sweep_design_space,
        "pack_simulation": _sweep_pack_simulation,
    }
)
