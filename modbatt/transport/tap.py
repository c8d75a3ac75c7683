"""A listen-only tap on a python-can bus: every frame it hears, kept in order for measurement.

The on-bus validation driver (:mod:`modbatt.transport.validation_bus`) and the attack bus
(:mod:`modbatt.attacks.onbus`) count frames and time spans *from the wire* with one of these: a
separate bus handle on the same channel that only reads. :meth:`BusTap.settle` waits until the bus
has been quiet for a moment, so a count taken after it includes the frames still in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import can

from ..errors import ConfigError

__all__ = ["BusTap", "WireSpan"]

#: Frames a tap keeps at most (a bounded recorder; a run that needs more reads in slices).
MAX_FRAMES = 500_000


@dataclass(frozen=True)
class WireSpan:
    """What the tap heard between two marks: frame count, data bytes, first to last frame."""

    frames: int
    data_bytes: int
    span_s: float
    ids: tuple[int, ...]

    @classmethod
    def of(cls, frames: Sequence[can.Message]) -> WireSpan:
        if not frames:
            return cls(0, 0, 0.0, ())
        times = [float(m.timestamp) for m in frames]
        return cls(len(frames), sum(len(m.data) for m in frames), max(times) - min(times),
                   tuple(sorted({m.arbitration_id for m in frames})))  # fmt: skip


class BusTap(can.Listener):
    """Records every frame of ``bus`` (which it owns and never sends on) through its own Notifier."""

    def __init__(self, bus: can.BusABC, *, max_frames: int = MAX_FRAMES) -> None:
        self._bus = bus
        self._frames: list[can.Message] = []
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._max = max_frames
        #: Frames not kept because the tap was full (a measurement taken then is incomplete).
        self.overflow = 0
        self._notifier = can.Notifier(bus, [self], timeout=0.02)

    def on_message_received(self, msg: can.Message) -> None:
        with self._lock:
            self._last = time.monotonic()
            if len(self._frames) >= self._max:
                self.overflow += 1
                return
            self._frames.append(msg)

    def mark(self) -> int:
        """The position of the next frame (pass it to :meth:`since`)."""
        with self._lock:
            return len(self._frames)

    def since(self, mark: int) -> list[can.Message]:
        with self._lock:
            return list(self._frames[mark:])

    @property
    def frames(self) -> list[can.Message]:
        with self._lock:
            return list(self._frames)

    def settle(self, quiet: float = 0.05, timeout: float = 2.0) -> None:
        """Return once no frame arrived for ``quiet`` seconds since this call (or after ``timeout``).

        The quiet window starts no earlier than the call: a frame still on its way to the tap
        (sent, not yet delivered by the interface) has that long to arrive.
        """
        if quiet <= 0 or timeout <= 0:
            raise ConfigError("quiet and timeout must be positive")
        start = time.monotonic()
        end = start + timeout
        while time.monotonic() < end:
            with self._lock:
                idle = time.monotonic() - max(self._last, start)
            if idle >= quiet:
                return
            time.sleep(min(quiet - idle, 0.01) + 0.001)

    def close(self) -> None:
        """Stop the Notifier and shut the tap's bus down; idempotent."""
        self._notifier.stop()
        self._bus.shutdown()
