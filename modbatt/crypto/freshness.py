"""Freshness values: sender counters that never repeat, receiver replay windows, resync.

Layer 1: knows nothing about CAN. Every protected message carries a freshness value (FV);
for AES-GCM/CCM the full FV is part of the nonce, so a repeated FV under one key would be a
nonce reuse (docs/can-frames.md §3). Three pieces:

* :class:`FreshnessCounter` (sender). Values come from a persisted *reservation*: before
  handing out value ``v`` the counter makes sure ``reserved_until > v`` is on stable storage,
  reserving ``window`` values per write. After a crash or restart it resumes at the persisted
  bound, skipping at most ``window`` unused values and never repeating one. One store write per
  ``window`` messages keeps flash wear low on an MCU.
* :class:`ReplayWindow` (receiver). A sliding bitmap (IPsec/DTLS style, RFC 6479): accepts each
  value once, out of order within ``size`` of the highest accepted one; older values are
  ``Reason.STALE``, repeats are ``Reason.REPLAY``. :meth:`ReplayWindow.check` never changes state;
  :meth:`ReplayWindow.accept` is called only after the MAC verified, so forged input never moves
  the window.
* :func:`reconstruct` (SecOC): rebuild the full FV from the truncated low bits on the wire.

Resync after a reset (the receiver lost its window, or the sender jumped ahead by a reservation
window so the truncated FV no longer reconstructs): the receiver sends a random *challenge*
(8 bytes, fresh per request); the sender answers with its next full FV, authenticated under the
tier's traffic key with the challenge as associated data (the CAN codec's
``protect_resync``/``open_resync``). The receiver accepts the answer only for its own outstanding
challenge, so an old answer cannot be replayed to wind the window back, then calls
:meth:`ReplayWindow.resync`. The answer consumes a counter value like any message, so its nonce
is never reused either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final, Protocol

from ..errors import ModbattError, Reason, VerificationError
from ..files import write_atomic

__all__ = [
    "COUNTER_BYTES",
    "DEFAULT_RESERVATION",
    "MAX_COUNTER",
    "RESYNC_CHALLENGE_BYTES",
    "CounterStore",
    "FileCounterStore",
    "FreshnessCounter",
    "MemoryCounterStore",
    "ReplayWindow",
    "reconstruct",
]

#: Bytes of a full freshness value in nonces and on the wire (56 bits: 2.3e9 years at 1M msg/s).
COUNTER_BYTES: Final = 7
MAX_COUNTER: Final = (1 << (8 * COUNTER_BYTES)) - 1
#: Size of the random challenge of a resync request.
RESYNC_CHALLENGE_BYTES: Final = 8
#: Values a sender reserves per durable write (one store write per this many messages).
DEFAULT_RESERVATION: Final = 1024


class CounterStore(Protocol):
    """Durable storage of one sender's reservation bound."""

    def load(self) -> int | None:
        """The last persisted ``reserved_until``, or None when nothing was ever stored."""
        ...

    def save(self, reserved_until: int) -> None:
        """Persist ``reserved_until`` durably before returning."""
        ...


class MemoryCounterStore:
    """A store in memory: for tests and simulations (a "restart" reuses the same object)."""

    def __init__(self, value: int | None = None) -> None:
        self.value = value
        self.writes = 0

    def load(self) -> int | None:
        return self.value

    def save(self, reserved_until: int) -> None:
        self.value = reserved_until
        self.writes += 1


