"""The pack simulator across processes: one process per module on ``udp_multicast``.

Each module's entity state (its encrypted key store, with a key file beside it, in a private
temporary directory the parent removes at the end) is written to disk before the child starts;
the child opens it and restores its channel from it — keys of the current session, freshness
files beside the store — exactly as a module restarting from its own storage would. It runs for a
bounded time and reports its statistics back; the parent cleans every process up
(docs/simulation.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import socket
import tempfile
import time
import tracemalloc
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.keystore import KeyStore
from ..errors import ModbattError
from ..model.policy import EncryptionPolicy
from ..nodes.entity import EntityNode
from ..nodes.killpoints import KILL_AT_ENV
from ..transport.canbus import DEFAULT_UDP_GROUP, BusConfig, open_bus
from .clock import RealClock, Scheduler
from .pack import SimStats, _db, _Endpoint, _Module, _Node, _Pack, _paired, _persist_entity
from .schedule import TrafficPlan
from .state import check_modules as _check_modules

__all__ = [
    "collect_stats",
    "memory_growth",
    "multicast_available",
    "pack_end",
    "reap_children",
    "run_multiprocess",
    "spawn_module",
    "start_modules",
]

def multicast_available(group: str = DEFAULT_UDP_GROUP) -> tuple[bool, str]:
    """Whether this host can open and join an IPv4 multicast socket; ``(ok, reason)``."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("", 0))
            mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0")
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError as exc:
        return False, f"cannot join multicast group {group}: {exc}"
    return True, "ok"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class _ChildSpec:
    node: int
    pairing_id: str
    store: str  # the module's key store on disk (its freshness files go beside it)
    key_file: str
    policy: dict[str, str]
    bus: dict[str, Any]
    profile: BusProfile
    plan: dict[str, Any]
    layout_name: str
    modules: int
    deadline: float  # wall seconds the child may live at most
    kill_at: str = ""  # a kill point (nodes/killpoints.py) this child dies at
    journal: str = ""  # file the module appends each applied command to (docs/delivery.md §4)
    trace_memory: bool = False  # trace allocations; report what grew from mid-run to the end


def memory_growth(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int = 10) -> list[str]:
    """The ``top`` source lines whose live allocations grew most between two snapshots."""
    mine = tracemalloc.Filter(False, tracemalloc.__file__)
    diff = after.filter_traces([mine]).compare_to(before.filter_traces([mine]), "lineno")
    return [
        f"{d.traceback[0].filename}:{d.traceback[0].lineno} {d.size_diff / 1024:+.1f} KiB ({d.count_diff:+d} blocks)"
        for d in diff[:top]
        if d.size_diff > 0
    ]


def reap_children(children: Iterable[tuple[Any, Any]]) -> None:
    """Close each child's pipe and join it: a child that does not end is terminated, then killed.

    Bounded (at most 8 s a child), so a wedged module process never outlives its run.
    """
    for proc, pipe in children:
        with contextlib.suppress(Exception):
            pipe.close()
        proc.join(timeout=5.0)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=2.0)
        if proc.is_alive():  # pragma: no cover - last resort for a wedged child
            proc.kill()
            proc.join(timeout=1.0)


