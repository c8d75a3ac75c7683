"""The pack controller as a gateway between two real python-can buses (docs/gateway.md §6).

* **App bus** (CAN 1): a VCU sends the legacy 11-bit frames in clear, as the configuration
  utility does (``VCU_COMMAND`` every 250 ms), and reads the module status the pack bridges back.
* **Module bus** (CAN 2): the pack and its modules on their secured paired channels, exactly as in
  :mod:`modbatt.sim.pack` (same nodes, connections and ISO-TP), through each entity's own channel.

The pack's :class:`~modbatt.protocol.gateway.Gateway` core decides every crossing under the rules
of ``gateway-routes.yaml``; a :class:`~modbatt.protocol.pack_state.PackSecurity` per module
gates it (driven by the real binding, pairing, Level-4 key confirmation and renewal events), and
the pack's copy of each pairing's restrictions is checked before a command is forwarded. A VCU
contactor command becomes a pairing-tier ``charge_command`` per module (a 2-byte sequence number
in front, acknowledged by the module as in the pack simulator); the module applies it, and its
``MODULE_STATUS_1`` carrying the new state comes back on the app bus as ``MODULE_STATE``.
Anything on the app bus the rules do not name is dropped and counted (``gateway.rejections``).

Life cycle in the simulator: with ``renew_lead_s`` the pack renews each pairing that lead time
before it expires (:meth:`PackSecurity.renewal_due`; the controller issues the renewal, both ends
switch through their :class:`~modbatt.nodes.renewal.Handover`, the old pairing is revoked in the
ledger once the overlap ended); a pairing that expires anyway takes the ``request_pairing``
effect: a new pairing. ``isolate`` sends the module an emergency shutdown, ``raise_floor`` /
``reset_floor`` move its link's escalation floor.

Partitions (docs/lifecycle.md §8): every state step of the pack is queued in its
:class:`~modbatt.nodes.events.EventOutbox` and flushed to the controller's ledger at the next
life-cycle check; :meth:`GatewaySimulation.partition` makes the controller unreachable, so
traffic carries on, renewals are deferred (and recorded) until :meth:`~GatewaySimulation.heal`.

Time is one clock for everything: the deployment's clock is the simulator's (a
:class:`~modbatt.sim.pack.VirtualClock` from a fixed epoch by default), so certificate expiry,
rate limits and the overlap run in simulated time.
"""

from __future__ import annotations

import collections
import contextlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import can

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..errors import ConfigError, TransportError, VerificationError
from ..model.pairing import PairingCertificate, Restrictions
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..model.tier import Tier
from ..nodes.entity import EntityNode
from ..nodes.events import EventIntake, EventOutbox, Receipt
from ..nodes.inmemory import EPOCH, InMemoryDeployment
from ..nodes.link import Received
from ..nodes.pairing_flow import pair_entities, renew_entities
from ..nodes.renewal import DEFAULT_OVERLAP_S, Handover, HandoverPhase
from ..protocol.gateway import AppFrame, Gateway, ModuleMessage
from ..protocol.pack_state import Action, Effect, PackEvent, PackSecurity, Step
from ..protocol.restrictions import RestrictionGate
from ..protocol.routes import RouteTable
from ..protocol.validation import PairedHandshakeInitiator, PairedHandshakeResponder
from ..transport.canbus import BusConfig, open_bus
from .pack import Scheduler, SimClock, SimStats, VirtualClock, _db, _Endpoint, _Module, _Node
from .schedule import NACK_FLAG, SEQ_BYTES, SEQ_MASK, TrafficPlan
from .state import check_modules

__all__ = ["VCU_PERIOD_S", "GatewaySimulation", "GatewayStats"]

#: The configuration utility sends VCU_COMMAND every 250 ms (Unit1.dfm ``tmrState``, docs/gateway.md §2).
VCU_PERIOD_S = 0.25
#: How often the pack checks expiry, renewal lead time and the overlaps.
_LIFECYCLE_PERIOD_S = 0.5
#: Commands the gateway forwards (acknowledged by the module like the pack simulator's).
_GATEWAY_COMMANDS = frozenset(
    {MessageClass.CHARGE_COMMAND, MessageClass.CELL_BALANCING, MessageClass.EMERGENCY_SHUTDOWN}
)
_STATE_OFF = 0


