"""The ledger file: an append-only RFC 9162 Merkle log in SQLite, signed by the auth controller.

Layout (one SQLite database, ``PRAGMA application_id`` = ``0x4D424C47`` "MBLG",
``PRAGMA user_version`` = format version)::

    meta(key TEXT PRIMARY KEY, value BLOB)            format, version, controller public key
    entries(idx INTEGER PRIMARY KEY, entry BLOB, leaf_hash BLOB)
    nodes(level, idx, hash) PRIMARY KEY(level, idx)    completed perfect subtrees, level >= 1
    tree_heads(id INTEGER PRIMARY KEY, tree_size, timestamp, root_hash, signature)

``nodes`` caches the hash of every *completed* perfect subtree: node ``(level, idx)``
covers leaves ``[idx * 2**level, (idx + 1) * 2**level)`` and is written in the same
transaction as the leaf that completes it. Every range RFC 9162's recursions ask for is a
perfect subtree or a right edge made of O(log n) perfect subtrees, so roots and proofs at
any size cost O(log n) primary-key look-ups. Appending costs one leaf hash plus, on
average, one node hash and one node row.

Crash safety: each :meth:`Ledger.append`, :meth:`Ledger.append_many` and
:meth:`Ledger.signed_tree_head` is one ``BEGIN IMMEDIATE`` … ``COMMIT`` transaction, and
the in-memory state (the right-edge "frontier") is only replaced after ``COMMIT``
returns. SQLite's atomic commit means an exception or a killed process leaves either the
whole append or none of it; WAL with ``synchronous=FULL`` additionally makes a returned
append survive power loss. Triggers refuse UPDATE and DELETE on the three log tables so
that a stray SQL statement cannot rewrite history by accident; :meth:`Ledger.verify`
catches a deliberate rewrite up to the latest signed tree head, and a pinned head
(:meth:`Ledger.pin_heads`, :mod:`.pin`) stops the signer from extending a rolled-back or
rewritten log.

A file is untrusted until its schema matched exactly (:mod:`.schema`); audits open it
read-only (``read_only=True``), and every value read is type- and size-checked before use.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from ..crypto.suite import PrivateKey, PublicKey
from ..errors import LedgerError, ModbattError, Reason, VerificationError
from . import merkle, schema
from .pin import HeadPin
from .tree_head import SignedTreeHead

__all__ = [
    "APPLICATION_ID",
    "FORMAT_VERSION",
    "MAX_ENTRY_BYTES",
    "Ledger",
    "LedgerRollbackError",
    "VerifyReport",
]

log = logging.getLogger(__name__)

#: Largest entry accepted; entries are protocol records (~100 B to a few KiB).
MAX_ENTRY_BYTES: Final = 64 * 1024
#: ``PRAGMA application_id`` of a ledger file: ASCII "MBLG".
APPLICATION_ID: Final = 0x4D424C47
FORMAT_VERSION: Final = 1
_FORMAT_NAME: Final = b"modbatt-ledger"
_MEMORY: Final = ":memory:"
# How many distinct problems verify() reports before it stops collecting; after the first
# altered entry every later root differs too, so more would be noise.
_MAX_PROBLEMS: Final = 10

# SQLite's per-value limit: the largest entry plus room for a row's other columns.
_ROW_SLACK: Final = 4096


def _push_leaf(frontier: list[tuple[int, bytes]], idx: int, leaf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """Push leaf ``idx`` onto ``frontier`` (the perfect subtrees, as ``(level, hash)``); yield the
    ``(level, index, hash)`` of every cached node it completes. Consume it fully.

    Binary-counter carry: each completed pair of equal subtrees becomes a cached node one level up.
    """
    level, pos, h = 0, idx, leaf
    while frontier and frontier[-1][0] == level:
        _, left = frontier.pop()
        h = merkle.node_hash(left, h)
        level += 1
        pos >>= 1
        yield level, pos, h
    frontier.append((level, h))


class LedgerRollbackError(VerificationError, LedgerError):
    """The log does not extend a tree head it must extend: rolled back (``Reason.STALE``: fewer
    entries than the head) or rewritten (``Reason.BAD_PROOF``: no RFC 9162 consistency proof)."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :meth:`Ledger.verify` checked, for a summary line."""

    tree_size: int
    root_hash: bytes
    tree_heads: int
    public_key: PublicKey | None


