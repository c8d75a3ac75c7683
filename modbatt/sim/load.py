"""A whole pack's traffic (:mod:`modbatt.sim.schedule`) on one simulated bus: load, queueing, CPU load.

:class:`PackTraffic` puts the periodic traffic of 1-31 modules on a simulated bus (it is the
background the design space measures each transaction against); :func:`simulate_pack_load` runs
it alone and reports bus load and queueing per message class; :func:`cpu_load` is the analytic
share of each CPU the same traffic needs. docs/simulation.md §6.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..can.ids import MODULE_NODES, SEED_LAYOUT, IdLayout
from ..can.wiretime import BusProfile, bus_load
from ..model.policy import MessageClass
from ..model.tier import Tier
from .busmodel import BUSES, CanBusModel, FrameRecord, wire_seconds
from .cpu import CCM, GCM, Platform
from .eventloop import EventLoop
from .schedule import ACK_BYTES, COMMAND_CLASSES, HEARTBEAT_BYTES, TELEMETRY, TrafficPlan, frames_for_unit
from .transactions import (
    PROTOCOLS,
    Process,
    ProfileModel,
    Request,
    Transfer,
    can_id,
    protocol_named,
    send_unit,
    unit_bytes,
)

__all__ = ["PackLoadResult", "PackTraffic", "cpu_load", "simulate_pack_load"]


def _extra(protocol: ProfileModel, cls: MessageClass) -> int:
    """Bytes the protocol adds to a routine unit: a signature on every command and ack where it signs them."""
    return protocol.command_signature_bytes if cls in COMMAND_CLASSES else 0


def _isotp(plan: TrafficPlan, protocol: ProfileModel, cls: MessageClass, bus: BusProfile) -> bool:
    """ISO-TP both ways as soon as one unit either way exceeds a frame (as :func:`~modbatt.sim.schedule.uses_isotp`)."""
    tier = plan.tier(cls)
    biggest = max(plan.payload_sizes(cls)) + _extra(protocol, cls)
    return tier is Tier.BINDING or unit_bytes(bus, Transfer("pack", cls, tier, biggest)) > bus.data_field


class PackTraffic:
    """The periodic traffic of ``modules`` modules and their pack, scheduled on ``loop`` and ``bus``.

    Every module sends its telemetry and heartbeat, the pack its keep-alives, commands, limits and
    firmware blocks, each module acknowledging; phases are spread evenly so periodic messages do
    not all start together. With ``platform`` the sender's seal and receiver's open time are
    added per unit (CPUs never contend: one process per message). ``latencies`` collects message
    latencies per (class, sender) and ``mix`` the frame lengths sent.
    """

    def __init__(
        self,
        loop: EventLoop,
        bus: CanBusModel,
        modules: int,
        *,
        plan: TrafficPlan | None = None,
        protocol: ProfileModel | str = "seed",
        platform: Platform | None = None,
        layout: IdLayout = SEED_LAYOUT,
    ) -> None:
        if not 1 <= modules <= len(MODULE_NODES):
            raise ValueError("modules must be 1-31")
        self.loop, self.bus, self.modules = loop, bus, modules
        self.plan = plan or TrafficPlan()
        self.protocol = protocol if isinstance(protocol, ProfileModel) else protocol_named(protocol)
        self.platform, self.layout = platform, layout
        self.latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.mix: dict[int, int] = defaultdict(int)
        self._lengths: dict[tuple[MessageClass, int], list[int]] = {}  # memo: thousands of messages, few shapes
        self._ids: dict[tuple[MessageClass, int, int], int] = {}
        self._schedule()

    def _cost(self, actor: str, tier: Tier, nbytes: int) -> float:
        # Routine units cost one AEAD seal or open each (signatures of the seed's commands are
        # left to cpu_load: a CPU that cannot keep up shows there, not as one long message).
        if self.platform is None or tier is Tier.NONE:
            return 0.0
        return self.platform.cpu(actor).cost(GCM if self.bus.profile.fd else CCM, nbytes)

    def _frames(self, cls: MessageClass, tier: Tier, payload: int) -> list[int]:
        frames = self._lengths.get((cls, payload))
        if frames is None:
            prof = self.bus.profile
            unit = unit_bytes(prof, Transfer("pack", cls, tier, payload))
            frames = self._lengths[(cls, payload)] = frames_for_unit(
                unit, prof, _isotp(self.plan, self.protocol, cls, prof)
            )
        for n in frames:
            self.mix[n] += 1
        return frames

    def _message(self, cls: MessageClass, sender: str, node: int, payload: int) -> Generator[Request, Any, None]:
        tier = self.plan.tier(cls)
        direction = 0 if sender == "pack" else 1
        receiver = "module" if sender == "pack" else "pack"
        tx, rx = self._id(cls, tier, node, direction), self._id(cls, tier, node, 1 - direction)
        payload += _extra(self.protocol, cls)
        yield ("compute", self._cost(sender, tier, payload))
        yield from send_unit(tx, rx, self._frames(cls, tier, payload), (cls.value, sender))
        yield ("compute", self._cost(receiver, tier, payload))
        if cls in COMMAND_CLASSES and sender == "pack":
            ack_start = self.loop.now
            ack = ACK_BYTES + _extra(self.protocol, cls)
            yield ("compute", self._cost("module", tier, ack))
            yield from send_unit(rx, tx, self._frames(cls, tier, ack), (cls.value, "module (ack)"))
            yield ("compute", self._cost("pack", tier, ack))
            self.latencies[(cls.value, "module (ack)")].append(self.loop.now - ack_start)

    def _id(self, cls: MessageClass, tier: Tier, node: int, direction: int) -> int:
        key = (cls, node, direction)
        if key not in self._ids:
            self._ids[key] = can_id(self.layout, cls, tier, node, direction)
        return self._ids[key]

    def _start(self, cls: MessageClass, sender: str, node: int, payload: int) -> None:
        t0, key = self.loop.now, (cls.value, sender)
        Process(self.loop, self.bus, self._message(cls, sender, node, payload),
                lambda: self.latencies[key].append(self.loop.now - t0))  # fmt: skip

    def _command(self, flip: itertools.cycle[MessageClass], node: int) -> None:
        cls = next(flip)  # charge and discharge commands alternate
        self._start(cls, "pack", node, self.plan.payload_sizes(cls)[0])

    def _periodic(self, period: float, phase: float, fn: Callable[[], None]) -> None:
        def tick() -> None:
            fn()
            self.loop.call_later(period, tick)

        self.loop.schedule(phase, tick)

    def _schedule(self) -> None:
        plan, n, sizes = self.plan, self.modules, self.plan.payload_sizes
        for node in range(1, n + 1):
            share = (node - 1) / n
            for spec in TELEMETRY:
                cls = spec.message_class
                self._periodic(spec.period, share * spec.period, _bind(self._start, cls, "module", node, sizes(cls)[1]))
            for period, sender in ((plan.heartbeat_period, "module"), (plan.keepalive_period, "pack")):
                self._periodic(period, share * period, _bind(self._start, MessageClass.HEARTBEAT, sender, node,
                                                            HEARTBEAT_BYTES))  # fmt: skip
            flip = itertools.cycle((MessageClass.CHARGE_COMMAND, MessageClass.DISCHARGE_COMMAND))
            self._periodic(plan.command_period, share * plan.command_period, _bind(self._command, flip, node))
            limits = MessageClass.SAFETY_LIMITS
            self._periodic(plan.limits_period, share * plan.limits_period,
                           _bind(self._start, limits, "pack", node, sizes(limits)[0]))  # fmt: skip
        targets = itertools.cycle(range(1, n + 1))
        fw = MessageClass.FIRMWARE_UPDATE
        self._periodic(plan.firmware_period, 0.0, lambda: self._start(fw, "pack", next(targets), sizes(fw)[0]))

    def analytic_load(self, seconds: float, stuffing: str) -> float:
        """``wiretime.bus_load`` over the frames sent so far (``typical``: our stuffing share)."""
        prof = self.bus.profile
        if stuffing == "typical":
            return sum(c * wire_seconds(prof, n, stuffing) for n, c in self.mix.items()) / seconds
        return bus_load(prof, [(n, c / seconds) for n, c in self.mix.items()], worst=stuffing == "worst")


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: fn(*args)


@dataclass
class PackLoadResult:
    """Bus load and queueing for one simulated pack; ``rows`` per message class and direction."""

    modules: int
    profile: BusProfile
    duration: float
    stuffing: str
    bus_load: float
    analytic_load: float
    frames: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    protocol: str = "seed"

    @property
    def summary(self) -> dict[str, Any]:
        delays = [r["queue_max_ms"] for r in self.rows]
        return {
            "modules": self.modules,
            "protocol": self.protocol,
            "bus": self.profile.name,
            "stuffing": self.stuffing,
            "duration_s": self.duration,
            "frames": self.frames,
            "frames_per_s": self.frames / self.duration,
            "bus_load": self.bus_load,
            "analytic_load": self.analytic_load,
            "worst_queue_ms": max(delays, default=0.0),
            "worst_latency_ms": max(
                (r["latency_max_ms"] for r in self.rows if not math.isnan(r["latency_max_ms"])), default=0.0
            ),
        }

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


def simulate_pack_load(
    modules: int = 31,
    profile: BusProfile | str = "classic 250k",
    *,
    duration: float = 10.0,
    plan: TrafficPlan | None = None,
    protocol: ProfileModel | str = "seed",
    stuffing: str = "worst",
    platform: Platform | None = None,
    layout: IdLayout = SEED_LAYOUT,
) -> PackLoadResult:
    """Run :class:`PackTraffic` alone for ``duration`` simulated seconds.

    Returns bus load (simulated busy time / duration, and the analytic ``wiretime`` figure for the
    same frame mix) and per message class: messages, frames, mean and max queueing delay per
    frame, mean / p99 / max message latency (first frame handed to the controller → last frame
    on the wire, plus CPU).
    """
    prof = BUSES[profile] if isinstance(profile, str) else profile
    loop = EventLoop()
    bus = CanBusModel(loop, prof, stuffing=stuffing, keep_log=True)
    traffic = PackTraffic(loop, bus, modules, plan=plan, protocol=protocol, platform=platform, layout=layout)
    loop.run(until=duration)
    measured = [r for r in bus.log if r.start < duration]
    busy = sum(min(r.end, duration) - r.start for r in measured)
    per_tag: dict[tuple[str, str], list[FrameRecord]] = defaultdict(list)
    for r in measured:
        per_tag[r.tag].append(r)
    rows = []
    for (cls_name, who), recs in sorted(per_tag.items()):
        lat = sorted(traffic.latencies.get((cls_name, who), []))
        q = [r.queued for r in recs]
        rows.append(
            {
                "message_class": cls_name,
                "sender": who,
                "tier": traffic.plan.tier(MessageClass(cls_name)).label,
                "messages": len(lat),
                "frames": len(recs),
                "queue_mean_ms": statistics.fmean(q) * 1e3,
                "queue_max_ms": max(q) * 1e3,
                "latency_mean_ms": statistics.fmean(lat) * 1e3 if lat else math.nan,
                "latency_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else math.nan,
                "latency_max_ms": lat[-1] * 1e3 if lat else math.nan,
            }
        )
    analytic = traffic.analytic_load(loop.now if loop.now > 0 else duration, stuffing)
    return PackLoadResult(modules, prof, duration, stuffing, busy / duration, analytic, len(measured), rows,
                          traffic.protocol.name)  # fmt: skip


def cpu_load(
    protocol: ProfileModel | str, platform: Platform, profile: BusProfile, modules: int,
    plan: TrafficPlan | None = None,
) -> tuple[float, float]:  # fmt: skip
    """Share of the pack's and of one module's CPU the routine traffic needs (1.0 = busy all the time).

    Per unit one AEAD seal and one open; where the protocol signs commands, a signature and a
    verification per command and per ack on top. The pack serves every module; a module its own
    traffic and its share of the firmware blocks. Above 1.0 the CPU cannot keep up.
    """
    p = protocol if isinstance(protocol, ProfileModel) else PROTOCOLS[protocol]
    plan = plan or TrafficPlan()
    a = GCM if profile.fd else CCM
    pack = module = 0.0
    rates: list[tuple[MessageClass, str, float]] = [(t.message_class, "module", 1 / t.period) for t in TELEMETRY]
    rates += [(MessageClass.HEARTBEAT, "module", 1 / plan.heartbeat_period),
              (MessageClass.HEARTBEAT, "pack", 1 / plan.keepalive_period),
              (MessageClass.CHARGE_COMMAND, "pack", 1 / plan.command_period),
              (MessageClass.SAFETY_LIMITS, "pack", 1 / plan.limits_period),
              (MessageClass.FIRMWARE_UPDATE, "pack", 1 / plan.firmware_period / modules)]  # fmt: skip
    for cls, sender, rate in rates:
        tier = plan.tier(cls)
        if tier is Tier.NONE:
            continue
        payload = plan.payload_sizes(cls)[0 if sender == "pack" else 1] + _extra(p, cls)
        seal = platform.cpu(sender).cost(a, payload)
        open_ = platform.cpu("module" if sender == "pack" else "pack").cost(a, payload)
        pack_s, module_s = (seal, open_) if sender == "pack" else (open_, seal)
        if cls in COMMAND_CLASSES:
            ack = ACK_BYTES + _extra(p, cls)
            pack_s += platform.pack.cost(a, ack)
            module_s += platform.module.cost(a, ack)
            if p.signed_commands:
                pack_s += platform.pack.cost(p.sign) + platform.pack.cost(p.verify)
                module_s += platform.module.cost(p.verify) + platform.module.cost(p.sign)
        pack += rate * pack_s * modules
        module += rate * module_s
    return pack, module
