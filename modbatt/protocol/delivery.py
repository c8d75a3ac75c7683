"""Delivery of critical commands: acknowledged, retried with fresh protection, applied exactly once.

Sans-I/O (no sockets, sleeps or wall clock): the caller passes ``now`` in, transmits what the
machines return and persists what :class:`DeliveryReceiver` hands back. The rules per message
class are in docs/delivery.md.

Sender (:class:`DeliverySender`). Commands travel in *streams*, one per (peer, message class).
A stream has at most one command in flight (stop and wait); later commands queue behind it in
order. A command carries a 15-bit sequence number assigned when it is submitted. Each try is
returned as a :class:`Transmit` for the caller to protect afresh (a new secured unit with new
freshness, never the same bytes again: a resend of the same bytes would be a replay). Tries are
spaced by :class:`RetryPolicy` (exponential backoff, capped); after ``max_tries`` the command is
settled as given up with the classified reason :attr:`~modbatt.errors.Reason.TIMEOUT`, and the
next queued command goes out. A give-up means "not known to be applied", never "not applied".

Receiver (:class:`DeliveryReceiver`). The module applies a command when its sequence number is
newer than the last one applied on that stream (RFC 1982 serial-number arithmetic on 15 bits)
and answers every copy of the last applied command with its recorded status without applying it
again. The idempotence record (last sequence number, status, and the applied effect) is handed
back by :meth:`DeliveryReceiver.commit` to be persisted *before* the acknowledgement is sent, in
one atomic write with the effect, so an acknowledged command survives a module restart and
is never applied twice.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, Reason

__all__ = [
    "SEQ_SPACE",
    "Decision",
    "DeliveryReceiver",
    "DeliverySender",
    "Outcome",
    "RetryPolicy",
    "Settled",
    "Transmit",
    "newer",
]

#: Sequence numbers are 15 bits (bit 15 of an acknowledgement means "refused"; docs/delivery.md).
SEQ_SPACE = 1 << 15
_HALF = SEQ_SPACE // 2


def newer(seq: int, than: int) -> bool:
    """Whether ``seq`` follows ``than`` in 15-bit serial-number arithmetic (RFC 1982 §3.2)."""
    d = (seq - than) % SEQ_SPACE
    return 0 < d < _HALF


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again: ``first_s`` after the first try, times ``backoff`` each try, at most
    ``max_s``; give up after ``max_tries`` tries in all. ``supersede``: a new command replaces the
    stream's queued (never sent) ones, for commands that carry a whole target state (the newest
    is the one that matters; a module that is down does not come back to a backlog)."""

    first_s: float = 0.1
    backoff: float = 2.0
    max_s: float = 1.0
    max_tries: int = 10
    supersede: bool = False

    def __post_init__(self) -> None:
        if not (self.first_s > 0 and self.backoff >= 1 and self.max_s >= self.first_s and self.max_tries >= 1):
            raise ConfigError("retry policy: first_s > 0, backoff >= 1, max_s >= first_s, max_tries >= 1")

    def delay(self, tries: int) -> float:
        """Seconds to wait after the ``tries``-th try (1-based) before the next one."""
        return float(min(self.first_s * self.backoff ** (tries - 1), self.max_s))

    def give_up_after(self) -> float:
        """Seconds from the first try until a command is given up (the sender's worst case)."""
        return sum(self.delay(n) for n in range(1, self.max_tries + 1))


@dataclass(frozen=True, slots=True)
class Transmit:
    """One try of one command: protect ``body`` behind ``seq`` and send it on ``stream``."""

    stream: Hashable
    seq: int
    body: bytes
    attempt: int  # 1 for the first try


class Outcome(enum.Enum):
    """How a command was settled, as far as the sender knows."""

    APPLIED = "applied"  # acknowledged: the receiver applied it (exactly once)
    REFUSED = "refused"  # acknowledged: the receiver refused it (its checks failed); not applied
    GAVE_UP = "gave_up"  # no acknowledgement after max_tries: applied or not, unknown
    SUPERSEDED = "superseded"  # replaced in the queue by a newer command before it was ever sent


@dataclass(frozen=True, slots=True)
class Settled:
    stream: Hashable
    seq: int
    outcome: Outcome
    tries: int
    latency: float  # from submission to settlement
    reason: Reason | None = None  # TIMEOUT when given up


@dataclass(slots=True)
class _Pending:
    seq: int
    body: bytes
    submitted: float
    tries: int = 0
    due: float = 0.0


@dataclass
class _Stream:
    next_seq: int = 0
    queue: collections.deque[_Pending] = field(default_factory=collections.deque)


