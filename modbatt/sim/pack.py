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
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import isotp
from can.util import len2dlc

from ..can.catalog import build_legacy_database
from ..can.fragment import isotp_address, isotp_params
from ..can.functions import FUNCTIONS, RESYNC_FUNCTIONS, function_for, message_class_of
from ..can.ids import SEED_LAYOUT, CanIdFields, IdLayout
from ..can.secured import frame_format
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.freshness import COUNTER_BYTES, RESYNC_CHALLENGE_BYTES
from ..crypto.keystore import KeyStore
from ..errors import ConfigError, ModbattError, VerificationError
from ..model.policy import EncryptionPolicy, MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..model.tier import Tier
from ..nodes.channel import PairedChannel
from ..nodes.entity import EntityNode
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.killpoints import kill_point
from ..nodes.link import Received
from ..protocol.delivery import (
    SEQ_SPACE,
    Decision,
    DeliveryReceiver,
    DeliverySender,
    Outcome,
    RetryPolicy,
    Transmit,
    newer,
)
from ..transport.canbus import BusConfig, open_bus, resolve_bus
from .clock import AcceleratedClock, RealClock, Scheduler, SimClock, VirtualClock
from .schedule import (
    COMMAND_CLASSES,
    NACK_FLAG,
    SEQ_BYTES,
    SEQ_MASK,
    TELEMETRY,
    TrafficPlan,
    sized_plan,
    uses_isotp,
)
from .state import PackSetup, bind_and_pair, ephemeral_pack
from .state import check_modules as _check_modules

__all__ = [
    "AcceleratedClock",
    "PackSimulation",
    "RealClock",
    "Scheduler",
    "SimClock",
    "SimStats",
    "VirtualClock",
]