class FileCounterStore:
    """A store in one small file, replaced atomically (write temp, fsync, rename, fsync dir).

    A crash leaves either the old or the new bound on disk, never a torn value; both are safe
    because values are handed out only below the bound that is already durable.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            # Refuse to guess: resuming below the true bound would repeat nonces.
            raise ModbattError(f"freshness counter file {self.path} is corrupt; restore it or re-pair")
        return int(text)

    def save(self, reserved_until: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # 0600 like the keys it protects; durable, or a crash could resume below the true bound.
        write_atomic(self.path, f"{reserved_until}\n".encode("ascii"), mode=0o600, durable=True)


class FreshnessCounter:
    """Sender-side monotonic counter backed by a :class:`CounterStore` reservation.

    ``next()`` returns 0, 1, 2, … in one life; after a restart (a new object on the same store)
    it continues at the persisted ``reserved_until``, so no value is ever returned twice.
    """

    __slots__ = ("_next", "_reserved", "_store", "window")

    def __init__(self, store: CounterStore, *, window: int = DEFAULT_RESERVATION) -> None:
        if window < 1:
            raise ValueError("reservation window must be at least 1")
        self._store = store
        self.window = window
        stored = store.load()
        start = 0 if stored is None else stored
        if not 0 <= start <= MAX_COUNTER + 1:
            raise ModbattError("stored freshness bound is out of range; re-pair")
        self._next = start
        # Nothing is reserved yet in this life: the first next() persists a new bound.
        self._reserved = start

    @property
    def peek(self) -> int:
        """The value the next call to :meth:`next` will return (nothing is consumed)."""
        return self._next

    @property
    def reserved_until(self) -> int:
        """Exclusive upper bound already durable in the store."""
        return self._reserved

    def next(self) -> int:
        """Consume and return the next value; raises ``VerificationError(EXHAUSTED)`` at the end."""
        value = self._next
        if value > MAX_COUNTER:
            raise VerificationError(Reason.EXHAUSTED, "freshness counter exhausted; re-key")
        if value >= self._reserved:
            bound = min(value + self.window, MAX_COUNTER + 1)
            self._store.save(bound)  # durable *before* the value leaves this object
            self._reserved = bound
        self._next = value + 1
        return value


class ReplayWindow:
    """Receiver-side sliding window over full freshness values.

    ``highest`` is the largest accepted value (-1 before the first). A value ``v`` is accepted
    once when ``v > highest - size``; the bitmap remembers which of the last ``size`` values
    were seen, so out-of-order delivery within the window works and duplicates are caught.
    """

    __slots__ = ("_bitmap", "highest", "size", "synced")

    def __init__(self, size: int = 64, *, highest: int = -1) -> None:
        if size < 1:
            raise ValueError("replay window size must be at least 1")
        self.size = size
        self.highest = highest
        self._bitmap = 1 if highest >= 0 else 0  # bit i set <=> value highest - i seen
        #: False after a receiver restart: nothing is accepted until an authenticated resync.
        self.synced = True

    @classmethod
    def unsynced(cls, size: int = 64) -> ReplayWindow:
        """A window for a receiver that lost its state (restart): it accepts nothing until
        :meth:`resync`, because starting from zero would accept every old frame again."""
        window = cls(size)
        window.synced = False
        return window

    def check(self, value: int) -> None:
        """Raise STALE or REPLAY without changing state; returns if ``value`` is acceptable."""
        if not self.synced:
            raise VerificationError(Reason.STALE, "no freshness state since restart; resync first")
        if value > self.highest:
            if value > MAX_COUNTER:
                raise VerificationError(Reason.MALFORMED, "freshness value out of range")
            return
        offset = self.highest - value
        if offset >= self.size:
            raise VerificationError(Reason.STALE, f"freshness {value} is behind the window")
        if (self._bitmap >> offset) & 1:
            raise VerificationError(Reason.REPLAY, f"freshness {value} was already accepted")

    def accept(self, value: int) -> None:
        """Check ``value`` and mark it seen. Call only after a successful MAC check."""
        self.check(value)
        self.commit(value)

    def commit(self, value: int) -> None:
        """Mark a value seen that :meth:`check` already passed (hot path: no second check)."""
        if value > self.highest:
            shift = value - self.highest
            mask = (1 << self.size) - 1
            self._bitmap = ((self._bitmap << shift) | 1) & mask if shift < self.size else 1
            self.highest = value
        else:
            self._bitmap |= 1 << (self.highest - value)

    def resync(self, value: int) -> None:
        """Restart the window at an authenticated full value (resync answer); it and all below count as seen."""
        if not 0 <= value <= MAX_COUNTER:
            raise VerificationError(Reason.MALFORMED, "freshness value out of range")
        self.highest = value
        # Everything at or below the resync point counts as seen: frames sent before the resync
        # answer must not become acceptable just because the window was rebuilt.
        self._bitmap = (1 << self.size) - 1
        self.synced = True

    def snapshot(self) -> tuple[int, int]:
        """``(highest, bitmap)``: everything needed to rebuild this window after a restart."""
        return self.highest, self._bitmap

    @classmethod
    def restore(cls, size: int, highest: int, bitmap: int) -> ReplayWindow:
        """The window a :meth:`snapshot` describes; refuses values no window could hold."""
        if not -1 <= highest <= MAX_COUNTER or not 0 <= bitmap < (1 << size) or (highest < 0) != (bitmap == 0):
            raise VerificationError(Reason.MALFORMED, "replay window state out of range")
        window = cls(size)
        window.highest, window._bitmap = highest, bitmap
        return window


def reconstruct(truncated: int, bits: int, latest: int, *, behind: int | None = None) -> int:
    """Rebuild a full freshness value from its ``bits`` low bits (AUTOSAR SecOC style).

    Returns the unique ``v`` with ``v mod 2**bits == truncated`` in
    ``[latest + 1 - behind, latest + 2**bits - behind]``. ``latest`` is the receiver's highest
    accepted value (-1 before the first) and ``behind`` how far back a candidate may lie (default
    a quarter of the range): values up to ``behind`` back go on to the replay window (accepted
    out of order, or classified REPLAY/STALE), anything else is taken as *ahead*, so up to
    ``2**bits - behind - 1`` lost messages are tolerated. With ``behind=0`` this is SecOC's rule
    (strictly newer). A sender further ahead reconstructs wrongly, fails the MAC, and needs a
    resync.
    """
    modulus = 1 << bits
    if behind is None:
        behind = modulus >> 2
    if not 0 <= truncated < modulus or not 0 <= behind < modulus:
        raise ValueError("truncated value or 'behind' outside the field")
    low = max(latest + 1 - behind, 0)
    return low + ((truncated - low) % modulus)