def _blob(value: object, what: str, path: str, size: int | None = None) -> bytes:
    """A value read from the file, checked to be a blob (of ``size`` bytes) before any use.

    ``bytes(v)`` on a hostile integer would allocate that many bytes, so nothing read is
    converted, only checked.
    """
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        kind = "blob" if size is None else f"{size}-byte blob"
        raise LedgerError(f"{path} is a damaged ledger: {what} is not a {kind}")
    return value


def _integer(value: object, what: str, path: str) -> int:
    if not isinstance(value, int) or not 0 <= value < 1 << 63:
        raise LedgerError(f"{path} is a damaged ledger: {what} is not an unsigned integer")
    return value


def _as_entry(entry: bytes, max_bytes: int) -> bytes:
    if not isinstance(entry, (bytes, bytearray, memoryview)):
        raise TypeError(f"ledger entries are bytes, not {type(entry).__name__}")
    data = bytes(entry)
    if len(data) > max_bytes:
        raise VerificationError(
            Reason.OVERSIZED, f"ledger entry of {len(data)} bytes exceeds the {max_bytes}-byte limit"
        )
    return data


class Ledger:
    """An append-only Merkle log stored in SQLite (``path=":memory:"`` for a throw-away one).

    ``signer`` is the auth controller's private key; without it the ledger can be
    appended to, proved from and verified, but not signed. ``public_key`` pins the
    expected controller key: opening or verifying a ledger whose stored key differs
    raises :class:`LedgerError`. ``clock`` returns seconds since the epoch and is read
    only when signing a tree head. ``durable=False`` relaxes ``synchronous`` to NORMAL
    (an append may be lost on power failure but never half-written) for simulations;
    ``create=False`` refuses to create a missing file. ``read_only=True`` is for audits of
    a file someone handed over: SQLite opens it read-only and never writes to it (nor to
    files beside it when no writer is live), and every write method raises ``LedgerError``.
    Every file's schema must match the ledger's exactly before a row is read.

    One instance is safe to share between threads; several processes may share a file
    (SQLite serialises writers and each write transaction re-reads the tree size).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        signer: PrivateKey | None = None,
        clock: Callable[[], float] = time.time,
        public_key: PublicKey | None = None,
        create: bool = True,
        durable: bool = True,
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        read_only: bool = False,
    ) -> None:
        self._path = os.fspath(path)
        self._signer = signer
        self._clock = clock
        self._pinned = public_key
        self._max_entry_bytes = max_entry_bytes
        self._read_only = read_only
        self._pin: HeadPin | None = None
        #: Rollbacks and forks refused (:class:`LedgerRollbackError`), by reason.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        self._lock = threading.RLock()
        self._size = 0
        # Hashes of the perfect subtrees that make up the current tree (largest first),
        # with their levels; None means "re-read from the database before use".
        self._frontier: list[tuple[int, bytes]] | None = None
        self._public_key: PublicKey | None = None
        in_memory = self._path == _MEMORY
        if read_only and (signer is not None or in_memory):
            raise LedgerError("a read-only ledger is an existing file, opened without a signer")
        if not in_memory:
            if Path(self._path).is_dir():
                raise LedgerError(f"{self._path} is a directory, not a ledger file")
            if (read_only or not create) and not Path(self._path).exists():
                raise LedgerError(f"no ledger at {self._path}")
        try:
            self._conn = schema.connect(
                self._path, read_only=read_only, max_value_bytes=max(max_entry_bytes, 1024) + _ROW_SLACK
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {self._path}: {exc}") from None
        try:
            self._open(create=create and not read_only, in_memory=in_memory, durable=durable)
        except BaseException:
            self._conn.close()
            raise

    # --- opening ----------------------------------------------------------------------

    def _open(self, *, create: bool, in_memory: bool, durable: bool) -> None:
        conn = self._conn
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            n_objects = conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError:
            raise LedgerError(f"{self._path} is not a modbatt ledger (not an SQLite database)") from None
        if app_id == 0 and n_objects == 0:
            if not create:
                raise LedgerError(f"{self._path} is empty, not a modbatt ledger")
        elif app_id != APPLICATION_ID:
            raise LedgerError(f"{self._path} is an SQLite database but not a modbatt ledger")
        try:
            if app_id == APPLICATION_ID:
                self._check_format()  # before the file is switched to WAL or a row is read
            if not in_memory and not self._read_only:
                # Set before any write so the schema itself goes through the WAL.
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise LedgerError(f"cannot put {self._path} in WAL mode (got {mode})")
            if not self._read_only:
                conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            if app_id == 0:
                self._initialise()
                self._check_format()
            fmt = conn.execute("SELECT value FROM meta WHERE key='format'").fetchone()
            if fmt is None or fmt[0] != _FORMAT_NAME:
                raise LedgerError(f"{self._path} is a damaged ledger: no format marker")
            self._public_key = self._read_public_key()
            self._size = self._db_size()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self._path} is a damaged ledger: {exc}") from None
        stored = self._public_key
        if self._pinned is not None and stored is not None and stored != self._pinned:
            raise LedgerError(
                f"{self._path} is signed by key {stored.key_id().hex()}, "
                f"not the pinned controller key {self._pinned.key_id().hex()}"
            )
        if self._signer is not None:
            own = self._signer.public_key
            if self._pinned is not None and own != self._pinned:
                raise LedgerError("the signer's key is not the pinned controller key")
            if stored is not None and own != stored:
                raise LedgerError(
                    f"{self._path} is signed by key {stored.key_id().hex()}; "
                    f"refusing to sign it with key {own.key_id().hex()}"
                )

    def _check_format(self) -> None:
        """Format version and the exact schema; reads only the header and ``sqlite_master``.

        A hostile schema runs its SQL when a row is read (:mod:`.schema`), so this comes first.
        """
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version != FORMAT_VERSION:
            raise LedgerError(f"{self._path} has ledger format {version}; this modbatt reads format {FORMAT_VERSION}")
        wrong = schema.differences(self._conn)
        if wrong:
            more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
            raise LedgerError(f"{self._path} is not a modbatt ledger: schema differs: {wrong[0]}{more}")

    def _initialise(self) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have initialised the file between our check and the lock.
            if conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
                schema.create(conn)
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('format', ?), ('version', ?)",
                    (_FORMAT_NAME, FORMAT_VERSION),
                )
                conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise

    def _read_public_key(self) -> PublicKey | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key='public_key'").fetchone()
        if row is None:
            return None
        try:
            return PublicKey.from_spki_der(_blob(row[0], "the stored public key", self._path))
        except VerificationError:
            raise LedgerError(f"{self._path} is a damaged ledger: stored public key is invalid") from None

    # --- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Ledger({self._path!r})"

    def __len__(self) -> int:
        return self.size

    # --- low-level reads --------------------------------------------------------------

    def _db_size(self) -> int:
        row = self._conn.execute("SELECT MAX(idx) FROM entries").fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def _nodes(self, wanted: Iterable[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """Fetch many cached subtree hashes in a few queries (one per ~250 look-ups).

        An OR of primary-key equalities lets SQLite use the index for each term (a
        row-value ``IN (VALUES ...)`` would scan); a proof then costs two or three
        statements instead of one per hash.
        """
        pairs = sorted(set(wanted))
        found: dict[tuple[int, int], bytes] = {}
        leaves = [idx for level, idx in pairs if level == 0]
        inner = [(level, idx) for level, idx in pairs if level > 0]
        chunk = 250
        for i in range(0, len(leaves), chunk):
            part = leaves[i : i + chunk]
            marks = ",".join("?" * len(part))
            for idx, h in self._conn.execute(f"SELECT idx, leaf_hash FROM entries WHERE idx IN ({marks})", part):
                found[(0, idx)] = _blob(h, f"leaf hash {idx}", self._path, merkle.HASH_BYTES)
        for i in range(0, len(inner), chunk):
            part = inner[i : i + chunk]
            where = " OR ".join(["(level=? AND idx=?)"] * len(part))
            args = [x for pair in part for x in pair]
            for level, idx, h in self._conn.execute(f"SELECT level, idx, hash FROM nodes WHERE {where}", args):
                found[(level, idx)] = _blob(h, f"node ({level}, {idx})", self._path, merkle.HASH_BYTES)
        for pair in pairs:
            if pair not in found:
                raise LedgerError(f"{self._path} is a damaged ledger: subtree {pair} is missing")
        return found

    def _prefetched(self, generate: Callable[[merkle.SubtreeHasher], list[bytes]]) -> list[bytes]:
        """Run a proof generator against the store with all its look-ups batched.

        The RFC 9162 recursions never branch on hash values, so a dry run with a
        recording hasher lists every range needed; those are fetched at once and the
        generator runs again on real hashes.
        """
        wanted: set[tuple[int, int]] = set()

        def record(start: int, end: int) -> bytes:
            wanted.update(merkle.perfect_subtrees(start, end))
            return bytes(merkle.HASH_BYTES)

        generate(record)
        hashes = self._nodes(wanted)

        def subtree(start: int, end: int) -> bytes:
            return merkle.root_from_perfect_subtrees([hashes[p] for p in merkle.perfect_subtrees(start, end)])

        return generate(subtree)

    def _subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) from cached perfect subtrees: O(log n) look-ups, one query."""
        pairs = merkle.perfect_subtrees(start, end)
        hashes = self._nodes(pairs)
        return merkle.root_from_perfect_subtrees([hashes[p] for p in pairs])

    def _current_frontier(self) -> list[tuple[int, bytes]]:
        """The right-edge frontier for the size on disk, re-read if another writer moved it."""
        size = self._db_size()
        if self._frontier is None or size != self._size:
            pairs = merkle.perfect_subtrees(0, size)
            hashes = self._nodes(pairs)
            self._frontier = [(level, hashes[(level, idx)]) for level, idx in pairs]
            self._size = size
        return self._frontier

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        """One write transaction; any failure rolls back and drops cached state."""
        if self._read_only:
            raise LedgerError(f"{self._path} is open read-only")
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot write to ledger {self._path}: {exc}") from None
        try:
            yield
            conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._frontier = None  # whatever we computed may not be on disk
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"cannot write to ledger {self._path}: {exc}") from None
            raise

    def _resolve_size(self, tree_size: int | None) -> tuple[int, int]:
        """(requested tree size, current size); the request must not exceed the log."""
        size = self._db_size()
        if tree_size is None:
            return size, size
        if not isinstance(tree_size, int) or isinstance(tree_size, bool) or not 0 <= tree_size <= size:
            raise LedgerError(f"tree size {tree_size} is outside the log (0..{size})")
        return tree_size, size

    # --- appending --------------------------------------------------------------------

    def _insert_entries(self, rows: list[tuple[int, bytes, bytes]]) -> None:
        self._conn.executemany("INSERT INTO entries(idx, entry, leaf_hash) VALUES (?, ?, ?)", rows)

    def _insert_nodes(self, rows: list[tuple[int, int, bytes]]) -> None:
        self._conn.executemany("INSERT INTO nodes(level, idx, hash) VALUES (?, ?, ?)", rows)

    def append(self, entry: bytes) -> int:
        """Append one entry durably (one transaction); returns its index."""
        return self.append_many([entry]).start

    def append_many(self, entries: Iterable[bytes]) -> range:
        """Append entries in one transaction: all of them or, on any failure, none.

        Every entry is checked (bytes, at most ``max_entry_bytes``) before the transaction
        starts, so bad input never touches the file. Returns the range of new indices.
        """
        data = [_as_entry(e, self._max_entry_bytes) for e in entries]
        with self._lock:
            if not data:
                size = self._db_size()
                return range(size, size)
            with self._write():
                self._check_pin()
                frontier = list(self._current_frontier())
                start = self._size
                entry_rows: list[tuple[int, bytes, bytes]] = []
                node_rows: list[tuple[int, int, bytes]] = []
                idx = start
                for e in data:
                    h = merkle.leaf_hash(e)
                    entry_rows.append((idx, e, h))
                    node_rows.extend(_push_leaf(frontier, idx, h))
                    idx += 1
                self._insert_entries(entry_rows)
                self._insert_nodes(node_rows)
            # Only now is the new state known to be on disk.
            self._frontier = frontier
            self._size = idx
            return range(start, idx)

    # --- reading ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A read: SQLite's errors (a value over the size limit, a damaged page) as LedgerError."""
        try:
            yield
        except sqlite3.DataError:
            raise LedgerError(
                f"{self._path} is a damaged ledger: a stored value exceeds {self._max_entry_bytes} bytes"
            ) from None
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot read ledger {self._path}: {exc}") from None

    @property
    def path(self) -> str:
        """The file the ledger lives in (``":memory:"`` for an in-memory one)."""
        return self._path

    @property
    def size(self) -> int:
        """Number of entries in the log (as on disk now)."""
        with self._lock:
            try:
                return self._db_size()
            except sqlite3.Error as exc:
                raise LedgerError(f"cannot read ledger {self._path}: {exc}") from None

    @property
    def public_key(self) -> PublicKey | None:
        """The controller key recorded at first signing (or None for an unsigned log)."""
        return self._public_key

    def entry(self, index: int) -> bytes:
        """The entry at ``index`` (raises LedgerError when out of range)."""
        with self._lock, self._reading():
            row = self._conn.execute("SELECT entry FROM entries WHERE idx=?", (index,)).fetchone()
        if row is None:
            raise LedgerError(f"no entry {index} in a log of {self.size}")
        return _blob(row[0], f"entry {index}", self._path)

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Entries ``start`` to ``stop`` (exclusive) in order, streamed."""
        with self._lock:
            stop = self._db_size() if stop is None else stop
        # Page through by primary key so neither memory nor the lock is held for the
        # whole log; entries are immutable, so pages are consistent with each other.
        page = 4096
        for lo in range(start, stop, page):
            with self._lock, self._reading():
                rows = self._conn.execute(
                    "SELECT idx, entry FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
                    (lo, min(lo + page, stop)),
                ).fetchall()
            for idx, e in rows:
                yield _blob(e, f"entry {idx}", self._path)

    def root_hash(self, tree_size: int | None = None) -> bytes:
        """MTH of the first ``tree_size`` entries (all of them by default)."""
        with self._lock:
            size, _ = self._resolve_size(tree_size)
            return merkle.EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """RFC 9162 audit path for entry ``index`` in the tree of ``tree_size`` entries."""
        with self._lock:
            size, _ = self._resolve_size(tree_size)
            if not isinstance(index, int) or not 0 <= index < size:
                raise LedgerError(f"entry {index} is not in a tree of size {size}")
            return self._prefetched(lambda sub: merkle.inclusion_proof_from(index, size, sub))

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from ``old_size`` entries to ``new_size`` (default: all)."""
        with self._lock:
            new, _ = self._resolve_size(new_size)
            if not isinstance(old_size, int) or not 0 <= old_size <= new:
                raise LedgerError(f"old size {old_size} is outside 0..{new}")
            return self._prefetched(lambda sub: merkle.consistency_proof_from(old_size, new, sub))

    # --- signing ----------------------------------------------------------------------

    def _row_to_sth(self, row: tuple[Any, ...]) -> SignedTreeHead:
        key = self._public_key
        if key is None:
            raise LedgerError(f"{self._path} is a damaged ledger: tree heads but no public key")
        tree_size, timestamp, root, sig = row
        try:
            return SignedTreeHead(
                _integer(tree_size, "a tree size", self._path),
                _blob(root, "a tree head root", self._path),
                _integer(timestamp, "a tree head timestamp", self._path),
                _blob(sig, "a tree head signature", self._path),
                key,
            )
        except VerificationError as exc:
            raise LedgerError(f"{self._path} is a damaged ledger: stored tree head: {exc}") from None

    def signed_tree_head(self) -> SignedTreeHead:
        """Sign the current head with the signer and record it; returns the new STH.

        Timestamps never go backwards: if the clock has, the previous head's timestamp is
        reused so that stored heads stay ordered.
        """
        if self._signer is None:
            raise LedgerError("this ledger was opened without a signer; cannot sign a tree head")
        signer = self._signer
        with self._lock, self._write():
            stored = self._read_public_key()
            if stored is not None and stored != signer.public_key:
                raise LedgerError("the ledger is signed by another key; refusing to sign")
            self._check_pin()
            size = self._db_size()
            root = merkle.EMPTY_ROOT if size == 0 else self._subtree(0, size)
            last = self._conn.execute("SELECT MAX(timestamp) FROM tree_heads").fetchone()[0]
            now_ms = int(self._clock() * 1000)
            timestamp = max(now_ms, _integer(last, "a tree head timestamp", self._path)) if last is not None else now_ms
            try:
                sth = SignedTreeHead.sign(signer, tree_size=size, root_hash=root, timestamp=timestamp)
            except VerificationError as exc:
                raise LedgerError(f"cannot sign tree head: {exc}") from None
            if stored is None:
                self._conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('public_key', ?)",
                    (signer.public_key.to_spki_der(),),
                )
            self._conn.execute(
                "INSERT INTO tree_heads(tree_size, timestamp, root_hash, signature) VALUES (?, ?, ?, ?)",
                (sth.tree_size, sth.timestamp, sth.root_hash, sth.signature),
            )
            # Pinned only after COMMIT: a pin ahead of the file would refuse a sound log forever;
            # a pin that lags (a crash here) is merely a weaker bound until the next head.
            pin = self._pin
        self._public_key = signer.public_key
        if pin is not None:
            try:
                pin.store(sth)
            except ModbattError as exc:
                log.warning("tree head %d signed but not pinned (%s); the next head pins it", sth.tree_size, exc)
        return sth

    def latest_tree_head(self) -> SignedTreeHead | None:
        """The most recently signed tree head, or None if none was signed yet."""
        with self._lock, self._reading():
            row = self._conn.execute(
                "SELECT tree_size, timestamp, root_hash, signature FROM tree_heads ORDER BY id DESC LIMIT 1"
            ).fetchone()
            return None if row is None else self._row_to_sth(row)

    def tree_head_at(self, tree_size: int) -> SignedTreeHead | None:
        """The latest stored tree head of exactly ``tree_size`` entries, if any."""
        with self._lock, self._reading():
            row = self._conn.execute(
                "SELECT tree_size, timestamp, root_hash, signature FROM tree_heads "
                "WHERE tree_size=? ORDER BY id DESC LIMIT 1",
                (tree_size,),
            ).fetchone()
            return None if row is None else self._row_to_sth(row)

    # --- anti-rollback ----------------------------------------------------------------

    def pin_heads(self, pin: HeadPin) -> None:
        """Keep each head this ledger signs in ``pin``; append and sign only while the log extends it.

        From now on :meth:`append`, :meth:`append_many` and :meth:`signed_tree_head` first check,
        inside their write transaction, that the log extends the pinned head (RFC 9162
        consistency), and raise :class:`LedgerRollbackError` with nothing written otherwise.
        The auth controller pins into its key store (:class:`~modbatt.ledger.pin.KeyStoreHeadPin`).
        """
        if self._read_only:
            raise LedgerError(f"{self._path} is open read-only; there is nothing to pin")
        with self._lock:
            self._pin = pin

    def check_pinned_head(self) -> None:
        """Raise :class:`LedgerRollbackError` unless the log extends the pinned head (if any)."""
        with self._lock, self._reading():
            self._check_pin()

    def check_extends(self, tree_size: int, root_hash: bytes, *, head: str = "the tree head") -> None:
        """Raise :class:`LedgerRollbackError` unless this log extends a head of ``tree_size``/``root_hash``.

        ``Reason.STALE`` when the log holds fewer entries (rolled back), ``Reason.BAD_PROOF``
        when no RFC 9162 consistency proof leads from that head to the current root (rewritten:
        a fork). Proofs come from the node cache, which :meth:`verify` checks against the
        entries: audit an untrusted file with :meth:`verify` first. ``head`` names it in errors.
        """
        with self._lock, self._reading():
            self._check_extends(tree_size, root_hash, head)

    def _check_pin(self) -> None:
        pinned = self._pin.load() if self._pin is not None else None
        if pinned is None:
            return
        if self._signer is not None and pinned.public_key != self._signer.public_key:
            raise LedgerError("the pinned tree head was signed by another key than this ledger's signer")
        self._check_extends(pinned.tree_size, pinned.root_hash, "the signer's pinned tree head")

    def _check_extends(self, tree_size: int, root_hash: bytes, head: str) -> None:
        size = self._db_size()
        where = f"{head} (size {tree_size}, root {root_hash.hex()[:16]}…)"
        if size < tree_size:
            self.rejections[Reason.STALE] += 1
            raise LedgerRollbackError(
                Reason.STALE, f"{self._path} holds {size} entries, fewer than {where}: the log was rolled back"
            )
        try:
            proof = self._prefetched(lambda sub: merkle.consistency_proof_from(tree_size, size, sub))
            root = merkle.EMPTY_ROOT if size == 0 else self._subtree(0, size)
            merkle.verify_consistency(tree_size, size, root_hash, root, proof)
        except (VerificationError, LedgerError) as exc:
            self.rejections[Reason.BAD_PROOF] += 1
            raise LedgerRollbackError(
                Reason.BAD_PROOF, f"{self._path} does not extend {where}: history was rewritten (a fork): {exc}"
            ) from None

    # --- auditing ---------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute the whole log from its raw entries and check everything stored.

        Checks SQLite's own page integrity, that indices are contiguous, every entry's
        size and cached leaf hash, every cached node, and every stored tree head: its
        signature (under the stored key, which must equal a pinned key), that it does not
        claim more entries than the log holds, and that its root is the recomputed root at
        its size. Streams the entries once: O(n) time, O(log n) memory. Raises
        :class:`LedgerError` naming what is wrong (its ``problems`` attribute lists up to
        ten findings).
        """
        with self._lock:
            try:
                return self._verify()
            except sqlite3.DatabaseError as exc:
                raise LedgerError(f"ledger {self._path} is damaged: {exc}") from None

    def _verify(self) -> VerifyReport:
        conn = self._conn
        problems: list[str] = []

        def problem(text: str) -> None:
            if len(problems) < _MAX_PROBLEMS:
                problems.append(text)

        # Page-level damage first: the checks below assume SQLite can read its own b-trees.
        check = conn.execute("PRAGMA quick_check(3)").fetchall()
        if [tuple(r) for r in check] != [("ok",)]:
            lines = [line for (row,) in check for line in str(row).splitlines() if line.strip()]
            first = next((x for x in lines if not x.startswith("***")), lines[0] if lines else "?")
            raise LedgerError(f"ledger {self._path} is damaged: SQLite integrity check: {first}")
        node_cursors: dict[int, sqlite3.Cursor] = {}  # one ordered cursor per tree level
        entry_cursor: sqlite3.Cursor | None = None
        conn.execute("BEGIN")  # one read snapshot, even if another process appends meanwhile
        try:
            key = self._read_public_key()
            if self._pinned is not None and key is None:
                problem("a controller key is pinned but the log has never been signed")
            elif self._pinned is not None and key != self._pinned:
                problem("the stored controller key is not the pinned key")
            heads = conn.execute(
                "SELECT id, tree_size, timestamp, root_hash, signature FROM tree_heads ORDER BY id"
            ).fetchall()
            if heads and key is None:
                problem("tree heads are stored but no controller public key")
            expected_roots: dict[int, list[tuple[int, bytes]]] = {}
            prev_size = prev_ts = -1
            for head_id, size, ts, root, sig in heads:
                where = f"tree head #{head_id} (size {size!r})"
                try:
                    size = _integer(size, "its size", self._path)
                    ts = _integer(ts, "its timestamp", self._path)
                except LedgerError:
                    problem(f"{where} has a size or timestamp that is not an unsigned integer")
                    continue
                if size < prev_size or ts < prev_ts:
                    problem(f"{where} is older or smaller than the head before it")
                prev_size, prev_ts = max(prev_size, size), max(prev_ts, ts)
                if key is None:
                    continue
                try:
                    sth = SignedTreeHead(size, root, ts, sig, key)
                    sth.verify(self._pinned)
                except VerificationError as exc:
                    problem(f"{where}: {exc}")
                    continue
                expected_roots.setdefault(size, []).append((head_id, sth.root_hash))

            # Stream entries, rebuilding the frontier and matching each completed node.
            frontier: list[tuple[int, bytes]] = []
            checked_nodes = 0
            n = 0
            if 0 in expected_roots:
                for head_id, root in expected_roots[0]:
                    if root != merkle.EMPTY_ROOT:
                        problem(f"tree head #{head_id} of the empty log has a non-empty root")
            # An entry over the limit is measured, never fetched (its length is in the row header).
            entry_cursor = conn.execute(
                "SELECT idx, CASE WHEN length(entry) <= ? THEN entry END, length(entry), typeof(entry), leaf_hash "
                "FROM entries ORDER BY idx",
                (self._max_entry_bytes,),
            )
            for idx, entry, length, kind, stored_leaf in entry_cursor:
                if idx != n:
                    problem(f"entry {n} is missing (next stored index is {idx})")
                    break
                if kind != "blob" or entry is None:
                    what = f"{length} bytes, over the limit" if kind == "blob" else f"a {kind}, not a blob"
                    problem(f"entry {idx} is {what}")
                    entry = b""
                h = merkle.leaf_hash(entry)
                if stored_leaf != h:
                    problem(f"entry {idx} does not match its stored leaf hash (entry altered?)")
                for level, pos, node in _push_leaf(frontier, idx, h):
                    cur = node_cursors.get(level)
                    if cur is None:
                        cur = conn.execute("SELECT idx, hash FROM nodes WHERE level=? ORDER BY idx", (level,))
                        node_cursors[level] = cur
                    row = cur.fetchone()
                    if row is None or row[0] != pos:
                        problem(f"cached node ({level}, {pos}) is missing")
                        # Re-sync the cursor on the next check instead of cascading.
                        cur.close()
                        node_cursors[level] = conn.execute(
                            "SELECT idx, hash FROM nodes WHERE level=? AND idx>? ORDER BY idx", (level, pos)
                        )
                    elif row[1] != node:
                        problem(f"cached node ({level}, {pos}) does not match the entries below it")
                    checked_nodes += 1
                n += 1
                for head_id, root in expected_roots.get(n, ()):
                    if merkle.root_from_perfect_subtrees([x for _, x in frontier]) != root:
                        problem(f"tree head #{head_id} (size {n}) signs a root the entries do not produce")
            for size in sorted(expected_roots):
                if size > n:
                    ids = ", ".join(f"#{i}" for i, _ in expected_roots[size])
                    problem(f"tree head {ids} covers {size} entries but the log has only {n} (truncated?)")
            total_nodes = conn.execute("SELECT COUNT(*) FROM nodes").fetchone()[0]
            if total_nodes != checked_nodes:
                problem(f"nodes table holds {total_nodes} rows, expected {checked_nodes}")
            root = merkle.root_from_perfect_subtrees([x for _, x in frontier])
        finally:
            # Finish every statement before ending the read transaction.
            for cur in [*node_cursors.values(), entry_cursor]:
                if cur is not None:
                    cur.close()
            conn.execute("COMMIT")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            err = LedgerError(f"ledger {self._path} does not verify: {problems[0]}{more}")
            err.problems = problems  # type: ignore[attr-defined]
            raise err
        self._frontier = None  # re-read lazily; cheap, and never trusts stale state
        return VerifyReport(tree_size=n, root_hash=root, tree_heads=len(heads), public_key=key)

    def export(self) -> dict[str, Any]:
        """JSON-ready ``{"entries": [...base64...], "sth": {...}}`` for an outside auditor.

        The entries are exactly those covered by the exported tree head (each as hashed
        into its leaf), so ``MTH(entries) == sth.root_hash`` with any RFC 9162
        implementation. With a signer, a fresh head is signed first when the latest one
        does not cover the whole log; without one, the latest stored head is used and
        later, still unsigned entries are left out.
        """
        with self._lock:
            sth = self.latest_tree_head()
            if self._signer is not None and (sth is None or sth.tree_size != self._db_size()):
                sth = self.signed_tree_head()
            if sth is None:
                raise LedgerError("nothing to export: no tree head has been signed yet")
            entries = [base64.b64encode(e).decode("ascii") for e in self.entries(0, sth.tree_size)]
        if len(entries) != sth.tree_size:
            raise LedgerError(f"the latest tree head covers {sth.tree_size} entries; the log has {len(entries)}")
        return {"entries": entries, "sth": sth.to_dict()}