_TELEMETRY_BY_CLASS = {t.message_class: t for t in TELEMETRY}
_ACK_CLASSES = frozenset(COMMAND_CLASSES)
_LEGACY_COMMAND = {
    MessageClass.CHARGE_COMMAND: "MODULE_STATE_CHANGE",
    MessageClass.DISCHARGE_COMMAND: "MODULE_STATE_CHANGE",
    MessageClass.SAFETY_LIMITS: "MODULE_LIMITS",
}


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class SimStats:
    """What one run did. Keys of the per-class counters are ``"class/tier"`` strings."""

    frames_tx: collections.Counter[str] = field(default_factory=collections.Counter)
    frames_rx: collections.Counter[str] = field(default_factory=collections.Counter)
    units_tx: collections.Counter[str] = field(default_factory=collections.Counter)
    units_rx: collections.Counter[str] = field(default_factory=collections.Counter)
    rejects: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Stale resync answers refused before the traffic started (not counted in :attr:`ok`).
    resync_rejects: collections.Counter[str] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    commands_sent: int = 0
    commands_received: int = 0  # by modules
    acks_received: int = 0  # by the pack, in order
    lost_acknowledged: int = 0  # commands never acknowledged (at the end of the drain)
    misordered_acknowledged: int = 0  # acks or commands out of sequence order
    refused: int = 0  # NACKs (payload failed the module's checks)
    telemetry_decoded: int = 0
    decode_errors: int = 0
    ack_latency_max: float = 0.0
    ack_latency_sum: float = 0.0
    #: Delivery (docs/delivery.md): keys ``"node/class/seq"``; a command is in ``acknowledged`` when
    #: the pack got an "applied" ack for it, in ``applied`` once per time a module applied it.
    acknowledged: collections.Counter[str] = field(default_factory=collections.Counter)
    applied: collections.Counter[str] = field(default_factory=collections.Counter)
    gave_up: collections.Counter[str] = field(default_factory=collections.Counter)  # per class
    #: Queued commands replaced by a newer one of their stream before they were sent, per class.
    superseded: collections.Counter[str] = field(default_factory=collections.Counter)
    retransmissions: int = 0
    repeats: int = 0  # copies of an applied command answered again without applying it
    stale: int = 0  # copies older than the last applied command, dropped
    stray_acks: int = 0  # acks for nothing in flight (duplicates, late copies), ignored
    superseded_units: int = 0  # best-effort units replaced by a newer one before they left (ISO-TP queue)
    #: Seconds from submission to acknowledgement, per class (the pack's view).
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    #: The bus injected faults: loss is expected, so :attr:`ok` judges delivery, not completeness.
    faults: bool = False
    sim_seconds: float = 0.0
    wall_seconds: float = 0.0
    truncated: bool = False
    interrupted: bool = False  # ended by stop() (Ctrl-C) rather than by its duration

    def merge(self, other: SimStats | Mapping[str, Any]) -> None:
        """Add another node's or process's figures (a :class:`SimStats` or its ``to_dict()``)."""
        data = other.to_dict() if isinstance(other, SimStats) else other
        for name in ("frames_tx", "frames_rx", "units_tx", "units_rx", "rejects", "transport_errors"):
            getattr(self, name).update(data[name])
        self.resync_rejects.update(data.get("resync_rejects", {}))
        for name in ("acknowledged", "applied", "gave_up", "superseded"):
            getattr(self, name).update(data.get(name, {}))
        for cls, values in data.get("latencies", {}).items():
            self.latencies[cls].extend(values)
        self.faults = self.faults or bool(data.get("faults", False))
        for name in (
            "commands_sent",
            "commands_received",
            "acks_received",
            "lost_acknowledged",
            "misordered_acknowledged",
            "refused",
            "telemetry_decoded",
            "decode_errors",
            "ack_latency_sum",
            "retransmissions",
            "repeats",
            "stale",
            "stray_acks",
            "superseded_units",
        ):
            setattr(self, name, getattr(self, name) + data.get(name, 0))
        self.ack_latency_max = max(self.ack_latency_max, data["ack_latency_max"])
        self.truncated = self.truncated or bool(data["truncated"])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = dict(value) if isinstance(value, (collections.Counter, dict)) else value
        out["latencies"] = {k: list(v) for k, v in self.latencies.items()}
        return out

    @property
    def acknowledged_not_applied(self) -> int:
        """Commands acknowledged as applied that no module applied (must be 0)."""
        return sum(1 for k in self.acknowledged if self.applied[k] == 0)

    @property
    def applied_twice(self) -> int:
        """Commands a module applied more than once (must be 0)."""
        return sum(1 for n in self.applied.values() if n > 1)

    @property
    def exactly_once(self) -> bool:
        """Every acknowledged command applied, none applied twice."""
        return self.acknowledged_not_applied == 0 and self.applied_twice == 0

    def latency_percentiles(self, qs: tuple[float, ...] = (50, 90, 99)) -> dict[str, dict[str, float]]:
        """Acknowledgement latency per class in milliseconds at the percentiles ``qs`` (and the max)."""
        out = {}
        for cls, values in sorted(self.latencies.items()):
            v = sorted(values)
            if v:
                row = {f"p{q:g}": round(1000 * v[min(len(v) - 1, math.ceil(q / 100 * len(v)) - 1)], 3) for q in qs}
                out[cls] = {**row, "max": round(1000 * v[-1], 3), "n": len(v)}
        return out

    @property
    def ok(self) -> bool:
        """Every unit verified, nothing lost or misordered, every command acknowledged; on a
        faulty bus: every command acknowledged exactly once, none given up."""
        if self.faults:
            # Loss is injected: lost units are expected; every command must still be acknowledged
            # (after retries) and applied exactly once.
            return self.exactly_once and not self.gave_up and self.lost_acknowledged == 0 and not self.truncated
        return (
            self.exactly_once
            and not self.rejects
            and not self.transport_errors
            and self.lost_acknowledged == 0
            and self.misordered_acknowledged == 0
            and self.acks_received == self.commands_sent
            and sum(self.units_rx.values()) == sum(self.units_tx.values())
            and not self.truncated
        )

    def problems(self) -> list[str]:
        """Why :attr:`ok` is false, one line each (empty when it is true)."""
        out = []
        if self.acknowledged_not_applied:
            out.append(f"{self.acknowledged_not_applied} commands acknowledged and never applied")
        if self.applied_twice:
            out.append(f"{self.applied_twice} commands applied more than once")
        if self.gave_up:
            out.append("commands given up: " + ", ".join(f"{c} {n}" for c, n in sorted(self.gave_up.items())))
        sent, got = sum(self.units_tx.values()), sum(self.units_rx.values())
        if self.faults:
            pass  # loss, corruption and ISO-TP aborts are what the fault bus injects
        elif got < sent:
            lost = {
                k: self.units_tx[k] - self.units_rx[k] for k in self.units_tx if self.units_rx[k] < self.units_tx[k]
            }
            detail = ", ".join(f"{k} {n}" for k, n in sorted(lost.items()))
            out.append(f"{sent - got} of {sent} secured units sent were never received ({detail})")
        elif got > sent:
            out.append(f"{got - sent} more units received than sent: another sender on this bus? (use a run id)")
        if self.rejects and not self.faults:
            out.append("units rejected: " + ", ".join(f"{r} {n}" for r, n in sorted(self.rejects.items())))
        if self.transport_errors and not self.faults:
            out.append("ISO-TP errors: " + ", ".join(f"{r} {n}" for r, n in sorted(self.transport_errors.items())))
        if self.lost_acknowledged:
            out.append(f"{self.lost_acknowledged} commands never acknowledged")
        if self.misordered_acknowledged:
            out.append(f"{self.misordered_acknowledged} commands or acks out of order")
        settled = self.acks_received + sum(self.superseded.values())
        settled += sum(self.gave_up.values()) if self.faults else 0
        if settled != self.commands_sent and not self.lost_acknowledged:
            out.append(f"{self.acks_received} acks for {self.commands_sent} commands")
        if self.truncated:
            out.append("stopped by the wall-clock guard before the simulated time was over")
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows per class/tier: frames and units sent and received."""
        keys = sorted(set(self.frames_tx) | set(self.frames_rx) | set(self.units_tx) | set(self.units_rx))
        return [
            {
                "message_class": k.split("/")[0],
                "tier": k.split("/")[1],
                "frames_tx": self.frames_tx[k],
                "frames_rx": self.frames_rx[k],
                "units_tx": self.units_tx[k],
                "units_rx": self.units_rx[k],
            }
            for k in keys
        ]


def _key(message_class: MessageClass | str, tier: Tier) -> str:
    return f"{MessageClass(message_class).value}/{Tier(tier).label}"


# ---------------------------------------------------------------------------------------------
# Bus endpoints and connections
# ---------------------------------------------------------------------------------------------


class _Endpoint:
    """One python-can bus handle and the node(s) behind it.

    ``direction`` is the seed-layout direction this side *receives* (1 for the pack, 0 for
    modules); ``nodes`` maps module ids to handlers (the pack side maps every id to the pack).
    """

    def __init__(
        self,
        bus: can.BusABC,
        profile: BusProfile,
        layout: IdLayout,
        stats: SimStats,
        direction: int,
        nodes: dict[int, _Node],
    ) -> None:
        self.bus = bus
        self.profile = profile
        self.layout = layout
        self.stats = stats
        self.direction = direction
        self.nodes = nodes
        self._fields: dict[int, CanIdFields | None] = {}

    def fields(self, can_id: int) -> CanIdFields | None:
        """The decoded identifier, or None when the layout or the function table refuses it (cached)."""
        if can_id in self._fields:
            return self._fields[can_id]
        f: CanIdFields | None
        try:
            f = self.layout.decode(can_id)
            message_class_of(f.function)
        except VerificationError:
            f = None
        if len(self._fields) < 4096:  # bounded: an ID spray cannot grow it
            self._fields[can_id] = f
        return f

    def send(self, can_id: int, data: bytes) -> None:
        fd = self.profile.fd
        msg = can.Message(
            arbitration_id=can_id, data=data, is_extended_id=True, is_fd=fd, bitrate_switch=fd and self.profile.brs
        )
        self.bus.send(msg)
        f = self.fields(can_id)
        if f is not None and f.tier is not None:
            self.stats.frames_tx[_key(message_class_of(f.function), f.tier)] += 1

    def drain(self, timeout: float) -> int:
        """Handle every frame that arrives within ``timeout`` (0: only what is already there)."""
        n = 0
        msg = self.bus.recv(timeout)
        while msg is not None:
            if not msg.is_error_frame and msg.is_extended_id:
                self._dispatch(msg.arbitration_id, bytes(msg.data))
            n += 1
            msg = self.bus.recv(0.0)
        return n

    def _dispatch(self, can_id: int, data: bytes) -> None:
        f = self.fields(can_id)
        if f is None:
            self.stats.rejects["malformed"] += 1
            return
        if f.direction != self.direction:
            return  # travelling the other way: another node's frame (or a multicast copy)
        node = self.nodes.get(f.node)
        if node is None:
            return  # addressed to a module that lives elsewhere
        assert f.tier is not None
        self.stats.frames_rx[_key(message_class_of(f.function), f.tier)] += 1
        node.on_frame(f, can_id, data)


class _Conn:
    """One end of a connection: raw secured frames, or ISO-TP without threads."""

    def __init__(self, node: _Node, peer: int, function: int, tier: Tier, isotp_mode: bool) -> None:
        self.node = node
        self.peer = peer
        ep = node.endpoint
        out = 1 - ep.direction
        spec = FUNCTIONS[function]
        self.tx_id = ep.layout.encode(spec.id_fields(peer, out, tier))
        self.rx_id = ep.layout.encode(spec.id_fields(peer, ep.direction, tier))
        self.isotp = isotp_mode
        self._rx: collections.deque[isotp.CanMessage] = collections.deque()
        self._tp: isotp.TransportLayerLogic | None = None
        if isotp_mode:
            prof = ep.profile
            params = isotp_params(fd=prof.fd, blocking_send=False)
            params["bitrate_switch"] = prof.fd and prof.brs
            self._tp = isotp.TransportLayerLogic(
                rxfn=self._rxfn,
                txfn=self._txfn,
                address=isotp_address(self.tx_id, self.rx_id, extended=True),
                error_handler=self._error,
                params=params,
            )

    def _rxfn(self, _timeout: float) -> isotp.CanMessage | None:
        return self._rx.popleft() if self._rx else None

    def _txfn(self, msg: isotp.CanMessage) -> None:
        self.node.endpoint.send(msg.arbitration_id, bytes(msg.data))

    def _error(self, exc: Exception) -> None:
        self.node.endpoint.stats.transport_errors[type(exc).__name__] += 1

    def send(self, data: bytes, *, retry: bool = False, supersede: bool = False) -> int:
        """Send one unit; returns how many queued units it replaced (``supersede``: best-effort
        classes, where the newest value is the one that matters, docs/delivery.md §1)."""
        if self._tp is None:
            self.node.endpoint.send(self.tx_id, data)
            return 0
        dropped = 0
        if retry and self._tp.transmitting():
            # A retry supersedes a transfer stuck on a lost flow-control frame (docs/delivery.md §ISO-TP).
            self._tp.stop_sending()
        elif supersede:
            # Units queued behind a transfer waiting out a lost flow control (N_Bs, 1 s) would pile
            # up without bound on a lossy bus, each older than the next: keep only the newest.
            dropped = self._tp.tx_queue.qsize()
            self._tp.clear_tx_queue()
        self._tp.send(data)
        self._process()
        return dropped

    def feed(self, data: bytes) -> None:
        if self._tp is None:
            self.node.on_unit(self, data, reassembled=False)
            return
        fd = self.node.endpoint.profile.fd
        self._rx.append(isotp.CanMessage(self.rx_id, len2dlc(len(data)), data, extended_id=True, is_fd=fd))
        self._process()

    def _process(self) -> None:
        assert self._tp is not None
        self._tp.process()
        while self._tp.available():
            unit = self._tp.recv()
            if unit is not None:
                self.node.on_unit(self, bytes(unit), reassembled=True)


class _Node:
    """A node's application: its links per peer, its connections, what it does with units."""

    def __init__(self, endpoint: _Endpoint, plan: TrafficPlan, clock: SimClock) -> None:
        self.endpoint = endpoint
        self.plan = plan
        self.clock = clock
        self.links: dict[int, PairedChannel] = {}
        self._conns: dict[tuple[int, int, Tier], _Conn] = {}

    @property
    def stats(self) -> SimStats:
        return self.endpoint.stats

    def conn(self, peer: int, function: int, tier: Tier) -> _Conn:
        key = (peer, function, tier)
        c = self._conns.get(key)
        if c is None:
            profile = self.endpoint.profile
            link = self.links[peer]
            if function in RESYNC_FUNCTIONS:
                # Control frames: a challenge fits one frame; an answer is FV ‖ tag (or signature).
                fmt = frame_format(tier, profile, link.protocol)
                answer = COUNTER_BYTES + fmt.tag_bytes if tier is not Tier.NONE else 0
                isotp_mode = max(answer, RESYNC_CHALLENGE_BYTES) > profile.data_field
            else:
                isotp_mode = uses_isotp(self.plan, message_class_of(function), profile, tier)
            c = self._conns[key] = _Conn(self, peer, function, tier, isotp_mode)
        return c

    def flush(self, peer: int) -> None:
        """Send the control frames (resync) the channel with ``peer`` queued."""
        for pdu in self.links[peer].frames_to_send():
            fields = self.endpoint.layout.decode(pdu.can_id)
            self.conn(peer, fields.function, fields.tier if fields.tier is not None else Tier.NONE).send(pdu.data)

    def send(self, peer: int, message_class: MessageClass, payload: bytes, *, retry: bool = False) -> None:
        pdu = self.links[peer].send(message_class, payload)
        tier = self.links[peer].tier_for(message_class)
        c = self.conn(peer, function_for(message_class).code, tier)
        if pdu.can_id != c.tx_id:  # pragma: no cover - would mean the link and the sim disagree on IDs
            raise ModbattError(f"link chose id {pdu.can_id:#x}, connection expects {c.tx_id:#x}")
        if not c.isotp and not pdu.single_frame:  # pragma: no cover - the plan's sizes were exceeded
            raise ModbattError(f"{message_class} unit of {len(pdu.data)} B does not fit one frame")
        dropped = c.send(pdu.data, retry=retry, supersede=message_class not in _ACK_CLASSES)
        self.stats.units_tx[_key(message_class, tier)] += 1 - dropped  # units that went to the bus
        self.stats.superseded_units += dropped

    def on_frame(self, fields: CanIdFields, can_id: int, data: bytes) -> None:
        if fields.node not in self.links:
            return
        assert fields.tier is not None
        self.conn(fields.node, fields.function, fields.tier).feed(data)

    def on_unit(self, conn: _Conn, data: bytes, *, reassembled: bool) -> None:
        try:
            got = self.links[conn.peer].receive(conn.rx_id, data, reassembled=reassembled)
        except VerificationError as exc:
            self.stats.rejects[exc.reason.value] += 1
            self.flush(conn.peer)  # a streak of failures may have queued a resync challenge
            return
        if got is None:  # a resync frame: the channel may have answers or a challenge to send
            self.flush(conn.peer)
            return
        self.stats.units_rx[_key(got.message_class, got.tier)] += 1
        self.handle(conn.peer, got)

    def handle(self, peer: int, got: Received) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def _stream_of(name: str) -> tuple[int, MessageClass]:
    node, cls = name.split("/", 1)
    return int(node), MessageClass(cls)