def _module_process(conn: Any, spec: _ChildSpec) -> None:
    """Body of one module process: open the bus, report ready, run until told to stop, report stats."""
    from ..can.ids import LAYOUTS

    bus = None
    entity: EntityNode | None = None
    wall_end = time.monotonic() + spec.deadline
    if spec.kill_at:
        os.environ[KILL_AT_ENV] = spec.kill_at
    logging.getLogger("isotp").setLevel(logging.ERROR)  # framing faults are counted, not logged
    try:
        bus = open_bus(BusConfig(**spec.bus))
        layout = LAYOUTS[spec.layout_name]
        plan = TrafficPlan(**{**spec.plan, "policy": EncryptionPolicy.from_dict(spec.policy)})
        stats = SimStats()
        clock = RealClock()
        nodes: dict[int, _Node] = {}
        ep = _Endpoint(bus, spec.profile, layout, stats, 0, nodes)
        # The module restores its channel from its own storage: keys from the key store,
        # freshness from the files beside it (FileFreshness, the entity's default on disk), and
        # its idempotence record from the key store (docs/delivery.md).
        entity = EntityNode(KeyStore.open(spec.store, key_file=spec.key_file))
        module = _Module(spec.node, ep, plan, clock, _db(), keystore=entity.keystore, pairing_id=spec.pairing_id)
        module.journal = spec.journal or None
        module.links[spec.node] = entity.channel(spec.pairing_id, profile=spec.profile, layout=layout)
        nodes[spec.node] = module
        module.flush(spec.node)  # a restarted session queues a resync challenge
        sched = Scheduler(clock, [ep])
        conn.send(("ready", spec.node))
        while not conn.poll(0.01):  # keep the socket read while waiting for the start signal
            ep.drain(0.0)
            if time.monotonic() > wall_end:
                raise TimeoutError("no start signal")
        kind, duration = conn.recv()
        if kind != "go":
            return
        t0 = clock.now()
        module.start(sched, t0, (spec.node - 1) / spec.modules)
        snapshots: list[tracemalloc.Snapshot] = []
        if spec.trace_memory:
            tracemalloc.start()
            sched.at(t0 + duration / 2, lambda: snapshots.append(tracemalloc.take_snapshot()))
        sched.run(t0 + duration, max_wall=max(wall_end - time.monotonic(), 0.1))
        growth = memory_growth(snapshots[0], tracemalloc.take_snapshot()) if snapshots else []
        sched.cancel_all()
        while not conn.poll(0.0) and time.monotonic() < wall_end:  # serve late commands until told to stop
            ep.drain(0.01)
        stats.truncated = sched.truncated
        conn.send(("stats", {**stats.to_dict(), "memory_growth": growth}))
    except Exception as exc:
        with contextlib.suppress(Exception):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if entity is not None:
            entity.close_channels()
        if bus is not None:
            bus.shutdown()
        conn.close()


def pack_end(
    bus: Any,
    profile: BusProfile,
    layout: IdLayout,
    plan_kw: dict[str, Any],
    policy: EncryptionPolicy,
    pack_node: EntityNode,
    pairings: dict[int, str],
    clock: Any,
) -> tuple[_Endpoint, _Pack, SimStats]:
    """The pack in the parent process: its bus endpoint and a channel to every module's pairing."""
    pack_stats = SimStats()
    nodes: dict[int, _Node] = {}
    ep = _Endpoint(bus, profile, layout, pack_stats, 1, nodes)
    pack = _Pack(ep, TrafficPlan(**{**plan_kw, "policy": policy}), clock, _db(), keystore=pack_node.keystore)
    for node_id, pairing_id in pairings.items():
        pack.links[node_id] = pack_node.channel(pairing_id, profile=profile, layout=layout)
        nodes[node_id] = pack
    return ep, pack, pack_stats


