"""A whole pack's traffic (:mod:`modbatt.sim.schedule`) on one simulated bus: load and queueing."""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import BusProfile, bus_load
from ..model.policy import MessageClass
from ..model.tier import Tier
from .busmodel import BUSES, CanBusModel, FrameRecord, wire_seconds
from .cpu import Platform
from .eventloop import EventLoop
from .schedule import ACK_BYTES, COMMAND_CLASSES, HEARTBEAT_BYTES, TELEMETRY, TrafficPlan, frames_for_unit, uses_isotp
from .transactions import _aead, _can_id, _Process, _Request, _send_unit, _unit_bytes

__all__ = ["PackLoadResult", "simulate_pack_load"]


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

    @property
    def summary(self) -> dict[str, Any]:
        delays = [r["queue_max_ms"] for r in self.rows]
        return {
            "modules": self.modules,
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
    stuffing: str = "worst",
    platform: Platform | None = None,
    layout: IdLayout = SEED_LAYOUT,
) -> PackLoadResult:
    """Put the pack simulator's traffic (:mod:`modbatt.sim.schedule`) for ``modules`` on one bus.

    Every module sends its telemetry and heartbeat, the pack its keep-alives, commands, limits and
    firmware blocks, each module acknowledging; phases are spread evenly so periodic messages do
    not all start together. With ``platform`` the sender's seal and receiver's open time are
    added per unit (CPUs never contend: one process per message). Returns bus load (simulated
    busy time / duration, and the analytic ``wiretime`` figure for the same frame mix) and per
    message class: messages, frames, mean and max queueing delay per frame, mean / p99 / max
    message latency (first frame handed to the controller → last frame on the wire, plus CPU).
    """
    if not 1 <= modules <= 31:
        raise ValueError("modules must be 1-31")
    prof = BUSES[profile] if isinstance(profile, str) else profile
    plan = plan or TrafficPlan()
    loop = EventLoop()
    bus = CanBusModel(loop, prof, stuffing=stuffing, keep_log=True)
    latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
    mix: dict[int, int] = defaultdict(int)

    def cost(actor: str, tier: Tier, nbytes: int) -> float:
        # Only symmetric tiers occur in the plan: one AEAD seal or open per unit.
        if platform is None or tier is Tier.NONE:
            return 0.0
        return platform.cpu(actor).cost(_aead(prof), nbytes)

    def message(cls: MessageClass, sender: str, node: int, payload: int) -> Generator[_Request, Any, None]:
        tier = plan.tier(cls)
        direction = 0 if sender == "pack" else 1
        receiver = "module" if sender == "pack" else "pack"
        tx = _can_id(layout, cls, tier, node, direction)
        rx = _can_id(layout, cls, tier, node, 1 - direction)
        iso = uses_isotp(plan, cls, prof, tier)
        frames = frames_for_unit(_unit_bytes(prof, tier, payload), prof, iso)
        for n in frames:
            mix[n] += 1
        yield ("compute", cost(sender, tier, payload))
        yield from _send_unit(tx, rx, frames, (cls.value, sender))
        yield ("compute", cost(receiver, tier, payload))
        if cls in COMMAND_CLASSES and sender == "pack":
            ack_start = loop.now
            yield ("compute", cost("module", tier, ACK_BYTES))
            ack_frames = frames_for_unit(_unit_bytes(prof, tier, ACK_BYTES), prof, iso)
            for n in ack_frames:
                mix[n] += 1
            yield from _send_unit(rx, tx, ack_frames, (cls.value, "module (ack)"))
            yield ("compute", cost("pack", tier, ACK_BYTES))
            latencies[(cls.value, "module (ack)")].append(loop.now - ack_start)

    def start(cls: MessageClass, sender: str, node: int, payload: int) -> None:
        t0 = loop.now
        key = (cls.value, sender)
        _Process(loop, bus, message(cls, sender, node, payload), lambda: latencies[key].append(loop.now - t0))

    def periodic(period: float, phase: float, fn: Callable[[], None]) -> None:
        def tick() -> None:
            fn()
            loop.call_later(period, tick)

        loop.schedule(phase, tick)

    sizes = plan.payload_sizes
    for node in range(1, modules + 1):
        share = (node - 1) / modules
        for spec in TELEMETRY:
            periodic(
                spec.period,
                share * spec.period,
                _bind(start, spec.message_class, "module", node, sizes(spec.message_class)[1]),
            )
        periodic(
            plan.heartbeat_period,
            share * plan.heartbeat_period,
            _bind(start, MessageClass.HEARTBEAT, "module", node, HEARTBEAT_BYTES),
        )
        periodic(
            plan.keepalive_period,
            share * plan.keepalive_period,
            _bind(start, MessageClass.HEARTBEAT, "pack", node, HEARTBEAT_BYTES),
        )
        periodic(plan.command_period, share * plan.command_period, _alternating(start, node, sizes))
        periodic(
            plan.limits_period,
            share * plan.limits_period,
            _bind(start, MessageClass.SAFETY_LIMITS, "pack", node, sizes(MessageClass.SAFETY_LIMITS)[0]),
        )
    targets = itertools.cycle(range(1, modules + 1))
    periodic(
        plan.firmware_period,
        0.0,
        lambda: start(MessageClass.FIRMWARE_UPDATE, "pack", next(targets), sizes(MessageClass.FIRMWARE_UPDATE)[0]),
    )
    loop.run(until=duration)
    measured = [r for r in bus.log if r.start < duration]
    busy = sum(min(r.end, duration) - r.start for r in measured)
    per_tag: dict[tuple[str, str], list[FrameRecord]] = defaultdict(list)
    for r in measured:
        per_tag[r.tag].append(r)
    rows = []
    for (cls_name, who), recs in sorted(per_tag.items()):
        lat = sorted(latencies.get((cls_name, who), []))
        q = [r.queued for r in recs]
        rows.append(
            {
                "message_class": cls_name,
                "sender": who,
                "tier": plan.tier(MessageClass(cls_name)).label,
                "messages": len(lat),
                "frames": len(recs),
                "queue_mean_ms": statistics.fmean(q) * 1e3,
                "queue_max_ms": max(q) * 1e3,
                "latency_mean_ms": statistics.fmean(lat) * 1e3 if lat else math.nan,
                "latency_p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3 if lat else math.nan,
                "latency_max_ms": lat[-1] * 1e3 if lat else math.nan,
            }
        )
    # Analytic cross-check: the same frame mix through wiretime.bus_load (typical: our stuffing share).
    seconds = loop.now if loop.now > 0 else duration
    if stuffing == "typical":
        analytic = sum(c * wire_seconds(prof, n, stuffing) for n, c in mix.items()) / seconds
    else:
        analytic = bus_load(prof, [(n, c / seconds) for n, c in mix.items()], worst=stuffing == "worst")
    return PackLoadResult(modules, prof, duration, stuffing, busy / duration, analytic, len(measured), rows)


def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: fn(*args)


def _alternating(
    start: Callable[..., None], node: int, sizes: Callable[[MessageClass], tuple[int, int]]
) -> Callable[[], None]:
    flip = itertools.cycle((MessageClass.CHARGE_COMMAND, MessageClass.DISCHARGE_COMMAND))

    def go() -> None:
        cls = next(flip)
        start(cls, "pack", node, sizes(cls)[0])

    return go