def _db() -> Any:
    return build_legacy_database()


#: Where a module keeps its idempotence record for one pairing (in its entity's key store).
DELIVERY_RECORD = "delivery/{pairing_id}"


class _Module(_Node):
    """A module: telemetry + heartbeat out, commands in (checked, applied exactly once, acknowledged).

    ``keystore``: where the idempotence record is persisted (the module's own key store; its
    writes are atomic), restored from there when the module starts (docs/delivery.md).
    """

    def __init__(
        self,
        node_id: int,
        endpoint: _Endpoint,
        plan: TrafficPlan,
        clock: SimClock,
        db: Any,
        *,
        keystore: KeyStore | None = None,
        pairing_id: str = "",
    ) -> None:
        super().__init__(endpoint, plan, clock)
        self.node_id = node_id
        self.db = db
        self._store = keystore
        self._record_name = DELIVERY_RECORD.format(pairing_id=pairing_id)
        record = None
        if keystore is not None and self._record_name in keystore.record_names():
            record = keystore.record(self._record_name)
        self.delivery = DeliveryReceiver(record)
        #: A file each applied command is appended to once its record is persisted (a module
        #: killed later still counts what it applied: the soak and kill tests read it).
        self.journal: str | None = None
        self._beat = 0

    def start(self, scheduler: Scheduler, t0: float, share: float) -> None:
        """Schedule this module's periodic traffic, phase-shifted by ``share`` of each period."""
        for spec in TELEMETRY:
            scheduler.at(t0 + share * spec.period, self._telemetry_task(spec.message_class, spec.legacy, spec.period))
        period = self.plan.heartbeat_period
        scheduler.at(t0 + share * period, self._heartbeat_task(period))

    def _telemetry_task(self, cls: MessageClass, legacy: str, period: float) -> Callable[[], float]:
        msg = self.db.get_message_by_name(legacy)

        def task() -> float:
            self.send(self.node_id, cls, msg.encode(self._values(legacy)))
            return period

        return task

    def _heartbeat_task(self, period: float) -> Callable[[], float]:
        def task() -> float:
            self._beat = (self._beat + 1) & 0xFF
            self.send(self.node_id, MessageClass.HEARTBEAT, bytes([self._beat]))
            return period

        return task

    def _values(self, legacy: str) -> dict[str, float]:
        # A plausible 14-cell module: slow sine on current and temperature, SOC drifting down.
        t = self.clock.now()
        wave = math.sin(t / 7.0 + self.node_id)
        if legacy == "MODULE_STATUS_1":
            soc = 80.0 - (t % 600) / 20.0
            return {
                "moduleState": 3,
                "moduleStatus": 0,
                "moduleSoc": round(soc * 2) / 2,
                "moduleSoh": 98.0,
                "cellCount": 14,
                "moduleMmc": round(20.0 * wave, 2),
                "moduleMmv": round(51.8 + 0.5 * wave, 3),
            }
        if legacy == "MODULE_STATUS_2":
            return {"cellLoVolt": 3.65, "cellHiVolt": 3.72, "cellAvgVolt": 3.69}
        return {"cellLoTemp": 24.5 + wave, "cellHiTemp": 27.1 + wave, "cellAvgTemp": 25.8 + wave}

    def handle(self, peer: int, got: Received) -> None:
        cls = got.message_class
        if cls is MessageClass.HEARTBEAT:
            return
        if cls not in _ACK_CLASSES or len(got.payload) < SEQ_BYTES:
            self.stats.decode_errors += 1
            return
        self.command(cls, got.payload, self._check)

    def command(self, cls: MessageClass, payload: bytes, apply: Callable[[MessageClass, bytes], bool]) -> None:
        """One copy of a critical command: applied once (``apply`` checks and applies it), its
        record persisted, then acknowledged; a repeat is acknowledged again, never re-applied."""
        kill_point("module.command.received")
        self.stats.commands_received += 1
        seq = int.from_bytes(payload[:SEQ_BYTES], "big") & SEQ_MASK
        stream = MessageClass(cls).value
        decision = self.delivery.decide(stream, seq)
        if decision is Decision.STALE:
            self.stats.stale += 1
            return
        if decision is Decision.REPEAT:
            self.stats.repeats += 1
            ok = self.delivery.status(stream)
        else:
            ok = apply(cls, payload[SEQ_BYTES:])
            record = self.delivery.commit(stream, seq, ok, self.effect(cls, payload[SEQ_BYTES:]) if ok else None)
            if self._store is not None:
                self._store.put_record(self._record_name, record)  # before the ack: it survives a restart
            if ok:
                self.stats.applied[f"{self.node_id}/{stream}/{seq}"] += 1
                if self.journal is not None:
                    with open(self.journal, "a", encoding="utf-8") as f:
                        f.write(f"{self.node_id}/{stream}/{seq}\n")
            kill_point("module.command.committed")
        ack = seq | (0 if ok else NACK_FLAG)
        self.send(self.node_id, cls, ack.to_bytes(2, "big"))

    def effect(self, cls: MessageClass, body: bytes) -> Any:
        """What applying the command changed, recorded with it (here: the body's CRC-32)."""
        return zlib.crc32(body)

    def _check(self, cls: MessageClass, body: bytes) -> bool:
        try:
            if cls is MessageClass.FIRMWARE_UPDATE:
                block, crc = body[4:-4], body[-4:]
                return zlib.crc32(block).to_bytes(4, "big") == crc
            decoded = self.db.get_message_by_name(_LEGACY_COMMAND[cls]).decode(body)
            key = "moduleId" if "moduleId" in decoded else "module_id"
            return int(decoded[key]) == self.node_id
        except Exception:
            self.stats.decode_errors += 1
            return False