class DeliverySender:
    """Stop-and-wait sender over any number of streams (see the module docstring).

    ``next_seq`` restores each stream's next sequence number (a sender that restarts must
    continue its streams, or the receiver would take its new commands for old ones).
    ``policy_for(stream)`` gives a stream its own policy (default: ``policy`` for all).
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        next_seq: Mapping[Hashable, int] | None = None,
        policy_for: Callable[[Hashable], RetryPolicy] | None = None,
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._policy_for = policy_for or (lambda _stream: self.policy)
        self._streams: dict[Hashable, _Stream] = collections.defaultdict(_Stream)
        for stream, seq in (next_seq or {}).items():
            self._streams[stream].next_seq = seq % SEQ_SPACE
        self.retransmissions = 0
        #: Commands replaced before they were sent (``supersede`` policies); the caller may clear it.
        self.superseded: list[Settled] = []
        #: Acknowledgements that matched nothing in flight (duplicates, late copies): ignored.
        self.stray_acks = 0

    def submit(self, stream: Hashable, body: bytes, now: float) -> list[Transmit]:
        """Queue a command; returns its first try if the stream was idle. Commands it supersedes
        are in :attr:`superseded` (settled, never sent)."""
        s = self._streams[stream]
        if self._policy_for(stream).supersede:
            while len(s.queue) > 1:  # the head is in flight; the rest never left
                p = s.queue.pop()
                self.superseded.append(Settled(stream, p.seq, Outcome.SUPERSEDED, 0, now - p.submitted))
        s.queue.append(_Pending(s.next_seq, bytes(body), now))
        s.next_seq = (s.next_seq + 1) % SEQ_SPACE
        return self._start(stream, s, now) if len(s.queue) == 1 else []

    def on_ack(self, stream: Hashable, seq: int, refused: bool, now: float) -> tuple[Settled | None, list[Transmit]]:
        """An acknowledgement arrived: the settled command (None for a stray one: a duplicate or
        late copy, ignored) and the stream's next command's first try, to send after it."""
        s = self._streams.get(stream)
        if s is None or not s.queue or s.queue[0].seq != seq or s.queue[0].tries == 0:
            self.stray_acks += 1
            return None, []
        p = s.queue.popleft()
        done = Settled(stream, seq, Outcome.REFUSED if refused else Outcome.APPLIED, p.tries, now - p.submitted)
        return done, (self._start(stream, s, now) if s.queue else [])

    def tick(self, now: float) -> tuple[list[Transmit], list[Settled]]:
        """Tries due by ``now`` and commands given up (each followed by its stream's next command)."""
        sends: list[Transmit] = []
        gave_up: list[Settled] = []
        for stream, s in self._streams.items():
            while s.queue and s.queue[0].due <= now:
                p = s.queue[0]
                if p.tries >= self._policy_for(stream).max_tries:
                    s.queue.popleft()
                    gave_up.append(Settled(stream, p.seq, Outcome.GAVE_UP, p.tries, now - p.submitted, Reason.TIMEOUT))
                    if s.queue:
                        sends.extend(self._start(stream, s, now))
                    continue
                self.retransmissions += 1
                sends.extend(self._start(stream, s, now))
                break
        return sends, gave_up

    def next_due(self) -> float | None:
        """When :meth:`tick` next has something to do (None: nothing in flight)."""
        dues = [s.queue[0].due for s in self._streams.values() if s.queue]
        return min(dues) if dues else None

    def pending(self) -> int:
        """Commands submitted and not settled (in flight or queued)."""
        return sum(len(s.queue) for s in self._streams.values())

    def next_seqs(self) -> dict[Hashable, int]:
        """Each stream's next sequence number (what a restarting sender restores)."""
        return {k: s.next_seq for k, s in self._streams.items()}

    def _start(self, stream: Hashable, s: _Stream, now: float) -> list[Transmit]:
        p = s.queue[0]
        p.tries += 1
        p.due = now + self._policy_for(stream).delay(p.tries)
        return [Transmit(stream, p.seq, p.body, p.tries)]


class Decision(enum.Enum):
    """What the receiver does with one copy of a command."""

    APPLY = "apply"  # new: check, apply, commit (persist), then acknowledge
    REPEAT = "repeat"  # the last applied command again: acknowledge its recorded status, do nothing
    STALE = "stale"  # older than the last applied: drop (the sender has settled it already)


class DeliveryReceiver:
    """Idempotence by (stream, sequence number) for one pairing's commands.

    ``record`` is what :meth:`commit` returned last (restored from the module's storage), a
    mapping ``{stream name: {"seq", "ok", "effect"}}`` with JSON-able values.
    """

    def __init__(self, record: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._last: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (record or {}).items()}
        self.repeats = 0
        self.stale = 0

    def decide(self, stream: str, seq: int) -> Decision:
        last = self._last.get(stream)
        if last is None or newer(seq, int(last["seq"])):
            return Decision.APPLY
        if seq == int(last["seq"]):
            self.repeats += 1
            return Decision.REPEAT
        self.stale += 1
        return Decision.STALE

    def status(self, stream: str) -> bool:
        """Whether the last applied command on ``stream`` was accepted (for a repeat's acknowledgement)."""
        return bool(self._last[stream]["ok"])

    def effect(self, stream: str) -> Any:
        """The effect recorded with the last command applied on ``stream`` (None if none)."""
        last = self._last.get(stream)
        return None if last is None else last.get("effect")

    def commit(self, stream: str, seq: int, ok: bool, effect: Any = None) -> dict[str, dict[str, Any]]:
        """Record ``seq`` as applied with its outcome and effect; the whole record, to persist
        atomically before acknowledging."""
        self._last[stream] = {"seq": seq, "ok": bool(ok), "effect": effect}
        return self.record()

    def record(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._last.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._last)
