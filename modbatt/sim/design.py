"""The design space: every protocol profile × platform × bus × pack size against the four budgets.

For one point the pack's routine traffic (:class:`~modbatt.sim.load.PackTraffic`, with the
protocol's command framing) runs on the simulated bus; each distinct unit the four budget levels
send is injected again and again across the traffic's 5-second cycle from the module with the
highest node id (its frames lose arbitration to every other module's), and the worst queueing
seen per unit is kept. A level's latency is then its compute (from the CPU profiles) plus, per
transfer, wire time and that worst queueing delay. Separately, the bus load and each CPU's load
from the routine traffic say whether the point is sustainable at all. docs/simulation.md §5.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from ..can.ids import MODULE_NODES
from .busmodel import BUSES, CanBusModel, wire_seconds
from .cpu import ATMEGA64M1, HOST_NAME, STM32WB55, STM32WB55_SW, CpuProfile, Platform, load_cpu_profile, measure_host
from .eventloop import EventLoop
from .latency import step_rows
from .load import PackTraffic, cpu_load
from .transactions import (
    BUDGET_LEVELS,
    BUDGETS,
    PROTOCOLS,
    Compute,
    Process,
    ProfileModel,
    Transfer,
    can_id,
    level_steps,
    protocol_named,
    send_unit,
    transfer_frames,
    unit_bytes,
)

__all__ = [
    "DESIGN_PLATFORMS",
    "answer_table",
    "breakdown",
    "design_point",
    "design_space",
    "resolve_platforms",
    "summary_table",
    "transfer_delays",
]

#: Platforms ("PACK / MODULE", or one CPU for both ends) the design space covers by default.
DESIGN_PLATFORMS: Final = (
    "STM32WB55",
    "STM32WB55 / ATmega64M1",
    "STM32WB55-sw",
    "STM32WB55-sw / ATmega64M1",
)
#: Short names of the budget levels for tables and figures.
SHORT: Final = {"L3 signed handshake": "L3", "L5 telemetry frame": "L5 telemetry", "L5 command + ack": "L5 ack",
                "L6 pairing validation": "L6"}  # fmt: skip
WARMUP_S: Final = 1.0  # every periodic message has started by then except the 5-s limits
WINDOW_S: Final = 5.0  # the traffic's longest period (safety limits)
SAMPLES: Final = 16  # injections per distinct unit
PATIENCE_S: Final = 1.0  # how long a starved injection holds back the next one


def resolve_platforms(
    names: Iterable[str], *, host: CpuProfile | None = None, cpu_files: Iterable[str] = ()
) -> dict[str, Platform]:
    """Platforms by name: ``"PACK / MODULE"`` or ``"CPU"`` (both ends) over the built-in and file profiles."""
    from ..errors import ConfigError

    names = list(names)
    cpus = {p.name: p for p in (STM32WB55, STM32WB55_SW, ATMEGA64M1)}
    if any(HOST_NAME in [part.strip() for part in n.split("/")] for n in names):
        cpus[HOST_NAME] = host or measure_host()
    for path in cpu_files:
        profile = load_cpu_profile(path)
        cpus[profile.name] = profile
    out = {}
    for name in names:
        parts = [part.strip() for part in name.split("/")]
        if len(parts) > 2 or any(part not in cpus for part in parts):
            raise ConfigError(f"unknown platform {name!r}: use 'PACK / MODULE' with CPUs {', '.join(cpus)}")
        pack, module = cpus[parts[0]], cpus[parts[-1]]
        out[name] = Platform(name, pack, module)
    return out


def _shape(t: Transfer) -> Transfer:
    return dataclasses.replace(t, label="")


def _shapes(protocol: ProfileModel, bus_name: str) -> list[Transfer]:
    seen: dict[Transfer, None] = {}
    for level in BUDGET_LEVELS:
        for step in level_steps(level, protocol, BUSES[bus_name]):
            if isinstance(step, Transfer):
                seen.setdefault(_shape(step))
    return list(seen)


@functools.lru_cache(maxsize=256)
def transfer_delays(
    protocol: str, bus: str, modules: int, stuffing: str = "worst", *, samples: int = SAMPLES
) -> tuple[dict[Transfer, float], float, bool]:
    """Worst queueing (s) per distinct unit of the budget levels under ``modules`` modules' traffic.

    Returns ``(queue by unit shape, offered bus load, complete)``; ``complete`` is false when some
    unit was still waiting at the end of the run (a saturated bus: the queue grows without bound,
    and the delay reported is a lower bound). Deterministic; cached per process.
    """
    proto, prof = protocol_named(protocol), BUSES[bus]
    loop = EventLoop()
    canbus = CanBusModel(loop, prof, stuffing=stuffing, keep_log=False)
    traffic = PackTraffic(loop, canbus, modules, protocol=proto)
    shapes = _shapes(proto, bus)
    worst: dict[Transfer, float] = {s: 0.0 for s in shapes}
    order = [shapes[i % len(shapes)] for i in range(samples * len(shapes))]  # every shape early on
    spacing = WINDOW_S / len(order)
    pending: dict[int, tuple[Transfer, float]] = {}  # injection -> (shape, start), while on its way
    state = {"next": 0}

    def advance(i: int) -> None:
        # One injection at a time, so injected units never queue behind each other; a unit that
        # is starved (saturated bus) holds the chain back at most PATIENCE_S.
        if state["next"] == i and i + 1 < len(order):
            state["next"] = i + 1
            loop.schedule(max(WARMUP_S + (i + 1) * spacing, loop.now), launch, i + 1)

    def launch(i: int) -> None:
        shape = order[i]
        d = 0 if shape.sender == "pack" else 1
        tx = can_id(traffic.layout, shape.message_class, shape.tier, modules, d)
        rx = can_id(traffic.layout, shape.message_class, shape.tier, modules, 1 - d)
        frames = transfer_frames(prof, shape)
        start = loop.now
        pending[i] = (shape, start)

        def done() -> None:
            wire = sum(wire_seconds(prof, n, stuffing) for n in frames)
            worst[shape] = max(worst[shape], loop.now - start - wire)
            del pending[i]
            advance(i)

        Process(loop, canbus, send_unit(tx, rx, frames, "design"), done)
        loop.call_later(PATIENCE_S, advance, i)

    loop.schedule(WARMUP_S, launch, 0)
    cap = WARMUP_S + 2 * WINDOW_S
    loop.run(until=WARMUP_S + WINDOW_S)
    while (pending or state["next"] < len(order) - 1) and loop.now < cap:
        loop.run(until=loop.now + 0.5)
    complete = not pending and state["next"] == len(order) - 1
    for shape, start in pending.values():  # still waiting: the delay is at least this long
        worst[shape] = max(worst[shape], loop.now - start)
    offered = traffic.analytic_load(loop.now, stuffing)
    return worst, offered, complete


def design_point(
    protocol: ProfileModel | str,
    platform: Platform,
    bus: str,
    modules: int,
    *,
    stuffing: str = "worst",
    levels: Sequence[str] = BUDGET_LEVELS,
) -> list[dict[str, Any]]:
    """One row per budget level for one protocol, platform, bus and pack size (see :func:`design_space`)."""
    proto = protocol if isinstance(protocol, ProfileModel) else protocol_named(protocol)
    prof = BUSES[bus]
    if not (platform.pack.supports(proto.ops) and platform.module.supports(proto.ops)):
        return []
    queues, offered, complete = transfer_delays(proto.name, bus, int(modules), stuffing)
    pack_load, module_load = cpu_load(proto, platform, prof, int(modules))
    sustainable = complete and offered < 1.0 and pack_load < 1.0 and module_load < 1.0
    rows = []
    for level in levels:
        steps = level_steps(level, proto, prof)
        compute = {"pack": 0.0, "module": 0.0}
        wire = queue = 0.0
        frames = nbytes = 0
        for step in steps:
            if isinstance(step, Compute):
                compute[step.actor] += platform.cpu(step.actor).cost(step.op, step.nbytes)
            else:
                lengths = transfer_frames(prof, step)
                wire += sum(wire_seconds(prof, n, stuffing) for n in lengths)
                queue += queues[_shape(step)]
                frames += len(lengths)
                nbytes += unit_bytes(prof, step)
        total_compute = compute["pack"] + compute["module"]
        latency = total_compute + wire + queue
        budget = BUDGETS[level]
        rows.append({
            "protocol": proto.name, "platform": platform.name, "pack_cpu": platform.pack.name,
            "module_cpu": platform.module.name, "bus": bus, "fd": prof.fd, "nominal_bitrate": prof.nominal_bitrate,
            "data_bitrate": prof.data_bitrate if prof.brs else prof.nominal_bitrate, "modules": int(modules),
            "stuffing": stuffing, "level": level, "budget_ms": budget * 1e3, "latency_ms": latency * 1e3,
            "compute_ms": total_compute * 1e3, "pack_compute_ms": compute["pack"] * 1e3,
            "module_compute_ms": compute["module"] * 1e3, "wire_ms": wire * 1e3, "queue_ms": queue * 1e3,
            "latency_idle_ms": (total_compute + wire) * 1e3, "frames": frames, "unit_bytes": nbytes,
            "bus_load": offered, "pack_cpu_load": pack_load, "module_cpu_load": module_load,
            "latency_ok": latency <= budget, "sustainable": sustainable, "met": latency <= budget and sustainable,
            "margin_ms": (budget - latency) * 1e3,
        })  # fmt: skip
    return rows


def design_space(
    protocols: Iterable[str] | None = None,
    platforms: Iterable[str] | Mapping[str, Platform] | None = None,
    buses: Iterable[str] | None = None,
    modules: Iterable[int] = MODULE_NODES,
    *,
    stuffing: str = "worst",
    host: CpuProfile | None = None,
    cpu_files: Iterable[str] = (),
    as_frame: bool = True,
) -> Any:
    """The four budgets for every protocol × platform × bus × pack size: a tidy DataFrame (or list of dicts).

    One row per point and budget level. Columns: protocol, platform, pack_cpu, module_cpu, bus,
    fd, nominal_bitrate, data_bitrate, modules, stuffing, level, budget_ms, latency_ms (compute
    + wire + worst queueing under the pack's traffic), compute_ms, pack_compute_ms,
    module_compute_ms, wire_ms, queue_ms, latency_idle_ms (alone on an idle bus), frames,
    unit_bytes, bus_load (offered, from the routine traffic), pack_cpu_load, module_cpu_load (the
    routine traffic's share of each CPU), latency_ok, sustainable (bus and both CPUs below 100 %),
    met (both), margin_ms (budget − latency; negative = missed by that much). A platform whose
    CPUs lack an operation of a protocol (a profile file without Ed25519 costs) has no rows for it.
    """
    plats = platforms if isinstance(platforms, Mapping) else resolve_platforms(
        platforms or DESIGN_PLATFORMS, host=host, cpu_files=cpu_files)  # fmt: skip
    rows = [
        row
        for proto in (protocols or PROTOCOLS)
        for bus in (buses or BUSES)
        for n in modules
        for plat in plats.values()
        for row in design_point(proto, plat, bus, n, stuffing=stuffing)
    ]
    if not as_frame:
        return rows
    import pandas as pd

    return pd.DataFrame(rows)


def summary_table(table: Any) -> Any:
    """Per protocol × platform × bus × pack size: budgets met (0-4), within latency (0-4), sustainable, shortfall.

    ``shortfall`` is the sum over the four levels of the relative overshoot (latency / budget − 1,
    0 when within); rows come best first: most budgets met, then most within latency, then the
    smallest shortfall.
    """
    keys = ["protocol", "platform", "pack_cpu", "module_cpu", "bus", "modules"]
    t = table.assign(over=(table.latency_ms / table.budget_ms - 1).clip(lower=0))
    out = t.groupby(keys, sort=False).agg(
        budgets_met=("met", "sum"),
        latency_ok=("latency_ok", "sum"),
        sustainable=("sustainable", "all"),
        shortfall=("over", "sum"),
    )
    out = out.reset_index()
    return out.sort_values(["budgets_met", "latency_ok", "shortfall"], ascending=[False, False, True], kind="stable",
                           ignore_index=True)  # fmt: skip


def answer_table(table: Any, bus: str = "classic 250k", modules: int = 31) -> Any:
    """The design question at one bus and pack size: per protocol × pack CPU, the budgets met on each module MCU.

    A row per (protocol, pack_cpu) with, per module chip (a CPU profile name up to its first
    ``-``: ``STM32WB55-sw`` is the STM32WB55 with software P-256), the budgets met and those
    missed ("overload" when the bus or a CPU cannot carry the pack's routine traffic), then
    ``total_met`` over all module chips; best first (ties: the smaller ``shortfall``, the sum of
    relative overshoots).
    """
    import pandas as pd

    t = table[(table.bus == bus) & (table.modules == modules)]
    t = t.assign(module_mcu=t.module_cpu.str.split("-").str[0])
    rows = []
    for (proto, pack), g in t.groupby(["protocol", "pack_cpu"], sort=False):
        row: dict[str, Any] = {"protocol": proto, "pack_cpu": pack}
        for module, gm in g.groupby("module_mcu", sort=False):
            missed = [SHORT[lv] for lv in gm.level[~gm.latency_ok]]
            if not gm.sustainable.all():
                missed.append("overload")
            row[f"met, {module} modules"] = int(gm.met.sum())
            row[f"missed, {module} modules"] = ", ".join(missed) or "-"
        row["total_met"] = int(g.met.sum())
        row["shortfall"] = round(float((g.latency_ms / g.budget_ms - 1).clip(lower=0).sum()), 3)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["total_met", "shortfall"], ascending=[False, True], ignore_index=True)


def breakdown(
    level: str, protocol: str, platform: Platform, bus: str, modules: int, *, stuffing: str = "worst"
) -> list[dict[str, Any]]:
    """Per step of one transaction at a design point: compute, wire and worst queueing (ms)."""
    proto, prof = protocol_named(protocol), BUSES[bus]
    queues, _, _ = transfer_delays(proto.name, bus, int(modules), stuffing)
    steps = level_steps(level, proto, prof)
    per_step = {i: queues[_shape(s)] * 1e3 for i, s in enumerate(steps) if isinstance(s, Transfer)}
    return step_rows(level, platform, prof, protocol=proto, stuffing=stuffing, queue_ms=per_step)
