"""Bus statistics for ``modbatt monitor``: frames per identifier, frame rate and bus load.

:class:`BusStatistics` counts what a monitor observes: per identifier (count, Δt, rate, the bytes
that changed; the can.viewer / cansniffer / SavvyCAN "overwrite" view) and in total, with the bus
load from :mod:`modbatt.can.wiretime` bit counts (worst-case stuffing) at the given bit rate.

A load figure is only as good as its window: a capture of a few frames spread over a few
milliseconds reports hundreds of per cent. :class:`MonitorSummary` therefore says whether the
figure is reliable: the observed span must be at least :data:`MIN_LOAD_WINDOW_S`. Timestamps that
are not finite, or lie outside :data:`TIMESTAMP_RANGE`, are counted and left out of every timing
figure instead of breaking it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Final

import can

from ..can import wiretime

__all__ = [
    "DEFAULT_LOAD_BITRATE",
    "MIN_LOAD_WINDOW_S",
    "TIMESTAMP_RANGE",
    "BusStatistics",
    "IdStats",
    "MonitorSummary",
    "usable_timestamp",
]

#: Bit rate assumed for bus load when neither the bus nor the user gives one (ModBatt CAN 1).
DEFAULT_LOAD_BITRATE: Final = 500_000
#: Shortest observed span over which a bus-load figure is called reliable.
MIN_LOAD_WINDOW_S: Final = 1.0
#: Timestamps a capture may carry: 0 (relative logs start there) up to the year 2286.
TIMESTAMP_RANGE: Final = (0.0, 1e10)


def usable_timestamp(value: Any) -> bool:
    """Whether ``value`` is a finite number of seconds inside :data:`TIMESTAMP_RANGE`."""
    try:
        ts = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return math.isfinite(ts) and TIMESTAMP_RANGE[0] <= ts <= TIMESTAMP_RANGE[1]


@dataclass
class IdStats:
    """Per-identifier statistics for the one-line-per-ID view."""

    arbitration_id: int
    is_extended_id: bool
    count: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    last_dt: float | None = None
    data: bytes = b""
    changed: tuple[int, ...] = ()
    id_fields: Any = None
    malformed: str | None = None
    name: str | None = None

    @property
    def rate(self) -> float | None:
        """Mean frames per second over this ID's lifetime (None before two frames)."""
        span = self.last_ts - self.first_ts
        return (self.count - 1) / span if self.count > 1 and span > 0 else None


@dataclass
class MonitorSummary:
    """Totals over everything observed."""

    frames: int
    duration: float
    frames_per_s: float | None
    ids: int
    malformed: int
    error_frames: int
    bitrate: int
    bitrate_assumed: bool  # True when no bit rate was given and DEFAULT_LOAD_BITRATE was used
    load_percent: float | None  # None before two frames over a time span
    peak_load_percent: float | None  # busiest whole second (bucketed by timestamp)
    load_reliable: bool = False  # the span is at least MIN_LOAD_WINDOW_S
    bad_timestamps: int = 0
    unsized: int = 0  # frames left out of the load (error frames, impossible lengths)
    #: Live bus only: input that was no frame (a foreign datagram, a garbled adapter line), dropped
    #: by the adapter or the receive loop; None for a log or an adapter that does not count it.
    input_dropped: int | None = None
    extra: dict[str, int] = field(default_factory=dict)