#: Firmware blocks may arrive late without harm, and a multi-frame ISO-TP unit is lost more often
#: than one frame (docs/delivery.md §3): they get more tries than the state commands.
FIRMWARE_RETRY = RetryPolicy(max_tries=30)
#: How often the pack looks for retries due (well under RetryPolicy.first_s).
RETRY_TICK_S = 0.01
#: The pack reserves sequence numbers in blocks and persists only the block's end, as the channel
#: reserves freshness (docs/delivery.md §Persistence): a restart skips ahead, never back.
SEQ_RESERVE = 256
#: Where the pack keeps its streams' reserved sequence numbers (in its own key store).
SENDER_RECORD = "delivery-sender"


class _Pack(_Node):
    """The pack controller: keep-alives and critical commands out (acknowledged, retried), telemetry and acks in."""

    def __init__(
        self,
        endpoint: _Endpoint,
        plan: TrafficPlan,
        clock: SimClock,
        db: Any,
        retry: RetryPolicy | None = None,
        keystore: KeyStore | None = None,
    ) -> None:
        super().__init__(endpoint, plan, clock)
        self.db = db
        self._store = keystore
        self._reserved: dict[str, int] = {}
        if keystore is not None and SENDER_RECORD in keystore.record_names():
            self._reserved = {k: int(v) for k, v in keystore.record(SENDER_RECORD).items()}
        start = {_stream_of(k): v for k, v in self._reserved.items()}
        self.retry = retry or RetryPolicy(supersede=True)
        self.delivery = DeliverySender(self.retry, next_seq=start, policy_for=self._policy_for)
        self._submitted: collections.Counter[tuple[int, MessageClass]] = collections.Counter()
        self._beat = 0
        self._fw_offset = 0
        self.sending = True

    def start(self, scheduler: Scheduler, t0: float, nodes: list[int], total: int) -> None:
        p = self.plan
        for node in nodes:
            share = (node - 1) / total
            scheduler.at(t0 + share * p.keepalive_period, self._every(p.keepalive_period, self._keepalive, node))
            scheduler.at(t0 + share * p.command_period, self._every(p.command_period, self._command, node))
            scheduler.at(t0 + share * p.limits_period, self._every(p.limits_period, self._limits, node))
        order = itertools.count()  # firmware blocks go round robin over the modules
        scheduler.at(t0, self._every(p.firmware_period, lambda: self._firmware(nodes[next(order) % len(nodes)])))
        scheduler.at(t0, self._retries)

    def _policy_for(self, stream: Any) -> RetryPolicy:
        return FIRMWARE_RETRY if stream[1] is MessageClass.FIRMWARE_UPDATE else self.retry

    def _retries(self) -> float:
        """Retries due and give-ups (runs during the drain too: it is how late commands settle)."""
        sends, gave_up = self.delivery.tick(self.clock.now())
        for settled in gave_up:
            _node, cls = settled.stream  # type: ignore[misc]
            self.stats.gave_up[MessageClass(cls).value] += 1
        for t in sends:
            self._transmit(t)
        return RETRY_TICK_S

    def _every(self, period: float, fn: Callable[..., None], *args: Any) -> Callable[[], float | None]:
        def task() -> float | None:
            if not self.sending:
                return None
            fn(*args)
            return period

        return task

    def _keepalive(self, node: int) -> None:
        self._beat = (self._beat + 1) & 0xFF
        self.send(node, MessageClass.HEARTBEAT, bytes([self._beat]))

    def _command(self, node: int) -> None:
        sub = self._submitted
        n = sub[(node, MessageClass.CHARGE_COMMAND)] + sub[(node, MessageClass.DISCHARGE_COMMAND)]
        cls = MessageClass.CHARGE_COMMAND if n % 2 == 0 else MessageClass.DISCHARGE_COMMAND
        body = self.db.get_message_by_name("MODULE_STATE_CHANGE").encode(
            {"moduleId": node, "state": 3, "hvBusVoltage": 400.0}
        )
        self._critical(node, cls, body)

    def _limits(self, node: int) -> None:
        body = self.db.get_message_by_name("MODULE_LIMITS").encode(
            {
                "module_id": node,
                "module_dischage_limit": 100.0,
                "module_charge_limit": 50.0,
                "module_charge_end_voltage_limit": 58.8,
            }
        )
        self._critical(node, MessageClass.SAFETY_LIMITS, body)

    def _firmware(self, node: int) -> None:
        size = self.plan.firmware_block
        block = bytes((self._fw_offset + i) & 0xFF for i in range(size))
        body = self._fw_offset.to_bytes(4, "big") + block + zlib.crc32(block).to_bytes(4, "big")
        self._fw_offset += size
        self._critical(node, MessageClass.FIRMWARE_UPDATE, body)

    def _critical(self, node: int, cls: MessageClass, body: bytes) -> None:
        self._submitted[(node, cls)] += 1
        self.stats.commands_sent += 1
        self._reserve(node, cls)
        for t in self.delivery.submit((node, cls), body, self.clock.now()):
            self._transmit(t)
        for settled in self.delivery.superseded:
            self.stats.superseded[MessageClass(settled.stream[1]).value] += 1  # type: ignore[index]
        self.delivery.superseded.clear()

    def _reserve(self, node: int, cls: MessageClass) -> None:
        if self._store is None:
            return
        name = f"{node}/{cls.value}"
        nxt = self.delivery.next_seqs().get((node, cls), 0)
        reserved = self._reserved.get(name)
        if reserved is None or not newer(reserved, nxt):
            self._reserved[name] = (nxt + SEQ_RESERVE) % SEQ_SPACE
            self._store.put_record(SENDER_RECORD, dict(self._reserved))

    def _transmit(self, t: Transmit) -> None:
        # Every try is a new secured unit: the channel gives it new freshness (docs/delivery.md).
        node, cls = t.stream  # type: ignore[misc]
        if t.attempt > 1:
            self.stats.retransmissions += 1
        self.send(node, cls, t.seq.to_bytes(SEQ_BYTES, "big") + t.body, retry=t.attempt > 1)

    def handle(self, peer: int, got: Received) -> None:
        cls = got.message_class
        spec = _TELEMETRY_BY_CLASS.get(cls)
        if spec is not None:
            try:
                self.db.get_message_by_name(spec.legacy).decode(got.payload)
                self.stats.telemetry_decoded += 1
            except Exception:
                self.stats.decode_errors += 1
            return
        if cls is MessageClass.HEARTBEAT:
            return
        if cls not in _ACK_CLASSES or len(got.payload) != 2:
            self.stats.decode_errors += 1
            return
        word = int.from_bytes(got.payload, "big")
        seq = word & SEQ_MASK
        settled, following = self.delivery.on_ack((peer, cls), seq, bool(word & NACK_FLAG), self.clock.now())
        if settled is None:
            self.stats.stray_acks += 1  # a duplicate or a late copy: the command is settled already
            return
        self.stats.acks_received += 1
        if settled.outcome is Outcome.REFUSED:
            self.stats.refused += 1
        else:
            self.stats.acknowledged[f"{peer}/{cls.value}/{seq}"] += 1
        self.stats.ack_latency_sum += settled.latency
        self.stats.ack_latency_max = max(self.stats.ack_latency_max, settled.latency)
        self.stats.latencies[cls.value].append(settled.latency)
        for t in following:
            self._transmit(t)

    def outstanding(self) -> int:
        """Commands neither acknowledged nor given up (in flight or queued)."""
        return self.delivery.pending()


