"""What one pack simulation run did (:class:`SimStats`): frames, units, rejects, delivery, latency.

Each node of a run keeps its own :class:`SimStats`; a run (or the parent of a multi-process run)
merges them. docs/simulation.md says what each figure means.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model.policy import MessageClass
from ..model.tier import Tier

__all__ = ["SimStats"]

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
