"""Where a paired channel keeps what must survive a restart (docs/can-frames.md §3).

Per (pairing, session, tier, direction) the sender's reservation bound — a
:class:`~modbatt.crypto.freshness.CounterStore`, so a crash between reserving and using a value
never reuses it — and per (pairing, session) whether a channel was ever opened: the first open
of a session may start its replay windows at zero (no frame under its keys was ever accepted),
every later open is a restart and starts them unsynced. The entity also records the first open
in its key store, so a freshness directory that went missing (restored from a backup, deleted)
is refused instead of silently restarting counters at zero (``EntityNode.channel``).

Two stores, and the choice is always explicit:

* :class:`FileFreshness` — files under the entity's state directory (the default for an entity
  whose key store is on disk: ``<store>.freshness/`` beside it). Counter files are replaced
  atomically (:class:`~modbatt.crypto.freshness.FileCounterStore`); an exclusive ``flock`` per
  pairing makes a second live owner of the same streams (another process, or a second node on
  the same key store) fail instead of reusing nonces.
* :class:`EphemeralFreshness` — in memory, for a simulation or a test that asks for it by name.
  It survives the channel (a simulated restart reuses the object) but not the process.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from ..can.secured import Direction
from ..crypto.freshness import DEFAULT_RESERVATION, CounterStore, FileCounterStore, MemoryCounterStore
from ..errors import ConfigError
from ..files import fsync_directory
from ..model.tier import Tier

try:  # POSIX advisory locks; elsewhere a second owner is not detected (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ChannelFreshness", "EphemeralFreshness", "FileFreshness", "Lease"]

_PAIRING_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _check_pairing_id(pairing_id: str) -> str:
    # Pairing ids come from certificates; as path components they must be plain UUIDs.
    if not _PAIRING_ID.match(pairing_id):
        raise ConfigError(f"pairing id {pairing_id!r} is not a UUID")
    return pairing_id


def _stream_name(tier: Tier, direction: Direction) -> str:
    return f"{Tier(tier).label}-{'i2r' if direction is Direction.INITIATOR_TO_RESPONDER else 'r2i'}.fv"


class Lease(Protocol):
    """Exclusive ownership of one pairing's streams while a channel is live."""

    def release(self) -> None: ...


class ChannelFreshness(Protocol):
    """The durable state of every channel of one entity."""

    #: True when the state survives the process (files), False for an ephemeral store.
    persistent: bool
    #: Values a sending stream reserves per durable write: a restart skips at most this many,
    #: and the medium sees one write per this many messages (flash wear on an MCU).
    reservation: int

    def counter_store(self, pairing_id: str, session_id: bytes, tier: Tier, direction: Direction) -> CounterStore:
        """The reservation store of one sending stream."""
        ...

    def opened(self, pairing_id: str, session_id: bytes) -> bool:
        """Whether a channel was ever opened on this session (then its windows start unsynced)."""
        ...

    def mark_opened(self, pairing_id: str, session_id: bytes) -> None:
        """Record durably that a channel opened on this session, before any frame is accepted."""
        ...

    def forget(self, pairing_id: str, *, keep: Collection[bytes] = ()) -> None:
        """Drop the state of every session of ``pairing_id`` not in ``keep`` (retired or revoked)."""
        ...

    def acquire(self, pairing_id: str) -> Lease:
        """Own ``pairing_id``'s streams; ConfigError if someone else does."""
        ...


class _MemoryLease:
    def __init__(self, held: set[str], pairing_id: str) -> None:
        self._held, self._pairing_id = held, pairing_id

    def release(self) -> None:
        self._held.discard(self._pairing_id)


