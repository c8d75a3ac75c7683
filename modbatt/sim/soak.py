"""The soak: a pack of up to 31 module processes on ``udp_multicast`` through the fault bus, with
modules killed and restarted along the way (docs/delivery.md §6).

The pack runs in this process, each module in its own (``spawn``), as
:func:`~modbatt.sim.pack.run_multiprocess` runs them, every bus handle wrapped in the fault bus
(``faults``: each process its own receive-side faults, seeded per process). Every
``restart_every`` seconds one module, chosen by a seeded RNG, is SIGKILLed (no handler, no flush)
and started again from its state on disk: its key store (keys and idempotence record) and its
freshness files. ``kill_at`` kills chosen modules at a kill point instead (nodes/killpoints.py).

Measured: commands sent, acknowledged and applied (from each module's applied journal, which
survives a kill), acknowledged-and-not-applied and applied-twice (both must be 0), commands given
up by class, rejects by reason (pack and the module processes that ended cleanly), latency
percentiles per class (submission to acknowledgement, wall time), and resident memory over time
(``VmRSS`` of ``/proc/PID/status``, proc(5)) of the pack process and of the module processes,
with a least-squares slope.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..can.ids import SEED_LAYOUT
from ..can.wiretime import CLASSIC
from ..errors import ConfigError, ModbattError, Reason
from ..transport.canbus import DEFAULT_UDP_GROUP, BusConfig, open_bus
from ..transport.faultbus import FaultSpec
from .clock import RealClock, Scheduler
from .multiprocess import (
    _ChildSpec,
    _free_port,
    _recv,
    collect_stats,
    memory_growth,
    pack_end,
    reap_children,
    spawn_module,
    start_modules,
)
from .pack import FIRMWARE_RETRY, SimStats, _paired, _persist_entity
from .schedule import TrafficPlan, sized_plan
from .state import check_modules
from .summary import command_summary

__all__ = ["DEFAULT_SOAK_FAULTS", "SoakReport", "rss_kib", "run_soak", "slope_per_min"]

#: The issue's soak rates: 10 % loss with duplication, reordering and corruption.
DEFAULT_SOAK_FAULTS = "loss=0.1,dup=0.02,reorder=0.02,corrupt=0.01"
_SAMPLE_S = 1.0
#: A module process's first seconds (imports, first allocations) are left out of its slope, and a
#: process is fitted only if it lived this long in the second half of the run.
_WARMUP_S = 10.0
_MIN_SPAN_S = 60.0
_REASONS = frozenset(r.value for r in Reason)


def rss_kib(pid: int) -> int | None:
    """Resident set size of process ``pid`` in KiB (``VmRSS``), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def slope_per_min(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope of ``(seconds, KiB)`` points in KiB per minute and its 95 % half-width.

    The half-width is 1.96 standard errors of the slope under independent residuals; successive
    RSS samples are correlated (the allocator grows in steps), so read it as a lower bound on the
    uncertainty. ``(0, inf)`` for fewer than 3 points.
    """
    if len(points) < 3:
        return 0.0, math.inf
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    if den == 0:
        return 0.0, math.inf
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(residual / (len(xs) - 2) / den)
    return 60.0 * slope, 60.0 * 1.96 * se


def _fit(points: list[tuple[float, float]]) -> dict[str, float | int | None]:
    slope, ci = slope_per_min(points)
    return {
        "kib_per_min": round(slope, 1),
        "ci95": round(ci, 1) if math.isfinite(ci) else None,
        "samples": len(points),
        "span_s": round(points[-1][0] - points[0][0], 1) if points else 0.0,
    }


@dataclass
class SoakReport:
    """What one soak did (``to_dict()`` is JSON)."""

    modules: int
    duration_s: float
    faults: str
    stats: SimStats
    restarts: int
    killed: list[int] = field(default_factory=list)
    #: One sample a second: ``t``, ``pack_kib``, ``module_kib`` (median) and ``by_pid`` (each module process).
    memory: list[dict[str, Any]] = field(default_factory=list)
    #: Module process ids and the module each one ran, with the second it started.
    processes: dict[int, tuple[int, float]] = field(default_factory=dict)
    #: With ``trace_memory``: the pack's largest allocation growths between mid-run and the end,
    #: and each module process's (those that ran to the end) five largest.
    memory_growth: list[str] = field(default_factory=list)
    module_memory_growth: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def acknowledged(self) -> int:
        return len(self.stats.acknowledged)

    @property
    def applied(self) -> int:
        return len(self.stats.applied)

    @property
    def unclassified_rejects(self) -> dict[str, int]:
        """Rejects whose reason is not a :class:`~modbatt.errors.Reason` (must be empty)."""
        return {r: n for r, n in self.stats.rejects.items() if r not in _REASONS}

    @property
    def ok(self) -> bool:
        """The contract held (docs/delivery.md §6): nothing acknowledged and not applied, nothing
        applied twice, every reject classified. Commands given up or still unsettled at the end
        (their module was down) are a reported outcome, never counted as applied."""
        return self.stats.exactly_once and not self.unclassified_rejects

    @property
    def given_up(self) -> int:
        """Commands the pack gave up on or left unsettled (not known to be applied)."""
        return sum(self.stats.gave_up.values()) + self.stats.lost_acknowledged

    def slopes(self) -> dict[str, Any]:
        """RSS slopes (KiB/min, with a 95 % half-width) over the second half of the run (the first
        holds imports and warm-up): the pack, the median module, and every module process that
        lived through at least ``_MIN_SPAN_S`` of it (its first ``_WARMUP_S`` skipped)."""
        half = [m for m in self.memory if m["t"] >= self.duration_s / 2]
        per_process = []
        for pid, (node, born) in sorted(self.processes.items(), key=lambda kv: (kv[1][0], kv[1][1])):
            points = [(m["t"], m["by_pid"][str(pid)]) for m in half
                      if str(pid) in m["by_pid"] and m["t"] >= born + _WARMUP_S]  # fmt: skip
            if points and points[-1][0] - points[0][0] >= _MIN_SPAN_S:
                per_process.append({"module": node, "pid": pid, **_fit(points)})
        pack = _fit([(m["t"], m["pack_kib"]) for m in half])
        module = _fit([(m["t"], m["module_kib"]) for m in half])
        slopes = [p["kib_per_min"] for p in per_process]
        return {
            "pack_kib_per_min": pack["kib_per_min"],
            "module_kib_per_min": module["kib_per_min"],
            "pack": pack,
            "module_median": module,
            "module_processes": per_process,
            "module_process_slopes": {
                "n": len(slopes),
                "min": min(slopes, default=None),
                "median": statistics.median(slopes) if slopes else None,
                "max": max(slopes, default=None),
            },
        }

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "ok": self.ok,
            "modules": self.modules,
            "duration_s": self.duration_s,
            "wall_s": round(self.wall_s, 1),
            "faults": self.faults,
            "restarts": self.restarts,
            # The wall-clock guard stopped a scheduler: a process fell more than 30 s behind real time.
            "truncated": self.stats.truncated,
            "commands": command_summary(s),
            "unclassified_rejects": self.unclassified_rejects,
            "rejects": dict(sorted(s.rejects.items())),
            "transport_errors": sum(s.transport_errors.values()),
            "latency_ms": s.latency_percentiles(),
            "memory": {
                "samples": self.memory, **self.slopes(), "growth": self.memory_growth,
                "module_growth": self.module_memory_growth,
            },
        }


def run_soak(
    modules: int = 31,
    duration: float = 30.0,
    *,
    faults: str = DEFAULT_SOAK_FAULTS,
    restart_every: float | None = 5.0,
    kill_at: dict[int, str] | None = None,
    drain: float = 30.0,
    seed: int | None = None,
    plan: TrafficPlan | None = None,
    port: int | None = None,
    group: str = DEFAULT_UDP_GROUP,
    start_timeout: float = 180.0,
    trace_memory: bool = False,
) -> SoakReport:
    """Run the soak (see the module docstring); ``duration`` and ``drain`` in wall seconds.

    ``trace_memory`` runs :mod:`tracemalloc` in the pack process and reports, in
    :attr:`SoakReport.memory_growth`, the source lines whose allocations grew from mid-run to the end.
    """
    check_modules(modules)
    if not duration > 0:
        raise ConfigError("the soak's duration must be positive")
    if restart_every is not None and not restart_every > 0:
        raise ConfigError("restart_every must be positive (or None: no random restarts)")
    base = FaultSpec.parse(faults)
    logging.getLogger("isotp").setLevel(logging.ERROR)  # framing faults are counted, not logged
    plan = plan or sized_plan(CLASSIC, base, FIRMWARE_RETRY.max_tries)  # blocks sized for the loss
    port = port or _free_port()
    rng = random.Random(seed)
    bus_kw: dict[str, Any] = {"interface": "udp_multicast", "channel": group, "kwargs": {"port": port}}

    def bus_for(n: int) -> dict[str, Any]:
        spec = dataclasses.replace(base, seed=(base.seed or 0) * 1000 + n) if base is not None else None
        return {**bus_kw, "faults": None if spec is None else str(spec)}

    dep, pairings, policy = _paired(modules, seed)
    state = Path(tempfile.mkdtemp(prefix="modbatt-soak-"))
    plan_kw = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "policy"}
    ctx = multiprocessing.get_context("spawn")
    deadline = start_timeout + duration + drain + 30.0
    specs: dict[int, _ChildSpec] = {}
    live: dict[int, tuple[Any, Any]] = {}
    starting: dict[int, tuple[Any, Any]] = {}
    stats = SimStats()
    report = SoakReport(modules, duration, faults, stats, 0)
    bus = None
    wall0 = time.monotonic()
    try:
        bus = open_bus(BusConfig(**bus_for(0)))
        for n in range(1, modules + 1):
            store = state / f"module-{n:02d}.keystore"
            key_file = _persist_entity(dep.modules[n], store)
            specs[n] = _ChildSpec(
                n, pairings[n], str(store), str(key_file), policy.to_dict(), bus_for(n), CLASSIC, plan_kw,
                SEED_LAYOUT.name, modules, deadline, (kill_at or {}).get(n, ""), str(state / f"applied-{n:02d}"),
                trace_memory,
            )  # fmt: skip
            live[n] = spawn_module(ctx, specs[n])
        clock = RealClock()
        ep, pack, pack_stats = pack_end(bus, CLASSIC, SEED_LAYOUT, plan_kw, policy, dep.pack, pairings, clock)
        start_modules(live.values(), ep, duration, start_timeout)
        sched = Scheduler(clock, [ep])
        t0 = clock.now()
        t_end = t0 + duration
        next_kill = [t0 + restart_every] if restart_every else [math.inf]
        report.processes = {proc.pid: (n, 0.0) for n, (proc, _) in live.items()}
        snapshots: list[tracemalloc.Snapshot] = []
        if trace_memory:
            tracemalloc.start()

        def supervise() -> float:
            now = clock.now()
            for n, (proc, pipe) in list(starting.items()):
                if pipe.poll(0):
                    kind, detail = _recv(pipe, proc)
                    if kind != "ready":
                        raise ModbattError(f"{proc.name} did not restart: {detail}")
                    pipe.send(("go", max(t_end - now, 0.01)))
                    live[n] = starting.pop(n)
            for n, (proc, pipe) in list(live.items()):
                if not proc.is_alive():  # killed (by us or at a kill point): start it again
                    with contextlib.suppress(Exception):
                        pipe.close()
                    del live[n]
                    report.killed.append(n)
                    if now < t_end:
                        report.restarts += 1
                        starting[n] = spawn_module(ctx, dataclasses.replace(specs[n], kill_at=""))
                        report.processes[starting[n][0].pid] = (n, round(now - t0, 2))
            if now >= next_kill[0] and now < t_end and live:
                victim = rng.choice(sorted(live))
                live[victim][0].kill()  # SIGKILL: no handler, no flush (the next round restarts it)
                next_kill[0] = now + (restart_every or math.inf)
            if not report.memory or now - t0 - report.memory[-1]["t"] >= _SAMPLE_S:
                by_pid = {str(proc.pid): k for proc, _ in live.values() if (k := rss_kib(proc.pid)) is not None}
                report.memory.append({
                    "t": round(now - t0, 2), "pack_kib": float(rss_kib(os.getpid()) or 0),
                    "module_kib": float(statistics.median(by_pid.values())) if by_pid else 0.0, "by_pid": by_pid,
                })  # fmt: skip
            if trace_memory and not snapshots and now >= t0 + duration / 2:
                snapshots.append(tracemalloc.take_snapshot())
            return 0.1

        pack.start(sched, t0, list(range(1, modules + 1)), modules)
        sched.at(t0, supervise)
        sched.run(t_end, max_wall=duration + 30.0)
        if trace_memory and snapshots:
            report.memory_growth = memory_growth(snapshots[0], tracemalloc.take_snapshot())
        pack.sending = False
        sched.cancel_all()
        sched.at(clock.now(), pack._retries)
        sched.at(clock.now(), supervise)  # modules still starting get their go; none is killed now
        settle = clock.now() + drain
        while clock.now() < settle and (pack.outstanding() or starting):
            sched.run(min(clock.now() + 0.5, settle), max_wall=drain + 5.0)
        sched.cancel_all()
        for detail in collect_stats(live.values(), stats, 15.0, strict=False):
            report.module_memory_growth.extend(detail.get("memory_growth", [])[:5])
        stats.merge(pack_stats)
        applied: collections.Counter[str] = collections.Counter()  # from the journals: they survive kills
        for n in specs:
            journal = Path(specs[n].journal)
            if journal.exists():
                applied.update(journal.read_text().split())
        stats.applied = applied
        stats.lost_acknowledged += pack.outstanding()
        stats.faults = True
        stats.truncated = stats.truncated or sched.truncated
        stats.sim_seconds = clock.now() - t0
        report.wall_s = time.monotonic() - wall0
        return report
    finally:
        if trace_memory:
            tracemalloc.stop()
        reap_children([*live.values(), *starting.values()])
        if bus is not None:
            bus.shutdown()
        dep.pack.close_channels()
        dep.ledger.close()
        shutil.rmtree(state, ignore_errors=True)