@dataclass
class GatewayStats:
    """What the gateway did: app frames seen and sent, commands forwarded and acknowledged."""

    app_frames_rx: int = 0  # frames the pack read on the app bus
    app_frames_tx: int = 0  # frames the pack bridged onto the app bus
    commands_forwarded: collections.Counter[str] = field(default_factory=collections.Counter)
    acks: int = 0
    nacks: int = 0
    renewals: int = 0
    expiries: int = 0
    isolations: int = 0
    lifecycle: list[dict[str, Any]] = field(default_factory=list)  # PackSecurity steps, in order
    deferred: dict[int, str | None] = field(default_factory=dict)  # renewals put off by a partition, by module
    flushes: list[int] = field(default_factory=list)  # events each flush appended to the ledger

    def to_dict(self) -> dict[str, Any]:
        return {
            "app_frames_rx": self.app_frames_rx, "app_frames_tx": self.app_frames_tx,
            "commands_forwarded": dict(self.commands_forwarded), "acks": self.acks, "nacks": self.nacks,
            "renewals": self.renewals, "expiries": self.expiries, "isolations": self.isolations,
            "deferred_renewals": len(self.deferred), "events_flushed": sum(self.flushes),
        }  # fmt: skip


class _AppPort:
    """One handle on the app bus: legacy 11-bit frames in clear, in and out."""

    def __init__(self, bus: can.BusABC, on_frame: Callable[[AppFrame], None] | None = None) -> None:
        self.bus = bus
        self.on_frame = on_frame
        self.sent = 0
        self.received = 0

    def send(self, frame: AppFrame) -> None:
        msg = can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=frame.is_extended)
        self.bus.send(msg)
        self.sent += 1

    def drain(self, timeout: float) -> int:
        n = 0
        msg = self.bus.recv(timeout)
        while msg is not None:
            if not msg.is_error_frame and self.on_frame is not None:
                self.received += 1
                self.on_frame(AppFrame(msg.arbitration_id, bytes(msg.data), msg.is_extended_id))
            n += 1
            msg = self.bus.recv(0.0)
        return n


class _Vcu:
    """The vehicle control unit: a contactor and balancing request every 250 ms; reads module status."""

    def __init__(self, port: _AppPort, db: Any) -> None:
        self.port = port
        self.db = db
        self.contactor = _STATE_OFF
        self.balancing = 0
        self.hv_bus_voltage = 400.0
        #: The latest MODULE_STATE each module reported through the gateway (module id -> state).
        self.reported: dict[int, int] = {}
        self.status_frames = 0
        port.on_frame = self._on_frame

    def command_frame(self) -> AppFrame:
        msg = self.db.get_message_by_name("VCU_COMMAND")
        values = {s.name: 0 for s in msg.signals} | {
            "vcu_contactor_ctrl": self.contactor, "vcu_cell_balance_ctrl": self.balancing,
            "vcu_hv_bus_voltage": self.hv_bus_voltage,
        }  # fmt: skip
        data = msg.encode(values, strict=False)
        return AppFrame(msg.frame_id, bytes(data).ljust(msg.length, b"\x00"))

    def tick(self) -> float:
        self.port.send(self.command_frame())
        return VCU_PERIOD_S

    def _on_frame(self, frame: AppFrame) -> None:
        try:
            msg = self.db.get_message_by_frame_id(frame.arbitration_id)
        except KeyError:
            return
        if msg.name == "MODULE_STATE":
            values = msg.decode(frame.data, decode_choices=False)
            self.reported[int(values["module_id"])] = int(values["module_state"])
            self.status_frames += 1