class EphemeralFreshness:
    """In-memory channel state: an explicit choice for simulations and tests, never a default.

    A channel closed (or abandoned, as in a simulated crash) and opened again on the same object
    resumes past the reserved bound exactly as after a real restart; the process ending loses it.
    """

    persistent = False

    def __init__(self, *, reservation: int = DEFAULT_RESERVATION) -> None:
        if reservation < 1:
            raise ValueError("a reservation is at least one value")
        self.reservation = reservation
        self._stores: dict[tuple[str, bytes, Tier, Direction], MemoryCounterStore] = {}
        self._opened: set[tuple[str, bytes]] = set()
        self._held: set[str] = set()

    def counter_store(self, pairing_id: str, session_id: bytes, tier: Tier, direction: Direction) -> CounterStore:
        key = (pairing_id, bytes(session_id), Tier(tier), Direction(direction))
        return self._stores.setdefault(key, MemoryCounterStore())

    def opened(self, pairing_id: str, session_id: bytes) -> bool:
        return (pairing_id, bytes(session_id)) in self._opened

    def mark_opened(self, pairing_id: str, session_id: bytes) -> None:
        self._opened.add((pairing_id, bytes(session_id)))

    def forget(self, pairing_id: str, *, keep: Collection[bytes] = ()) -> None:
        keep = {bytes(k) for k in keep}
        for key in [k for k in self._stores if k[0] == pairing_id and k[1] not in keep]:
            del self._stores[key]
        self._opened = {k for k in self._opened if k[0] != pairing_id or k[1] in keep}

    def acquire(self, pairing_id: str) -> Lease:
        if pairing_id in self._held:
            raise ConfigError(f"pairing {pairing_id} already has a live channel on this store")
        self._held.add(pairing_id)
        return _MemoryLease(self._held, pairing_id)

    def __repr__(self) -> str:
        return f"EphemeralFreshness({len(self._stores)} streams)"


class _FileLease:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._fd)
                self._fd = None
                raise ConfigError(
                    f"the channel of pairing {path.parent.name} is live elsewhere (another process or node); "
                    "two owners of one freshness stream would reuse nonces"
                ) from None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __del__(self) -> None:  # an abandoned channel (simulated crash) lets go like a dead process
        self.release()


class FileFreshness:
    """Channel state in files under ``root`` (``root/<pairing>/<session hex>/<tier>-<dir>.fv``)."""

    persistent = True

    def __init__(self, root: str | os.PathLike[str], *, reservation: int = DEFAULT_RESERVATION) -> None:
        if reservation < 1:
            raise ValueError("a reservation is at least one value")
        self.root = Path(root)
        self.reservation = reservation

    def _session_dir(self, pairing_id: str, session_id: bytes) -> Path:
        return self.root / _check_pairing_id(pairing_id) / bytes(session_id).hex()

    def counter_store(self, pairing_id: str, session_id: bytes, tier: Tier, direction: Direction) -> CounterStore:
        return FileCounterStore(self._session_dir(pairing_id, session_id) / _stream_name(tier, direction))

    def opened(self, pairing_id: str, session_id: bytes) -> bool:
        return (self._session_dir(pairing_id, session_id) / "opened").exists()

    def mark_opened(self, pairing_id: str, session_id: bytes) -> None:
        marker = self._session_dir(pairing_id, session_id) / "opened"
        marker.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_directory(marker.parent)  # durable before any frame is accepted

    def forget(self, pairing_id: str, *, keep: Collection[bytes] = ()) -> None:
        base = self.root / _check_pairing_id(pairing_id)
        if not base.is_dir():
            return
        if not keep:  # revoked or voided: nothing of the pairing stays (its channel is closed)
            shutil.rmtree(base, ignore_errors=True)
            return
        keep_names = {bytes(k).hex() for k in keep}
        for child in base.iterdir():
            if child.is_dir() and child.name not in keep_names:
                shutil.rmtree(child, ignore_errors=True)

    def acquire(self, pairing_id: str) -> Lease:
        return _FileLease(self.root / _check_pairing_id(pairing_id) / ".lock")

    def __repr__(self) -> str:
        return f"FileFreshness({str(self.root)!r})"