# ---------------------------------------------------------------------------------------------
# Pairing, and a module's state on disk (what a module process restores its channel from)
# ---------------------------------------------------------------------------------------------


def _paired(
    modules: int, seed: int | None, protocol: ProtocolProfile = DEFAULT_PROFILE
) -> tuple[InMemoryDeployment, dict[int, str], EncryptionPolicy]:
    """Bind and pair a pack with ``modules`` modules under ``protocol``; the deployment and each pairing id."""
    dep = InMemoryDeployment(seed=seed, modules=modules)
    pairings, policy = bind_and_pair(
        dep.controller, dep.pack, dep.modules, dep.authority_key, dep.clock, dep.rng, protocol
    )
    return dep, pairings, policy


def _persist_entity(node: EntityNode, path: Path) -> Path:
    """Write ``node``'s key store to an encrypted store at ``path`` (key file beside it); the key file."""
    key_file = KeyStore.generate_key_file(path.with_suffix(".kek"))
    source = node.keystore
    disk = KeyStore.create(path, key_file=key_file, reproducible=source.reproducible)
    with disk.transaction():
        for name in source.key_names():
            disk.put_private_key(name, source.private_key(name))
        for name in source.record_names():
            disk.put_record(name, source.record(name))
    disk.close()
    return key_file


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