class _GatewayModule(_Module):
    """A module that obeys the gateway's commands: state changes, balancing, emergency shutdown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state = _STATE_OFF
        self.balancing = 0
        self.shutdowns = 0

    def _values(self, legacy: str) -> dict[str, float]:
        values = super()._values(legacy)
        if legacy == "MODULE_STATUS_1":
            values["moduleState"] = self.state
        return values

    def handle(self, peer: int, got: Received) -> None:
        cls = got.message_class
        if cls not in _GATEWAY_COMMANDS:
            super().handle(peer, got)
            return
        if len(got.payload) < SEQ_BYTES:
            self.stats.decode_errors += 1
            return
        applied: list[bool] = []

        def apply(c: MessageClass, body: bytes) -> bool:
            applied.append(self._apply(c, body))
            return applied[-1]

        self.command(cls, got.payload, apply)  # exactly once, acknowledged (docs/delivery.md)
        if any(applied):  # report the new state at once rather than at the next 100 ms tick
            msg = self.db.get_message_by_name("MODULE_STATUS_1")
            self.send(self.node_id, MessageClass.CURRENT_TELEMETRY, msg.encode(self._values("MODULE_STATUS_1")))

    def _apply(self, cls: MessageClass, body: bytes) -> bool:
        try:
            if cls is MessageClass.EMERGENCY_SHUTDOWN:
                self.state, self.shutdowns = _STATE_OFF, self.shutdowns + 1
                return True
            if cls is MessageClass.CELL_BALANCING:
                if len(body) != 1 or body[0] > 3:
                    return False
                self.balancing = body[0]
                return True
            decoded = self.db.get_message_by_name("MODULE_STATE_CHANGE").decode(body, decode_choices=False)
            if int(decoded["moduleId"]) != self.node_id:
                return False
            self.state = int(decoded["state"])
            return True
        except Exception:
            self.stats.decode_errors += 1
            return False


class _GatewayPack(_Node):
    """The pack controller: the gateway core between its app-bus port and its module-bus channels."""

    def __init__(self, endpoint: _Endpoint, plan: TrafficPlan, clock: SimClock, gateway: Gateway, stats: GatewayStats):
        super().__init__(endpoint, plan, clock)
        self.gateway = gateway
        self.gstats = stats
        self.app: _AppPort | None = None
        self._seq: dict[tuple[int, MessageClass], int] = collections.defaultdict(int)
        self.outstanding: dict[tuple[int, MessageClass], collections.OrderedDict[int, float]] = (
            collections.defaultdict(collections.OrderedDict)
        )

    def on_app(self, frame: AppFrame) -> None:
        self.gstats.app_frames_rx += 1
        for send in self.gateway.from_app(frame, now=self.clock.now()):
            self.command(send.node, send.message_class, send.payload)
            self.gstats.commands_forwarded[send.route] += 1

    def command(self, node: int, cls: MessageClass, body: bytes) -> None:
        key = (node, cls)
        seq = self._seq[key]
        self._seq[key] = (seq + 1) & SEQ_MASK
        self.outstanding[key][seq] = self.clock.now()
        self.stats.commands_sent += 1
        self.send(node, cls, seq.to_bytes(SEQ_BYTES, "big") + body)

    def handle(self, peer: int, got: Received) -> None:
        cls = got.message_class
        if cls in _GATEWAY_COMMANDS:
            word = int.from_bytes(got.payload[:2], "big") if len(got.payload) == 2 else None
            pending = self.outstanding[(peer, cls)]
            if word is None or (word & SEQ_MASK) not in pending:
                self.stats.misordered_acknowledged += 1
                return
            pending.pop(word & SEQ_MASK)
            self.stats.acks_received += 1
            self.gstats.acks += 1
            if word & NACK_FLAG:
                self.stats.refused += 1
                self.gstats.nacks += 1
            return
        frames = self.gateway.from_module(ModuleMessage(peer, cls, got.tier, got.payload))
        assert self.app is not None
        for frame in frames:
            self.app.send(frame)
            self.gstats.app_frames_tx += 1


def confirm_keys(pack: EntityNode, module: EntityNode, pairing_id: str, now: float) -> None:
    """A Level-4 paired handshake under the pairing's secrets: the ``confirmed`` event's evidence."""
    ps, ms = pack.pairing_secrets(pairing_id), module.pairing_secrets(pairing_id)
    assert ps is not None and ms is not None
    pack_id, module_id = pack.access_data.device_id, module.access_data.device_id
    ini = PairedHandshakeInitiator(secrets=ps, device_id=pack_id, partner_id=module_id, rng=pack.machine._rng)
    res = PairedHandshakeResponder(secrets=ms, device_id=module_id, partner_id=pack_id, rng=module.machine._rng)
    res.on_confirm(ini.on_response(res.on_challenge(ini.start(now), now), now), now)


class GatewaySimulation:
    """A VCU on the app bus, a gatewaying pack controller, ``modules`` modules on the secured module bus.

    ``app_bus`` and ``module_bus`` are :class:`~modbatt.transport.canbus.BusConfig`\\ s (default: a
    private ``virtual`` channel each). ``restrictions`` go into every module's certificate, and
    ``protocol`` is every pairing's protocol profile (docs/profiles.md; renewals keep it).
    ``confirm=False`` leaves the pairings unconfirmed (state ``paired``: commands are refused).
    """

    def __init__(
        self,
        modules: int = 3,
        *,
        seed: int | None = None,
        profile: BusProfile = CLASSIC,
        layout: IdLayout = SEED_LAYOUT,
        app_bus: BusConfig | None = None,
        module_bus: BusConfig | None = None,
        routes: RouteTable | None = None,
        restrictions: Restrictions | None = None,
        protocol: ProtocolProfile | str = DEFAULT_PROFILE,
        valid_for_s: int = 24 * 3600,
        renew_lead_s: float | None = None,
        overlap_s: float = DEFAULT_OVERLAP_S,
        confirm: bool = True,
        clock: SimClock | None = None,
    ) -> None:
        check_modules(modules)
        self.profile, self.layout = profile, layout
        self.clock: SimClock = clock or VirtualClock(EPOCH)
        self.valid_for_s, self.renew_lead_s, self.overlap_s = valid_for_s, renew_lead_s, overlap_s
        self.restrictions = restrictions
        self.protocol = profile_named(protocol)
        self.dep = InMemoryDeployment(seed=seed, modules=modules, clock=self.clock.now)
        self.gstats = GatewayStats()
        self.security: dict[int, PackSecurity] = {}
        self.certificates: dict[int, PairingCertificate] = {}
        self.handovers: dict[int, tuple[Handover, Handover]] = {}
        self._buses: list[can.BusABC] = []
        db = _db()
        self.db = db
        self.app_config = app_bus or BusConfig(interface="virtual", channel=f"modbatt-app-{uuid.uuid4().hex}")
        self.module_config = module_bus or BusConfig(
            interface="virtual", channel=f"modbatt-modules-{uuid.uuid4().hex}", fd=profile.fd
        )
        now = self.clock.now()
        for node_id, module in self.dep.modules.items():
            machine = self.security[node_id] = PackSecurity()
            binding_id = self.dep.bind(self.dep.pack, module).record.binding_id
            self._step(node_id, machine.handle(PackEvent.BOUND, now, binding_id=binding_id))
            self._pair(node_id, binding_id, confirm=confirm)
        self._module_stats, self._pack_stats = SimStats(), SimStats()
        #: The pack's copy of each module pairing's restrictions (what the gateway checks before forwarding).
        self.gates = {n: RestrictionGate(self.dep.pack.pairing_restrictions(self._pid(n))) for n in self.dep.modules}
        self.gateway = Gateway(self.security, routes=routes, restrictions=self.gates)
        plan = TrafficPlan(policy=self.certificates[1].metadata.encryption_policy)
        pack_nodes: dict[int, _Node] = {}
        module_nodes: dict[int, _Node] = {}
        pack_bus, module_bus = self._open(self.module_config), self._open(self.module_config)
        self._pack_ep = _Endpoint(pack_bus, profile, layout, self._pack_stats, 1, pack_nodes)
        self._module_ep = _Endpoint(module_bus, profile, layout, self._module_stats, 0, module_nodes)
        self.pack = _GatewayPack(self._pack_ep, plan, self.clock, self.gateway, self.gstats)
        self.modules: dict[int, _GatewayModule] = {}
        for node_id, module in self.dep.modules.items():
            pid = self._pid(node_id)
            self.pack.links[node_id] = self.dep.pack.channel(pid, profile=profile, layout=layout)
            pack_nodes[node_id] = self.pack
            m = _GatewayModule(node_id, self._module_ep, plan, self.clock, db)
            m.links[node_id] = module.channel(pid, profile=profile, layout=layout)
            module_nodes[node_id] = self.modules[node_id] = m
        self.pack.app = _AppPort(self._open(self.app_config), self.pack.on_app)
        self.vcu = _Vcu(_AppPort(self._open(self.app_config)), db)
        self._attacker = _AppPort(self._open(self.app_config))
        #: The pack's queue of events for the controller's ledger (docs/lifecycle.md §8).
        self.outbox = EventOutbox(self.dep.pack, controller_key=self.dep.controller.public_key)
        self._intake = EventIntake(self.dep.controller)
        #: False while the controller (and its ledger) cannot be reached: see :meth:`partition`.
        self.controller_reachable = True
        self._retire_later: list[str] = []
        for i, entry in enumerate(self.gstats.lifecycle):  # the set-up steps, queued in order
            self.outbox.record("pack_state", {k: entry[k] for k in ("node", "event", "from", "to")},
                               now=EPOCH + entry["t"] + i * 1e-6)  # fmt: skip
        self.scheduler = Scheduler(self.clock, [self._pack_ep, self._module_ep, self.pack.app, self.vcu.port])
        self._started = False

    # -- setup -------------------------------------------------------------------------------

    def _open(self, config: BusConfig) -> can.BusABC:
        bus = open_bus(config)
        self._buses.append(bus)
        return bus

    def _pid(self, node_id: int) -> str:
        return self.certificates[node_id].metadata.pairing_id

    def _pair(self, node_id: int, binding_id: str, *, confirm: bool) -> None:
        module, now = self.dep.modules[node_id], self.clock.now()
        outcome = pair_entities(
            self.dep.controller, self.dep.pack, module, binding_id, valid_for_s=self.valid_for_s,
            restrictions=self.restrictions, profile=self.protocol,
        )  # fmt: skip
        meta = outcome.certificate.metadata
        self.certificates[node_id] = outcome.certificate
        machine = self.security[node_id]
        paired = machine.handle(
            PackEvent.PAIRED, now, pairing_id=meta.pairing_id, policy=meta.encryption_policy,
            expires_at=meta.expires_at_ms / 1000,
        )  # fmt: skip
        self._step(node_id, paired)
        if confirm:
            confirm_keys(self.dep.pack, module, meta.pairing_id, now)
            self._step(node_id, machine.handle(PackEvent.CONFIRMED, now))

    def _step(self, node_id: int, step: Step | None) -> None:
        if step is None:
            return
        entry = {"node": node_id, "event": step.event.value, "from": step.source.value, "to": step.target.value}
        self.gstats.lifecycle.append(
            {"t": round(step.at - EPOCH, 3), **entry, "actions": [a.value for a in step.actions]}
        )  # fmt: skip
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            outbox.record("pack_state", entry, now=step.at)
        for effect in step.effects:
            self._effect(node_id, effect)

    def _effect(self, node_id: int, effect: Effect) -> None:
        links = getattr(self, "pack", None)
        link = links.links.get(node_id) if links is not None else None
        if effect.action is Action.ISOLATE and link is not None:
            self.gstats.isolations += 1
            with contextlib.suppress(VerificationError):
                self.pack.command(node_id, MessageClass.EMERGENCY_SHUTDOWN, bytes([1]))
        elif effect.action is Action.RAISE_FLOOR and link is not None:
            link.escalate(Tier.BINDING)
        elif effect.action is Action.RESET_FLOOR and link is not None:
            link.escalate(Tier.NONE)

    # -- driving -----------------------------------------------------------------------------

    def command(self, *, contactor: int | None = None, balancing: int | None = None) -> None:
        """What the VCU asks for from now on (it repeats it every 250 ms)."""
        if contactor is not None:
            self.vcu.contactor = contactor
        if balancing is not None:
            self.vcu.balancing = balancing

    def tap(self, bus: str = "module") -> can.BusABC:
        """Another handle on the ``"module"`` or ``"app"`` bus (an attacker, a monitor), closed with the simulation."""
        if bus not in ("module", "app"):
            raise ConfigError("tap the 'module' or the 'app' bus")
        return self._open(self.module_config if bus == "module" else self.app_config)

    def inject(self, frames: Iterable[AppFrame]) -> int:
        """Send frames on the app bus from a third handle (an attacker, or a misbehaving tool)."""
        n = 0
        for frame in frames:
            self._attacker.send(frame)
            n += 1
        self.scheduler.pump()
        return n

    def anomaly(self, node_id: int) -> None:
        """A severe anomaly on one module's relationship: its machine escalates (``raise_floor``)."""
        self._step(node_id, self.security[node_id].handle(PackEvent.ANOMALY, self.clock.now()))

    def emergency_shutdown(self, node_id: int) -> None:
        """The pack shuts one module down (an authenticated pairing-tier shutdown, acknowledged)."""
        self.security[node_id].allows(MessageClass.EMERGENCY_SHUTDOWN, self.pack.links[node_id].tier_for(
            MessageClass.EMERGENCY_SHUTDOWN))  # fmt: skip
        self.pack.command(node_id, MessageClass.EMERGENCY_SHUTDOWN, bytes([1]))
        self.scheduler.pump()

    def partition(self) -> None:
        """Cut the pack off from the controller and its ledger: pairings carry on, events queue."""
        self.controller_reachable = False

    def heal(self) -> None:
        """Reconnect: the next life-cycle check flushes the queue and catches up on what waited."""
        self.controller_reachable = True

    def _submit(self, events: list[bytes], since: int | None) -> Receipt:
        if not self.controller_reachable:
            raise TransportError("the controller is unreachable (partition)")
        return self._intake.submit(events, since)

    def renew(self, node_id: int) -> str:
        """Renew one module's pairing now (what the lead time triggers); returns the new pairing id."""
        old = self.certificates[node_id]
        module = self.dep.modules[node_id]
        outcome = renew_entities(self.dep.controller, self.dep.pack, module, old)
        new_pid = outcome.certificate.metadata.pairing_id
        old_pid = old.metadata.pairing_id
        kw = {"profile": self.profile, "layout": self.layout, "overlap_s": self.overlap_s}
        hp = self.dep.pack.handover(old_pid, new_pid, **kw)
        hm = module.handover(old_pid, new_pid, **kw)
        self.pack.links[node_id], self.modules[node_id].links[node_id] = hp, hm
        self.handovers[node_id] = (hp, hm)
        self.certificates[node_id] = outcome.certificate
        meta = outcome.certificate.metadata
        self._step(node_id, self.security[node_id].handle(
            PackEvent.RENEWED, self.clock.now(), pairing_id=new_pid, policy=meta.encryption_policy,
            expires_at=meta.expires_at_ms / 1000,
        ))  # fmt: skip
        self.gates[node_id] = RestrictionGate(meta.restrictions)
        self.gstats.renewals += 1
        return new_pid

    def _lifecycle(self) -> float:
        now = self.clock.now()
        reachable = self.controller_reachable
        for node_id, machine in self.security.items():
            handover = self.handovers.get(node_id)
            if handover is not None:
                hp, hm = handover
                hm.tick(now)
                if hp.tick(now):
                    self._retire_later.append(hp.old_pairing_id)  # the ledger learns it when reachable
                if hp.phase is HandoverPhase.DONE and hm.phase is HandoverPhase.DONE:
                    del self.handovers[node_id]
            elif self.renew_lead_s is not None and machine.renewal_due(now, self.renew_lead_s):
                if reachable:
                    self.renew(node_id)
                elif self.gstats.deferred.get(node_id) != machine.pairing_id:
                    self.gstats.deferred[node_id] = machine.pairing_id  # retried at every check until it works
                    self.outbox.record("renewal_deferred", {"node": node_id}, now=now)
            step = machine.tick(now)
            if step is not None:
                self.gstats.expiries += 1
                self._step(node_id, step)
                if Action.REQUEST_PAIRING in step.actions and reachable:
                    self._repair(node_id)
        if reachable:
            while self._retire_later:
                self.dep.controller.revoke_pairing(self._retire_later.pop(0), "renewed")
            if self.outbox.pending or self.outbox.dropped:
                self.gstats.flushes.append(self.outbox.flush(self._submit, now=now).appended)
        return _LIFECYCLE_PERIOD_S

    def _repair(self, node_id: int) -> None:
        """After expiry: a new pairing (the ``request_pairing`` effect); the lapsed one is erased."""
        old_pid = self._pid(node_id)
        notice = self.dep.controller.revoke_pairing(old_pid, "expired")
        binding_id = self.certificates[node_id].metadata.binding_id
        module = self.dep.modules[node_id]
        self._pair(node_id, binding_id, confirm=False)
        for node in (self.dep.pack, module):
            node.apply_pairing_revocation(notice)
        pid = self._pid(node_id)
        self.pack.links[node_id] = self.dep.pack.channel(pid, profile=self.profile, layout=self.layout)
        self.modules[node_id].links[node_id] = module.channel(pid, profile=self.profile, layout=self.layout)
        confirm_keys(self.dep.pack, module, pid, self.clock.now())
        self._step(node_id, self.security[node_id].handle(PackEvent.CONFIRMED, self.clock.now()))

    def start(self) -> None:
        """Start the periodic traffic (telemetry, heartbeats, the VCU's commands, the life-cycle checks)."""
        if self._started:
            return
        self._started = True
        t0 = self.clock.now()
        n = len(self.modules)
        for node_id, m in self.modules.items():
            m.start(self.scheduler, t0, (node_id - 1) / n)
        self.scheduler.at(t0, self.vcu.tick)
        self.scheduler.at(t0 + _LIFECYCLE_PERIOD_S, self._lifecycle)

    def run(self, duration: float, *, max_wall: float = 60.0) -> None:
        """Run ``duration`` simulated seconds (starting the traffic on the first call)."""
        if not duration > 0:
            raise ConfigError("duration must be positive")
        self.start()
        self.scheduler.run(self.clock.now() + duration, max_wall=max_wall)

    # -- results -----------------------------------------------------------------------------

    @property
    def stats(self) -> SimStats:
        """Module-bus figures of both sides (frames, units, rejects by reason, acknowledgements)."""
        out = SimStats()
        out.merge(self._pack_stats)
        out.merge(self._module_stats)
        return out

    def module_states(self) -> dict[int, int]:
        return {n: m.state for n, m in self.modules.items()}

    def summary(self) -> dict[str, Any]:
        """JSON-ready counters: the gateway's, the module bus's, the life cycle, the VCU's view."""
        stats = self.stats
        return {
            "gateway": {**self.gateway.summary(), **self.gstats.to_dict()},
            "module_bus": {"rejects": dict(stats.rejects), "units_tx": sum(stats.units_tx.values()),
                           "units_rx": sum(stats.units_rx.values()), "commands_received": stats.commands_received},
            "states": {str(n): m.state.value for n, m in self.security.items()},
            "vcu_reported": {str(k): v for k, v in sorted(self.vcu.reported.items())},
        }  # fmt: skip

    def close(self) -> None:
        for bus in self._buses:
            with contextlib.suppress(Exception):
                bus.shutdown()
        self._buses.clear()
        for node in (self.dep.pack, *self.dep.modules.values()):
            node.close_channels()
        self.dep.ledger.close()

    def __enter__(self) -> GatewaySimulation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

