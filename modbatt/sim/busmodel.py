"""A simulated CAN bus: arbitration by identifier, wire time from :mod:`modbatt.can.wiretime`.

A frame is *pending* from the moment a node hands it to its controller. Whenever the bus goes
idle, arbitration picks the pending frame with the lowest identifier (ties: first submitted),
which then occupies the bus for its wire time: worst-case stuffing, no stuffing, or ``typical``
(random data, :data:`TYPICAL_STUFF_SHARE`). Transmission is never pre-empted. Not modelled:
error frames, retransmissions, controllers whose FIFO transmit queue causes priority inversion.
See docs/simulation.md §3.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from ..can.wiretime import CLASSIC, FD, BusProfile, frame_bits, frame_time
from .eventloop import EventLoop

__all__ = ["BUSES", "STUFFING", "TYPICAL_STUFF_SHARE", "CanBusModel", "FrameRecord", "wire_seconds"]

#: random bits gives 0.0328 stuff bits per stuffable bit (1 in 30.5), against 1 in 4 in the worst
#: case, i.e. 0.131 of the worst-case count. Fixed fields (ID, CRC) are not random, so this is a
#: typical figure, not a bound.
TYPICAL_STUFF_SHARE: Final = 0.131
STUFFING = ("worst", "typical", "none")


@dataclass(frozen=True, slots=True)
class FrameRecord:
    """One frame that crossed the simulated bus."""

    can_id: int
    nbytes: int
    submitted: float
    start: float
    end: float
    tag: Any = None

    @property
    def queued(self) -> float:
        return self.start - self.submitted

    @property
    def wire(self) -> float:
        return self.end - self.start


def wire_seconds(profile: BusProfile, nbytes: int, stuffing: str = "worst") -> float:
    """Wire time of one frame: :func:`~modbatt.can.wiretime.frame_time`, or the typical stuffing between."""
    if stuffing == "worst":
        return frame_time(profile, nbytes, worst=True)
    if stuffing == "none":
        return frame_time(profile, nbytes, worst=False)
    if stuffing != "typical":
        raise ValueError(f"stuffing is one of {STUFFING}")
    bits = frame_bits(profile, nbytes)
    data_rate = profile.data_bitrate if profile.brs and profile.data_bitrate else profile.nominal_bitrate
    nominal = bits.nominal_best + TYPICAL_STUFF_SHARE * (bits.nominal_worst - bits.nominal_best)
    data = bits.data_best + TYPICAL_STUFF_SHARE * (bits.data_worst - bits.data_best)
    return nominal / profile.nominal_bitrate + data / data_rate


class CanBusModel:
    """A CAN bus with arbitration by identifier and wire time from :mod:`modbatt.can.wiretime`."""

    def __init__(self, loop: EventLoop, profile: BusProfile, *, stuffing: str = "worst", keep_log: bool = True) -> None:
        if stuffing not in STUFFING:
            raise ValueError(f"stuffing is one of {STUFFING}")
        self.loop = loop
        self.profile = profile
        self.stuffing = stuffing
        self.keep_log = keep_log
        self._pending: list[tuple[int, int, int, float, Callable[[FrameRecord], None] | None, Any]] = []
        self._seq = itertools.count()
        self._busy_until: float | None = None
        self._times: dict[int, float] = {}
        self.busy_time = 0.0
        self.frames = 0
        self.log: list[FrameRecord] = []

    def frame_seconds(self, nbytes: int) -> float:
        t = self._times.get(nbytes)
        if t is None:
            t = self._times[nbytes] = wire_seconds(self.profile, nbytes, self.stuffing)
        return t

    @property
    def idle(self) -> bool:
        return self._busy_until is None

    def submit(
        self, can_id: int, nbytes: int, on_done: Callable[[FrameRecord], None] | None = None, tag: Any = None
    ) -> None:
        """Hand a frame to the bus now; ``on_done(record)`` runs when its last bit has passed."""
        heapq.heappush(self._pending, (can_id, next(self._seq), nbytes, self.loop.now, on_done, tag))
        if self._busy_until is None:
            # Arbitrate at the end of this instant, so frames submitted at the same time compete.
            self._busy_until = self.loop.now
            self.loop.schedule(self.loop.now, self._arbitrate)

    def _arbitrate(self) -> None:
        if not self._pending:
            self._busy_until = None
            return
        can_id, _, nbytes, submitted, on_done, tag = heapq.heappop(self._pending)
        start = self.loop.now
        end = start + self.frame_seconds(nbytes)
        self._busy_until = end
        self.busy_time += end - start
        self.frames += 1
        record = FrameRecord(can_id, nbytes, submitted, start, end, tag)
        if self.keep_log:
            self.log.append(record)
        self.loop.schedule(end, self._finish, record, on_done)

    def _finish(self, record: FrameRecord, on_done: Callable[[FrameRecord], None] | None) -> None:
        if on_done is not None:
            on_done(record)
        self._arbitrate()


def _bus(name: str, base: BusProfile, nominal: int, data: int | None = None) -> BusProfile:
    return dataclasses.replace(base, name=name, nominal_bitrate=nominal, data_bitrate=data)


#: The bus configurations of the latency table (classic 8-byte frames; FD 64-byte with BRS).
BUSES: Final = MappingProxyType(
    {
        "classic 125k": _bus("classic 125k", CLASSIC, 125_000),
        "classic 250k": _bus("classic 250k", CLASSIC, 250_000),
        "classic 500k": _bus("classic 500k", CLASSIC, 500_000),
        "classic 1M": _bus("classic 1M", CLASSIC, 1_000_000),
        "FD 500k/2M": _bus("FD 500k/2M", FD, 500_000, 2_000_000),
        "FD 1M/5M": _bus("FD 1M/5M", FD, 1_000_000, 5_000_000),
    }
)
