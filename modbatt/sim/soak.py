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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..can.ids import SEED_LAYOUT
from ..can.wiretime import CLASSIC
from ..errors import ConfigError, ModbattError
from ..transport.canbus import DEFAULT_UDP_GROUP, BusConfig, open_bus
from ..transport.faultbus import FaultSpec
from .clock import RealClock, Scheduler
from .multiprocess import _ChildSpec, _free_port, _module_process, _recv, pack_end, reap_children
from .pack import SimStats, _paired, _persist_entity
from .schedule import TrafficPlan
from .state import check_modules

__all__ = ["DEFAULT_SOAK_FAULTS", "SoakReport", "rss_kib", "run_soak"]

#: The issue's soak rates: 10 % loss with duplication, reordering and corruption.
DEFAULT_SOAK_FAULTS = "loss=0.1,dup=0.02,reorder=0.02,corrupt=0.01"
#: Firmware blocks small enough to cross a 10 % lossy bus (docs/delivery.md §3).
SOAK_FIRMWARE_BLOCK = 32
_SAMPLE_S = 1.0


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


def _slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, KiB)`` points in KiB per minute (0 for fewer than 3)."""
    if len(points) < 3:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


@dataclass
class SoakReport:
    """What one soak did (``to_dict()`` is JSON)."""

    modules: int
    duration_s: float
    faults: str
    stats: SimStats
    restarts: int
    killed: list[int] = field(default_factory=list)
    memory: list[dict[str, float]] = field(default_factory=list)  # t, pack_kib, module_kib (median)
    wall_s: float = 0.0

    @property
    def acknowledged(self) -> int:
        return len(self.stats.acknowledged)

    @property
    def applied(self) -> int:
        return len(self.stats.applied)

    def slopes(self) -> dict[str, float]:
        """RSS slope (KiB/min) of the pack and of the median module, over the second half of the run
        (the first half holds imports and warm-up)."""
        half = [m for m in self.memory if m["t"] >= self.duration_s / 2]
        return {
            "pack_kib_per_min": round(_slope_per_min([(m["t"], m["pack_kib"]) for m in half]), 1),
            "module_kib_per_min": round(_slope_per_min([(m["t"], m["module_kib"]) for m in half]), 1),
        }

    @property
    def ok(self) -> bool:
        """Exactly once: nothing acknowledged and not applied, nothing applied twice. Commands given
        up or still unsettled at the end (a module was down) are reported, never counted as applied."""
        return self.stats.exactly_once and not self.stats.truncated

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
            "commands": {
                "sent": s.commands_sent,
                "acknowledged": self.acknowledged,
                "refused": s.refused,
                "applied": self.applied,
                "acknowledged_not_applied": s.acknowledged_not_applied,
                "applied_twice": s.applied_twice,
                "given_up": dict(sorted(s.gave_up.items())),
                "superseded": dict(sorted(s.superseded.items())),
                "unsettled": s.lost_acknowledged,
                "retransmissions": s.retransmissions,
                "repeats_not_applied": s.repeats,
            },
            "rejects": dict(sorted(s.rejects.items())),
            "transport_errors": sum(s.transport_errors.values()),
            "latency_ms": s.latency_percentiles(),
            "memory": {"samples": self.memory, **self.slopes()},
        }


def _spawn(ctx: Any, spec: _ChildSpec) -> tuple[Any, Any]:
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_module_process, args=(child, spec), name=f"modbatt-module-{spec.node:02d}")
    proc.start()
    child.close()
    return proc, parent


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
) -> SoakReport:
    """Run the soak (see the module docstring); ``duration`` and ``drain`` in wall seconds."""
    check_modules(modules)
    if not duration > 0:
        raise ConfigError("the soak's duration must be positive")
    if restart_every is not None and not restart_every > 0:
        raise ConfigError("restart_every must be positive (or None: no random restarts)")
    base = FaultSpec.parse(faults)
    logging.getLogger("isotp").setLevel(logging.ERROR)  # framing faults are counted, not logged
    plan = plan or TrafficPlan(firmware_block=SOAK_FIRMWARE_BLOCK)
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
            )  # fmt: skip
            live[n] = _spawn(ctx, specs[n])
        clock = RealClock()
        ep, pack, pack_stats = pack_end(bus, CLASSIC, SEED_LAYOUT, plan_kw, policy, dep.pack, pairings, clock)
        ready_by = time.monotonic() + start_timeout
        for proc, pipe in live.values():
            while not pipe.poll(0.01):
                ep.drain(0.0)
                if time.monotonic() > ready_by or not proc.is_alive():
                    raise ModbattError(f"{proc.name} did not start (exit code {proc.exitcode})")
            kind, detail = _recv(pipe, proc)
            if kind != "ready":
                raise ModbattError(f"{proc.name}: {detail}")
        for _, pipe in live.values():
            pipe.send(("go", duration))
        sched = Scheduler(clock, [ep])
        t0 = clock.now()
        t_end = t0 + duration
        next_kill = [t0 + restart_every] if restart_every else [math.inf]

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
                        starting[n] = _spawn(ctx, dataclasses.replace(specs[n], kill_at=""))
            if now >= next_kill[0] and now < t_end and live:
                victim = rng.choice(sorted(live))
                live[victim][0].kill()  # SIGKILL: no handler, no flush (the next round restarts it)
                next_kill[0] = now + (restart_every or math.inf)
            if not report.memory or now - t0 - report.memory[-1]["t"] >= _SAMPLE_S:
                kib = [k for proc, _ in live.values() if (k := rss_kib(proc.pid)) is not None]
                report.memory.append({
                    "t": round(now - t0, 2), "pack_kib": float(rss_kib(os.getpid()) or 0),
                    "module_kib": float(statistics.median(kib)) if kib else 0.0,
                })  # fmt: skip
            return 0.1

        pack.start(sched, t0, list(range(1, modules + 1)), modules)
        sched.at(t0, supervise)
        sched.run(t_end, max_wall=duration + 30.0)
        pack.sending = False
        sched.cancel_all()
        sched.at(clock.now(), pack._retries)
        sched.at(clock.now(), supervise)  # modules still starting get their go; none is killed now
        settle = clock.now() + drain
        while clock.now() < settle and (pack.outstanding() or starting):
            sched.run(min(clock.now() + 0.5, settle), max_wall=drain + 5.0)
        sched.cancel_all()
        for _, pipe in live.values():
            with contextlib.suppress(Exception):
                pipe.send(("stop", 0))
        for proc, pipe in live.values():
            if pipe.poll(15.0):
                kind, detail = _recv(pipe, proc)
                if kind == "stats":
                    detail["applied"] = {}  # counted from the journals below (they survive kills)
                    stats.merge(detail)
        stats.merge(pack_stats)
        applied: collections.Counter[str] = collections.Counter()
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
        reap_children([*live.values(), *starting.values()])
        if bus is not None:
            bus.shutdown()
        dep.pack.close_channels()
        dep.ledger.close()
        shutil.rmtree(state, ignore_errors=True)
