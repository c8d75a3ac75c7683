"""A fault-injecting python-can bus: any interface, with loss, duplication, reordering, corruption,
delay, error-frame bursts and bus-off episodes at stated rates.

:class:`FaultBus` wraps an open bus (``virtual``, ``udp_multicast``, ``slcan``, SocketCAN …) and is
itself a :class:`can.BusABC`, so a ``can.Notifier``, an ISO-TP link, the simulator or the monitor use
it unchanged. What it does is given by a :class:`FaultSpec`, written as text wherever a bus is
configured (``BusConfig(faults="loss=0.1,dup=0.02,reorder=0.02,corrupt=0.01,seed=7")``, or a
``faults`` key in python-can's configuration). One seeded RNG decides every fault, so a run with a
seed is reproducible frame for frame (for one sequence of frames). ``counters`` say what it did.

Where each fault applies (docs/buses.md, "The fault bus"):

* **receive side** (``dir=rx``, the default): every fault. Each wrapped node sees its own faults,
  as independent receivers on a noisy bus would. A reordered frame is held back and delivered
  right after the next frame (or after ``hold`` seconds if none comes); a delayed frame is
  delivered ``delay_s`` later; an error-frame burst delivers ``burst`` error frames (SocketCAN's
  ``CAN_ERR_PROT``) before the frame.
* **send side** (``dir=tx``, or ``both``): loss, duplication and corruption of what this node
  sends (every receiver sees the same fault); delay, reordering and error bursts stay receive-side.
* **bus-off** (``busoff_at`` seconds after opening for ``busoff_s`` seconds, or
  :meth:`FaultBus.enter_bus_off`): the node is dark. ``send`` raises ``can.CanOperationError``, as
  python-can reports a transmit the controller refused; received frames are dropped; one error
  frame with SocketCAN's ``CAN_ERR_BUSOFF`` class is delivered when the episode starts, and
  :attr:`FaultBus.state` is ``BusState.ERROR`` until it ends. A CAN controller in bus-off
  (ISO 11898-1 fault confinement) neither transmits nor acknowledges until it has recovered.
"""

from __future__ import annotations

import collections
import copy
import heapq
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import can

from ..errors import ConfigError

__all__ = ["CAN_ERR_BUSOFF", "CAN_ERR_PROT", "FaultBus", "FaultSpec"]

#: Error-class bits of a SocketCAN error frame's ID (linux/can/error.h).
CAN_ERR_PROT = 0x00000008
CAN_ERR_BUSOFF = 0x00000040

Direction = Literal["rx", "tx", "both"]
_RATES = ("loss", "dup", "reorder", "corrupt", "delay", "errors")
_INTS = ("burst", "seed", "busoff_after")


