"""Pack simulator: one pack controller and 1-31 modules talking secured CAN on a real python-can bus.

Setup goes through the real protocol: an :class:`~modbatt.nodes.inmemory.InMemoryDeployment`
binds the pack to every module and :func:`~modbatt.nodes.pairing_flow.pair_entities` pairs them, so
each module has its own pairing and exchange secrets, and each end talks through its entity's own
:class:`~modbatt.nodes.channel.PairedChannel` (in process: the deployment's explicitly ephemeral
freshness; in separate processes: see below).

Traffic (:mod:`modbatt.sim.schedule`): every module sends the legacy module-bus telemetry
(MODULE_STATUS_1/2/3 encoded with cantools from the legacy catalog) at the documented rates as
routine telemetry at the exchange tier, plus a heartbeat; the pack sends keep-alives (exchange
tier) and critical operations at the pairing tier — charge/discharge commands (legacy
MODULE_STATE_CHANGE), safety limits (MODULE_LIMITS layout) and firmware-update blocks — each of
which the module acknowledges at the same class and tier.

Framing: a *connection* is one module's pair of identifiers (controller→node, node→controller)
for one function at one tier. It carries single secured frames when every unit in both directions
fits one frame, else ISO-TP (can-isotp's ``TransportLayerLogic``, configured by
:func:`modbatt.can.fragment.isotp_params`, driven without threads by the scheduler), flow
control on the reverse identifier. The broadcast fragmentation of :mod:`modbatt.can.fragment` is
not used: every pairing key is per module, so no secured unit here has more than one receiver.

Time (:mod:`modbatt.sim.clock`): a :class:`Scheduler` runs timers against an injectable clock —
:class:`RealClock` for live buses, :class:`AcceleratedClock` (wall time × factor) or
:class:`VirtualClock` (jumps to the next timer: as fast as the CPU allows) for tests — and pumps
the buses in between. Runs are bounded in
simulated time and by a wall-clock guard. Wire time is not modelled here (a virtual bus is
instantaneous): use :mod:`modbatt.sim.latency` for latency.

Separate processes: :func:`modbatt.sim.multiprocess.run_multiprocess` spawns one process per
module on ``udp_multicast``, each restoring its channel from its module's state on disk.

Statistics (:class:`SimStats`): frames and units sent/received per class and tier, rejects by
reason, and for acknowledged messages: sent, acknowledged, lost, misordered, refused.

Where each part lives: :mod:`modbatt.sim.stats` (:class:`SimStats`), :mod:`modbatt.sim.connection`
(a bus end and its connections), :mod:`modbatt.sim.nodes` (the simulated module and pack
controller), this module (:class:`PackSimulation`, which wires them to a bound and paired pack).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import time

import can

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..errors import ConfigError
from ..model.policy import EncryptionPolicy
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.paired import paired_deployment, persist_entity
from ..protocol.delivery import RetryPolicy
from ..transport.canbus import BusConfig, open_bus, resolve_bus
from .clock import AcceleratedClock, RealClock, Scheduler, SimClock, VirtualClock
from .connection import _Endpoint
from .nodes import FIRMWARE_RETRY, _db, _Module, _Node, _Pack
from .schedule import TrafficPlan, sized_plan
from .state import PackSetup, ephemeral_pack
from .state import check_modules as _check_modules
from .stats import SimStats

__all__ = [
    "AcceleratedClock",
    "PackSimulation",
    "RealClock",
    "Scheduler",
    "SimClock",
    "SimStats",
    "VirtualClock",
]


# ---------------------------------------------------------------------------------------------
# Pairing, and a module's state on disk (what a module process restores its channel from)
# ---------------------------------------------------------------------------------------------


def _paired(
    modules: int, seed: int | None, protocol: ProtocolProfile = DEFAULT_PROFILE
) -> tuple[InMemoryDeployment, dict[int, str], EncryptionPolicy]:
    """Bind and pair a pack with ``modules`` modules under ``protocol``; the deployment and each pairing id."""
    made = paired_deployment(seed, modules, profile=protocol)
    return made.dep, made.pairing_ids(), made.policy


#: A module's key store on disk, what a module process restores its channel from.
_persist_entity = persist_entity


# ---------------------------------------------------------------------------------------------
# In-process simulation
# ---------------------------------------------------------------------------------------------


class PackSimulation:
    """A pack controller and ``modules`` modules on one python-can bus, all in this process.

    ``bus`` is any :class:`~modbatt.transport.canbus.BusConfig` (default: the bus rule,
    :func:`~modbatt.transport.canbus.resolve_bus`, which is a private ``virtual`` channel when
    nothing is configured). The pack opens one bus handle and the modules share a second one (frames are
    dispatched by the node field of the identifier), so every frame really crosses the bus.
    ``profile`` decides classic or FD framing (must match the bus). ``clock`` defaults to a
    :class:`VirtualClock`; pass :class:`RealClock` on a live bus. ``setup`` is the bound and
    paired pack to run (:mod:`modbatt.sim.state`: in memory, or on disk with persisted
    freshness); by default a fresh in-memory one (``seed``: reproducible keys) under ``protocol``,
    the protocol profile of every pairing (docs/profiles.md): it decides the pairing tier's keys
    (bound to the binding under ``efficient``) and the binding tier's format (its resync answers
    here); the routine units of docs/simulation.md §1 are the same in both. A given ``setup``
    brings its own profile, and naming another is refused.
    """

    def __init__(
        self,
        modules: int = 31,
        *,
        bus: BusConfig | None = None,
        profile: BusProfile = CLASSIC,
        plan: TrafficPlan | None = None,
        seed: int | None = None,
        clock: SimClock | None = None,
        layout: IdLayout = SEED_LAYOUT,
        protocol: ProtocolProfile | str | None = None,
        setup: PackSetup | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        _check_modules(modules)
        if setup is not None and len(setup.modules) != modules:
            raise ConfigError(f"the setup holds {len(setup.modules)} modules, not {modules}")
        self.modules = modules
        self.profile = profile
        if setup is not None and protocol is not None and profile_named(protocol) is not setup.protocol:
            raise ConfigError(f"the setup is paired under {setup.protocol.value}, not {profile_named(protocol).value}")
        self.protocol = setup.protocol if setup is not None else profile_named(protocol or DEFAULT_PROFILE)
        self.clock: SimClock = clock or VirtualClock()
        self.layout = layout
        # The bus rule when none is given: python-can's configuration, else the embedded virtual bus.
        config = bus if bus is not None else resolve_bus()
        self.config = dataclasses.replace(config, fd=True) if config.embedded and profile.fd else config
        self.plan = plan or sized_plan(profile, config.faults, FIRMWARE_RETRY.max_tries)
        self.setup = setup if setup is not None else ephemeral_pack(modules, seed, self.protocol)
        pairings, self.policy = self.setup.pairings, self.setup.policy
        if self.policy.to_dict() != self.plan.policy.to_dict():
            self.plan = dataclasses.replace(self.plan, policy=self.policy)  # the certificate's policy rules
        self.stats = SimStats()
        self._pack_stats = SimStats()
        self._module_stats = SimStats()
        db = _db()
        self._buses: list[can.BusABC] = []
        pack_bus = self._open()
        module_bus = self._open()
        pack_nodes: dict[int, _Node] = {}
        module_nodes: dict[int, _Node] = {}
        self._pack_ep = _Endpoint(pack_bus, profile, layout, self._pack_stats, 1, pack_nodes)
        self._module_ep = _Endpoint(module_bus, profile, layout, self._module_stats, 0, module_nodes)
        self.pack = _Pack(self._pack_ep, self.plan, self.clock, db, retry, self.setup.pack.keystore)
        self.module_nodes: dict[int, _Module] = {}
        for node_id in range(1, modules + 1):
            pid = pairings[node_id]
            self.pack.links[node_id] = self.setup.pack.channel(pid, profile=profile, layout=layout)
            pack_nodes[node_id] = self.pack
            store = self.setup.modules[node_id].keystore
            m = _Module(node_id, self._module_ep, self.plan, self.clock, db, keystore=store, pairing_id=pid)
            m.links[node_id] = self.setup.modules[node_id].channel(pid, profile=profile, layout=layout)
            module_nodes[node_id] = m
            self.module_nodes[node_id] = m
        self.scheduler = Scheduler(self.clock, [self._pack_ep, self._module_ep])
        #: Resync answers refused while reopened channels resynchronised before the traffic started.
        self.resync_rejects: collections.Counter[str] = collections.Counter()

    def _open(self) -> can.BusABC:
        bus = open_bus(self.config)
        self._buses.append(bus)
        return bus

    def run(self, duration: float | None, *, drain: float = 0.5, max_wall: float | None = 60.0) -> SimStats:
        """Run ``duration`` simulated seconds of traffic (``None``: until :meth:`stop`), then
        ``drain`` seconds for late acks and retries. ``max_wall`` bounds the wall time (``None``: unbounded)."""
        if duration is not None and not duration > 0:
            raise ConfigError("duration must be positive")
        wall0 = time.monotonic()
        wall = math.inf if max_wall is None else max_wall
        t0 = self.clock.now()
        self._resync(min(wall, 5.0))
        self.pack.sending = True
        self.pack.start(self.scheduler, t0, list(self.module_nodes), self.modules)
        for node_id, m in self.module_nodes.items():
            m.start(self.scheduler, t0, (node_id - 1) / self.modules)
        self.scheduler.run(t0 + (math.inf if duration is None else duration), max_wall=wall)
        interrupted = self.scheduler.stop_requested
        self.scheduler.clear_stop()  # a second stop() during the drain ends the drain
        # Stop new traffic, let what is in flight finish (acks, ISO-TP tails, retries) for
        # ``drain`` seconds: a command still unsettled then counts as never acknowledged.
        self.pack.sending = False
        self.scheduler.cancel_all()
        self.scheduler.at(self.clock.now(), self.pack._retries)
        self.scheduler.run(self.clock.now() + drain, max_wall=max(wall - (time.monotonic() - wall0), 1.0))
        self.scheduler.cancel_all()
        stats = SimStats()
        stats.merge(self._pack_stats)
        stats.merge(self._module_stats)
        stats.lost_acknowledged += self.pack.outstanding()
        stats.sim_seconds = self.clock.now() - t0
        stats.wall_seconds = time.monotonic() - wall0
        stats.truncated = self.scheduler.truncated
        stats.interrupted = interrupted
        stats.resync_rejects.update(self.resync_rejects)
        stats.faults = self.config.faults is not None
        self.stats = stats
        return stats

    def _resync(self, limit: float) -> None:
        """Synchronise channels reopened on a session they used before (a pack on disk) before traffic.

        Such channels start unsynced with a restart challenge queued (docs/can-frames.md §3). The
        pack's challenges go first; each module answers and sends its own from the receive path,
        so the handshakes never cross (crossing challenges void each other's first answers).
        """
        links = [*self.pack.links.values(), *(m.links[n] for n, m in self.module_nodes.items())]
        if all(link.synced for link in links):
            return
        for node_id in self.module_nodes:
            self.pack.flush(node_id)
        deadline = time.monotonic() + limit
        while not all(link.synced for link in links) and time.monotonic() < deadline:
            if not self.scheduler.pump():
                time.sleep(0.002)  # frames on a real bus take a moment to arrive
        # Answers in flight to a challenge that a crossing restart notice replaced are refused by
        # design (nodes/channel.py): counted apart, they are the handshake, not lost traffic.
        for stats in (self._pack_stats, self._module_stats):
            self.resync_rejects.update(stats.rejects)
            stats.rejects.clear()

    def stop(self) -> None:
        """End a running :meth:`run` (from another thread or a signal handler): drain, then return."""
        self.scheduler.request_stop()

    def close(self) -> None:
        for bus in self._buses:
            with contextlib.suppress(Exception):
                bus.shutdown()
        self._buses.clear()
        self.setup.close()

    def __enter__(self) -> PackSimulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