class BusStatistics:
    """Counts frames; no I/O. ``bitrate`` (default :data:`DEFAULT_LOAD_BITRATE`, stated in the
    summary) sizes the load; ``data_bitrate`` times the data phase of CAN FD frames with BRS."""

    def __init__(self, bitrate: int | None = None, data_bitrate: int | None = None) -> None:
        self.bitrate = bitrate or DEFAULT_LOAD_BITRATE
        self.bitrate_assumed = not bitrate
        self.data_bitrate = data_bitrate
        self.per_id: dict[tuple[int, bool], IdStats] = {}
        self.frames = 0
        self.malformed = 0
        self.error_frames = 0
        self.unsized = 0
        self.bad_timestamps = 0
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self._wire_seconds = 0.0
        self._seconds_buckets: dict[int, float] = {}

    def wire_seconds(self, msg: can.Message) -> float:
        """Seconds ``msg`` occupies the bus (worst-case stuffing); ValueError for frames the model
        cannot size (error frames, classic DLC > 8)."""
        if msg.is_error_frame:
            raise ValueError("error frames are not modelled")
        n = 0 if msg.is_remote_frame else len(msg.data)
        if msg.is_fd:
            bits = wiretime.fd_frame_bits(n, extended=msg.is_extended_id)
            # BRS with an unknown data rate: count the data phase at the nominal rate (an upper bound).
            data_rate = self.data_bitrate if msg.bitrate_switch and self.data_bitrate else self.bitrate
            return float(bits.nominal_worst / self.bitrate + bits.data_worst / data_rate)
        bits = wiretime.classic_frame_bits(n, extended=msg.is_extended_id)
        return float(bits.worst / self.bitrate)

    def observe(self, msg: can.Message, *, malformed: str | None = None, id_fields: Any = None,
                name: str | None = None) -> float | None:  # fmt: skip
        """Count ``msg``; returns its wire time (None when it could not be sized)."""
        self.frames += 1
        timed = usable_timestamp(msg.timestamp)
        ts = float(msg.timestamp) if timed else None
        if not timed:
            self.bad_timestamps += 1
        if ts is not None:
            if self.first_ts is None:
                self.first_ts = ts
            self.first_ts = min(self.first_ts, ts)
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if msg.is_error_frame:
            self.error_frames += 1
        if malformed is not None:
            self.malformed += 1
        seconds: float | None
        try:
            seconds = self.wire_seconds(msg)
        except ValueError:
            self.unsized += 1
            seconds = None
        if seconds is not None:
            self._wire_seconds += seconds
            if ts is not None:
                bucket = math.floor(ts)
                self._seconds_buckets[bucket] = self._seconds_buckets.get(bucket, 0.0) + seconds
        if not msg.is_error_frame:
            self._per_id(msg, ts, malformed, id_fields, name)
        return seconds

    def _per_id(self, msg: can.Message, ts: float | None, malformed: str | None, id_fields: Any,
                name: str | None) -> None:  # fmt: skip
        key = (msg.arbitration_id, bool(msg.is_extended_id))
        stats = self.per_id.get(key)
        data = bytes(msg.data)
        if stats is None:
            stats = self.per_id[key] = IdStats(key[0], key[1], data=data)
            if ts is not None:
                stats.first_ts = stats.last_ts = ts
        else:
            if ts is not None:
                stats.last_dt = ts - stats.last_ts
                stats.last_ts = ts
            stats.changed = tuple(
                i
                for i in range(max(len(data), len(stats.data)))
                if i >= len(data) or i >= len(stats.data) or data[i] != stats.data[i]
            )
            stats.data = data
        stats.count += 1
        stats.id_fields = id_fields
        stats.malformed = malformed
        stats.name = name

    def summary(self) -> MonitorSummary:
        duration = 0.0
        if self.first_ts is not None and self.last_ts is not None:
            duration = self.last_ts - self.first_ts
        fps = (self.frames - 1) / duration if self.frames > 1 and duration > 0 else None
        load = peak = None
        if self.frames > 1 and duration > 0:
            # Over the observed span. Above 100 % means a real bus at this rate could not have
            # carried the traffic (the virtual and UDP buses are not rate limited).
            load = 100.0 * self._wire_seconds / duration
            assert self.first_ts is not None and self.last_ts is not None
            first, last = self.first_ts, self.last_ts
            full = [s for b, s in self._seconds_buckets.items() if first <= b and b + 1 <= last]
            peak = 100.0 * max(full) if full else None
        return MonitorSummary(
            frames=self.frames,
            duration=duration,
            frames_per_s=fps,
            ids=len(self.per_id),
            malformed=self.malformed,
            error_frames=self.error_frames,
            bitrate=self.bitrate,
            bitrate_assumed=self.bitrate_assumed,
            load_percent=load,
            peak_load_percent=peak,
            load_reliable=load is not None and duration >= MIN_LOAD_WINDOW_S,
            bad_timestamps=self.bad_timestamps,
            unsized=self.unsized,
        )