def spawn_module(ctx: Any, spec: _ChildSpec) -> tuple[Any, Any]:
    """Start one module process (``ctx``: a ``spawn`` context); ``(process, the parent's pipe end)``."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_module_process, args=(child, spec), name=f"modbatt-module-{spec.node:02d}")
    proc.start()
    child.close()
    return proc, parent


def start_modules(children: Iterable[tuple[Any, Any]], ep: _Endpoint, duration: float, timeout: float) -> None:
    """Wait until every child reported ready (reading the bus meanwhile), then tell each to run ``duration``."""
    children = list(children)
    ready_by = time.monotonic() + timeout
    for proc, pipe in children:
        while not pipe.poll(0.01):
            ep.drain(0.0)
            if time.monotonic() > ready_by or not proc.is_alive():
                raise ModbattError(f"{proc.name} did not start (exit code {proc.exitcode})")
        kind, detail = _recv(pipe, proc)
        if kind != "ready":
            raise ModbattError(f"{proc.name}: {detail}")
    for _, pipe in children:
        pipe.send(("go", duration))


def collect_stats(
    children: Iterable[tuple[Any, Any]], stats: SimStats, wait: float, *, strict: bool
) -> list[dict[str, Any]]:
    """Tell every child to stop and merge the statistics it sends back into ``stats``; returns them.

    ``strict``: a child that sends none is an error; otherwise it is skipped (the soak counts
    what was applied from the modules' journals, which a kill does not lose).
    """
    children = list(children)
    reports: list[dict[str, Any]] = []
    for _, pipe in children:
        with contextlib.suppress(Exception):
            pipe.send(("stop", 0))
    for proc, pipe in children:
        if not pipe.poll(wait):
            if strict:
                raise ModbattError(f"{proc.name} sent no statistics")
            continue
        kind, detail = _recv(pipe, proc)
        if kind == "stats":
            stats.merge(detail)
            reports.append(detail)
        elif strict:
            raise ModbattError(f"{proc.name}: {detail}")
    return reports


def _recv(pipe: Any, proc: Any) -> tuple[str, Any]:
    try:
        kind, detail = pipe.recv()
    except (EOFError, OSError) as exc:
        proc.join(timeout=1.0)
        raise ModbattError(f"{proc.name} ended without reporting (exit code {proc.exitcode})") from exc
    return str(kind), detail


def run_multiprocess(
    modules: int = 2,
    *,
    duration: float = 2.0,
    drain: float = 0.5,
    port: int | None = None,
    group: str = DEFAULT_UDP_GROUP,
    plan: TrafficPlan | None = None,
    seed: int | None = None,
    profile: BusProfile = CLASSIC,
    layout: IdLayout = SEED_LAYOUT,
    start_timeout: float = 30.0,
) -> SimStats:
    """Pack in this process, each module in its own process, all on one ``udp_multicast`` group.

    ``port`` defaults to a free UDP port, so concurrent runs do not hear each other. Each child
    restores its module's channel from the module's state on disk (a private temporary directory,
    removed before this returns). Children are started with ``spawn``: a script calling this needs
    the usual ``if __name__ == "__main__":`` guard. Every child is bounded (``start_timeout +
    duration + drain`` plus a margin) and joined or terminated before this returns.
    """
    _check_modules(modules)
    plan = plan or TrafficPlan()
    port = port or _free_port()
    bus_kw: dict[str, Any] = {"interface": "udp_multicast", "channel": group, "kwargs": {"port": port}}
    dep, pairings, policy = _paired(modules, seed)
    state = Path(tempfile.mkdtemp(prefix="modbatt-sim-"))  # 0700: only this user reads the key files
    plan_kw = {f.name: getattr(plan, f.name) for f in dataclasses.fields(plan) if f.name != "policy"}
    ctx = multiprocessing.get_context("spawn")
    deadline = start_timeout + duration + drain + 10.0
    children: list[tuple[Any, Any]] = []
    stats = SimStats()
    bus = None
    wall0 = time.monotonic()
    try:
        bus = open_bus(BusConfig(**bus_kw))
        for node_id in range(1, modules + 1):
            store = state / f"module-{node_id:02d}.keystore"
            key_file = _persist_entity(dep.modules[node_id], store)
            spec = _ChildSpec(
                node_id, pairings[node_id], str(store), str(key_file), policy.to_dict(), bus_kw, profile, plan_kw,
                layout.name, modules, deadline,
            )  # fmt: skip
            children.append(spawn_module(ctx, spec))
        clock = RealClock()
        ep, pack, pack_stats = pack_end(bus, profile, layout, plan_kw, policy, dep.pack, pairings, clock)
        start_modules(children, ep, duration, start_timeout)
        sched = Scheduler(clock, [ep])
        t0 = clock.now()
        pack.start(sched, t0, list(range(1, modules + 1)), modules)
        sched.run(t0 + duration, max_wall=duration + 10.0)
        pack.sending = False
        sched.cancel_all()
        sched.at(clock.now(), pack._retries)  # retries go on during the drain
        sched.run(clock.now() + drain, max_wall=drain + 5.0)
        collect_stats(children, stats, 10.0, strict=True)
        stats.merge(pack_stats)
        stats.lost_acknowledged += pack.outstanding()
        stats.truncated = stats.truncated or sched.truncated
        stats.sim_seconds = clock.now() - t0
        stats.wall_seconds = time.monotonic() - wall0
        return stats
    finally:
        reap_children(children)
        if bus is not None:
            bus.shutdown()
        dep.pack.close_channels()
        dep.ledger.close()
        shutil.rmtree(state, ignore_errors=True)
