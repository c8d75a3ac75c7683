"""Time for the pack simulator: an injectable clock and the scheduler that runs timers against it.

:class:`RealClock` for live buses, :class:`AcceleratedClock` (wall time × factor) or
:class:`VirtualClock` (jumps to the next timer: as fast as the CPU allows) for tests. The
:class:`Scheduler` runs timers in order and pumps the bus endpoints in between; runs are bounded
in simulated time and by a wall-clock guard (docs/simulation.md).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ..errors import ConfigError

__all__ = ["AcceleratedClock", "Drainable", "RealClock", "Scheduler", "SimClock", "VirtualClock"]


class Drainable(Protocol):
    """A bus endpoint the scheduler pumps: deliver what arrives within ``timeout`` seconds; how many frames."""

    def drain(self, timeout: float) -> int: ...


class SimClock(Protocol):
    """Simulated time in seconds, and how it maps to the wall clock."""

    def now(self) -> float: ...

    def real_delay(self, until: float) -> float:
        """Wall seconds to wait before simulated time reaches ``until`` (0 for virtual time)."""
        ...

    def advance_to(self, t: float) -> None:
        """Move to ``t`` (virtual clocks jump; real clocks are already there)."""
        ...


class RealClock:
    """Wall time (``time.monotonic``): for live buses and separate processes."""

    def now(self) -> float:
        return time.monotonic()

    def real_delay(self, until: float) -> float:
        return max(until - time.monotonic(), 0.0)

    def advance_to(self, t: float) -> None:
        return None


class AcceleratedClock:
    """Wall time × ``factor``: 10 means one wall second is ten simulated seconds."""

    def __init__(self, factor: float, start: float = 0.0) -> None:
        if not factor > 0:
            raise ConfigError("acceleration factor must be positive")
        self.factor = factor
        self._start = start
        self._wall0 = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._wall0) * self.factor

    def real_delay(self, until: float) -> float:
        return max((until - self.now()) / self.factor, 0.0)

    def advance_to(self, t: float) -> None:
        return None


class VirtualClock:
    """Simulated time that jumps to the next timer: as fast as the CPU allows, deterministic order."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def real_delay(self, until: float) -> float:
        return 0.0

    def advance_to(self, t: float) -> None:
        self._now = max(self._now, t)


class Scheduler:
    """Timers on a :class:`SimClock`, with the buses pumped between them."""

    def __init__(self, clock: SimClock, endpoints: Iterable[Drainable] = ()) -> None:
        self.clock = clock
        self.endpoints: list[Drainable] = list(endpoints)
        self._heap: list[tuple[float, int, Callable[[], float | None]]] = []
        self._seq = 0
        self.truncated = False  # set when the wall-clock guard stopped a run
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """End the current :meth:`run` soon (thread- and signal-safe); not a truncation."""
        self._stop.set()

    def clear_stop(self) -> None:
        self._stop.clear()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def at(self, t: float, fn: Callable[[], float | None]) -> None:
        """Run ``fn`` at ``t``; if it returns a period, run it again that much later (no drift)."""
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn))

    def cancel_all(self) -> None:
        """Drop every pending timer (used to stop new traffic before draining)."""
        self._heap.clear()

    def pump(self) -> int:
        """Deliver every frame waiting on any endpoint (until a full pass finds none)."""
        total = 0
        while True:
            got = sum(ep.drain(0.0) for ep in self.endpoints)
            total += got
            if not got:
                return total

    def _wait(self, seconds: float) -> None:
        if len(self.endpoints) == 1:
            self.endpoints[0].drain(seconds)  # blocks on the bus: frames from other processes
        else:
            self._stop.wait(seconds)  # in-process nodes only receive what this thread sent
        self.pump()

    def run(self, until: float, *, max_wall: float = 60.0, timers: bool = True) -> None:
        """Run timers due before simulated time ``until``; bounded by ``max_wall`` wall seconds.

        :meth:`request_stop` ends it early (the caller decides what to drain).
        """
        wall_end = time.monotonic() + max_wall
        while True:
            if self._stop.is_set():
                self.pump()
                return
            self.pump()
            due = self._heap[0][0] if timers and self._heap else math.inf
            target = min(due, until)
            delay = self.clock.real_delay(target)
            while delay > 0:
                if time.monotonic() > wall_end:
                    self.truncated = True
                    return
                if self._stop.is_set():
                    return
                self._wait(min(delay, 0.005))
                delay = self.clock.real_delay(target)
            self.clock.advance_to(target)
            if due >= until:  # the run covers [start, until): a timer due exactly at the end is not run
                self.pump()
                return
            now = self.clock.now()
            while timers and self._heap and self._heap[0][0] <= now:
                t, _, fn = heapq.heappop(self._heap)
                period = fn()
                if period is not None:
                    self.at(t + period, fn)
                self.pump()
            if time.monotonic() > wall_end:
                self.truncated = True
                return