@dataclass(frozen=True)
class FaultSpec:
    """What a :class:`FaultBus` does, as probabilities per frame and times in seconds.

    ``loss``, ``dup``, ``reorder``, ``corrupt`` (one random data bit flipped), ``delay`` and
    ``errors`` (an error-frame burst of ``burst`` frames) are probabilities in [0, 1]. ``delay_s``
    is how late a delayed frame comes, ``hold`` the longest a reordered frame waits for the next
    one. ``busoff_at``/``busoff_s`` schedule one bus-off episode (seconds after the bus opens);
    ``busoff_after`` starts it instead when this handle sends that many frames (reproducible:
    in the middle of a given transfer, whatever the machine's speed).
    ``dir`` is ``rx``, ``tx`` or ``both``; ``seed`` makes the run reproducible.
    """

    loss: float = 0.0
    dup: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    errors: float = 0.0
    delay_s: float = 0.005
    hold: float = 0.05
    burst: int = 3
    busoff_at: float | None = None
    busoff_after: int | None = None
    busoff_s: float = 0.0
    dir: Direction = "rx"
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in _RATES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"fault rate {name} must be a probability in [0, 1], got {value!r}")
        for name in ("delay_s", "hold", "busoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise ConfigError(f"{name} must be a finite number of seconds >= 0, got {value!r}")
        if self.busoff_at is not None and not (
            isinstance(self.busoff_at, (int, float)) and 0 <= self.busoff_at < math.inf
        ):
            raise ConfigError(f"busoff_at must be a finite number of seconds >= 0, got {self.busoff_at!r}")
        if self.busoff_after is not None and (
            isinstance(self.busoff_after, bool) or not isinstance(self.busoff_after, int) or self.busoff_after < 1
        ):
            raise ConfigError(f"busoff_after must be a number of frames >= 1, got {self.busoff_after!r}")
        if isinstance(self.burst, bool) or not isinstance(self.burst, int) or not 1 <= self.burst <= 64:
            raise ConfigError(f"burst must be 1..64 error frames, got {self.burst!r}")
        if self.dir not in ("rx", "tx", "both"):
            raise ConfigError(f"dir must be rx, tx or both, got {self.dir!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @property
    def frame_loss(self) -> float:
        """The fraction of frames one receiver misses: ``loss`` once, or twice over with ``dir=both``."""
        return 1.0 - (1.0 - self.loss) ** (2 if self.dir == "both" else 1)

    @classmethod
    def parse(cls, text: str | FaultSpec | None) -> FaultSpec | None:
        """``"loss=0.1,dup=0.02,seed=7"`` → a spec (``None`` or ``""`` → None); ConfigError if unusable."""
        if text is None or isinstance(text, FaultSpec):
            return text
        if not isinstance(text, str):
            raise ConfigError(f"a fault spec is text like 'loss=0.1,seed=7', not {type(text).__name__}")
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, raw = item.partition("=")
            name, raw = name.strip(), raw.strip()
            if not sep or name not in known:
                raise ConfigError(f"unknown fault setting {item!r}; known: {', '.join(known)}")
            if name in values:
                raise ConfigError(f"fault setting {name} given twice")
            try:
                values[name] = raw if name == "dir" else int(raw) if name in _INTS else float(raw)
            except ValueError:
                raise ConfigError(f"fault setting {name}={raw!r} is not a number") from None
        return cls(**values) if values else None

    def __str__(self) -> str:
        default = FaultSpec()
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in asdict(self).items() if v != getattr(default, k))  # fmt: skip


class FaultBus(can.BusABC):
    """``inner`` with the faults ``spec`` describes; closes ``inner`` on :meth:`shutdown` if it owns it.

    ``clock`` (monotonic seconds) times delays, holds and bus-off; tests pass a settable one.
    """

    def __init__(
        self,
        inner: can.BusABC,
        spec: FaultSpec | str,
        *,
        owns_inner: bool = True,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        parsed = FaultSpec.parse(spec)
        self.spec = parsed if parsed is not None else FaultSpec()
        self.inner = inner
        self._owns_inner = owns_inner
        self._clock = clock
        self._rng = random.Random(self.spec.seed)  # fault decisions, not secrets: reproducible by seed
        self._lock = threading.RLock()
        self._ready: list[tuple[float, int, can.Message]] = []  # (release time, order, frame)
        self._order = itertools.count()
        self._held: tuple[can.Message, float] | None = None  # a frame waiting to be reordered
        self._opened = clock()
        self._dark_until: float | None = None
        self._scheduled_done = self.spec.busoff_at is None
        self._sent_since_spec = 0  # frames sent under the current spec (busoff_after counts these)
        #: What the bus did: frames seen per direction and every fault applied, by name.
        self.counters: collections.Counter[str] = collections.Counter()
        self.channel_info = f"{getattr(inner, 'channel_info', type(inner).__name__)} with faults ({self.spec})"
        self._can_protocol = getattr(inner, "protocol", can.CanProtocol.CAN_20)
        super().__init__(channel=getattr(inner, "channel", None), **kwargs)

    def set_spec(self, spec: FaultSpec | str | None) -> None:
        """Change the faults from now on (``None``: a clean bus), e.g. a bus that recovers.

        A seed in the new spec reseeds the fault RNG; a scheduled bus-off applies only as
        ``busoff_at`` seconds after opening, so one already past does not recur; ``busoff_after``
        counts the frames sent from now on.
        """
        parsed = FaultSpec.parse(spec) or FaultSpec()
        with self._lock:
            self.spec = parsed
            if parsed.seed is not None:
                self._rng = random.Random(parsed.seed)
            self._scheduled_done = parsed.busoff_at is None or self._clock() >= self._opened + parsed.busoff_at
            self._sent_since_spec = 0

    # -- bus-off ----------------------------------------------------------------------------------

    def enter_bus_off(self, duration_s: float) -> None:
        """Go dark now for ``duration_s`` seconds (an episode already running is extended)."""
        with self._lock:
            now = self._clock()
            if not self._dark(now):
                self.counters["bus_off_episodes"] += 1
                self._push(now, can.Message(is_error_frame=True, arbitration_id=CAN_ERR_BUSOFF, timestamp=time.time()))
            self._dark_until = max(self._dark_until or now, now + duration_s)

    def _dark(self, now: float) -> bool:
        if not self._scheduled_done and self.spec.busoff_at is not None and now >= self._opened + self.spec.busoff_at:
            self._scheduled_done = True
            self.enter_bus_off(self.spec.busoff_s)
        return self._dark_until is not None and now < self._dark_until

    @property
    def state(self) -> can.BusState:
        with self._lock:
            return can.BusState.ERROR if self._dark(self._clock()) else self.inner.state

    # -- sending ----------------------------------------------------------------------------------

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        with self._lock:
            if self._dark(self._clock()):
                self.counters["bus_off_refused"] += 1
                raise can.CanOperationError("bus-off: the controller does not transmit until it has recovered")
            self.counters["tx_frames"] += 1
            if self.spec.busoff_after is not None and self._sent_since_spec + 1 == self.spec.busoff_after:
                self._sent_since_spec += 1
                self.enter_bus_off(self.spec.busoff_s)
                self.counters["bus_off_refused"] += 1
                raise can.CanOperationError("bus-off: the controller does not transmit until it has recovered")
            self._sent_since_spec += 1
            copies = [msg]
            if self.spec.dir in ("tx", "both"):
                copies = self._decide(msg, "tx_")
        for frame in copies:
            self.inner.send(frame, timeout)

    # -- receiving --------------------------------------------------------------------------------

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        # The caller's timeout runs on real time; releases and holds on the fault clock.
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                now = self._clock()
                self._dark(now)
                if self._held is not None and now >= self._held[1]:
                    self._push(now, self._held[0])  # nothing came to swap with: deliver it late
                    self._held = None
                if self._ready and self._ready[0][0] <= now:
                    return heapq.heappop(self._ready)[2], False
                wakes = [self._ready[0][0] - now] if self._ready else []
                if self._held is not None:
                    wakes.append(self._held[1] - now)
            if deadline is not None:
                wakes.append(deadline - time.monotonic())
            msg = self.inner.recv(max(0.0, min(wakes)) if wakes else None)
            if msg is not None:
                with self._lock:
                    self._receive(msg)
            elif deadline is not None and time.monotonic() >= deadline:
                with self._lock:
                    if not (self._ready and self._ready[0][0] <= self._clock()):
                        return None, False

    def _receive(self, msg: can.Message) -> None:
        now = self._clock()
        if self._dark(now):
            self.counters["bus_off_dropped"] += 1
            return
        self.counters["rx_frames"] += 1
        if msg.is_error_frame or self.spec.dir == "tx":
            self._push(now, msg)
            return
        if self._rng.random() < self.spec.errors:
            self.counters["error_bursts"] += 1
            for _ in range(self.spec.burst):
                self._push(now, can.Message(is_error_frame=True, arbitration_id=CAN_ERR_PROT, timestamp=msg.timestamp))
        copies = self._decide(msg, "rx_")
        if not copies:
            return
        release = now
        if self._rng.random() < self.spec.delay:
            self.counters["rx_delayed"] += 1
            release = now + self.spec.delay_s
        overtaken = self._held
        if overtaken is None and self._rng.random() < self.spec.reorder:
            self.counters["rx_reordered"] += 1
            self._held = (copies[0], now + self.spec.hold)
            copies = copies[1:]
        for frame in copies:
            self._push(release, frame)
        if overtaken is not None:  # this frame overtook the held one, which now follows it
            self._push(release, overtaken[0])
            self._held = None

    def _decide(self, msg: can.Message, side: str) -> list[can.Message]:
        """Loss, corruption and duplication of one frame: the copies to deliver (maybe none)."""
        if self._rng.random() < self.spec.loss:
            self.counters[side + "lost"] += 1
            return []
        frame = msg
        if msg.data and self._rng.random() < self.spec.corrupt:
            frame = copy.copy(msg)
            data = bytearray(msg.data)
            bit = self._rng.randrange(8 * len(data))
            data[bit // 8] ^= 1 << (bit % 8)
            frame.data = data
            self.counters[side + "corrupted"] += 1
        if self._rng.random() < self.spec.dup:
            self.counters[side + "duplicated"] += 1
            return [frame, copy.copy(frame)]
        return [frame]

    def _push(self, release: float, msg: can.Message) -> None:
        heapq.heappush(self._ready, (release, next(self._order), msg))

    # -- the rest of BusABC -----------------------------------------------------------------------

    def shutdown(self) -> None:
        super().shutdown()
        if self._owns_inner:
            self.inner.shutdown()

    def flush_tx_buffer(self) -> None:
        self.inner.flush_tx_buffer()
