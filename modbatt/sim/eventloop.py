"""The discrete-event clock: simulated time and an event queue (``heapq``; ties run in scheduling order).

Nothing here reads the wall clock: ``now`` moves only when an event runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any

__all__ = ["EventLoop"]


class EventLoop:
    """A simulated clock and an event queue. ``now`` only moves when events run."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.events = 0

    def schedule(self, at: float, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` at simulated time ``at`` (never earlier than now)."""
        heapq.heappush(self._queue, (max(at, self.now), next(self._seq), fn, args))

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        self.schedule(self.now + max(delay, 0.0), fn, *args)

    def run(self, until: float | None = None, *, max_events: int = 10_000_000) -> None:
        """Run events in time order up to ``until`` (inclusive) or until none are left."""
        while self._queue and self.events < max_events:
            at, _, fn, args = self._queue[0]
            if until is not None and at > until:
                break
            heapq.heappop(self._queue)
            self.now = at
            self.events += 1
            fn(*args)
        if until is not None and self.now < until:
            self.now = until
