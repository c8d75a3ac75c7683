"""The key store: private keys and partner access data, encrypted at rest (docs/crypto.md §7).

One file per store, sealed as :mod:`modbatt.crypto.keystore_format` describes: a clear header
bound as associated data and an AES-256-GCM body under a key-encryption key (KEK) derived from
a passphrase or a key file. The KEK is derived once, when the store is opened or created, and
kept in memory; every write draws a fresh random GCM nonce.

Every write is atomic: a temporary file in the same directory (created 0600), fsync,
``os.replace``, fsync of the directory. A failed write leaves the previous file and the
in-memory state exactly as they were. The byte-by-byte format and the threat notes are in
``docs/crypto.md``.

Nothing secret (scalars, KEK, passphrase, record contents) ever reaches ``repr``, ``str``,
log records or exception texts.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cbor2

from ..encoding import canonical_dumps
from ..errors import EncodingError, KeyStoreError, ReproducibleModeError
from ..files import write_atomic
from . import labels
from .keystore_format import (
    _FLAG_REPRODUCIBLE,
    _KDF_KEY_FILE,
    _MAX_FILE_BYTES,
    BACKUP_MAGIC,
    FORMAT_VERSION,
    HEADER_BYTES,
    STORE_MAGIC,
    KdfParams,
    _check_name,
    _kdf_from_fields,
    _new_unlocked,
    _passphrase_bytes,
    _reseal_check,
    _seal,
    _State,
    _unlock_secret,
    _Unlocked,
    _unseal,
    argon2id_available,
)
from .rng import REPRODUCIBLE_ENV, reproducible_mode_allowed
from .suite import PrivateKey

__all__ = [
    "BACKUP_MAGIC",
    "FORMAT_VERSION",
    "HEADER_BYTES",
    "STORE_MAGIC",
    "KdfParams",
    "KeyStore",
    "argon2id_available",
]

_log = logging.getLogger(__name__)


_Fingerprint = tuple[int, int, int, int]


def _fingerprint(st: os.stat_result) -> _Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _atomic_write(path: Path, data: bytes, *, exclusive: bool) -> _Fingerprint:
    """Write ``data`` to ``path`` atomically at 0600; on any error the old file is untouched.

    ``exclusive`` refuses to replace an existing file (create, backups). Returns the new
    file's identity.
    """
    return _fingerprint(write_atomic(path, data, mode=0o600, exclusive=exclusive))


def _os_error_text(exc: OSError) -> str:
    # strerror and the file name only: never the message of some wrapped exception.
    return exc.strerror or type(exc).__name__


# --------------------------------------------------------------------------- the store


class KeyStore:
    """Private keys and records (e.g. partner access data), encrypted at rest.

    Create one with :meth:`create`, :meth:`open`, :meth:`in_memory` or
    :meth:`restore_backup`. Every ``put_*``/``delete`` is written to disk atomically before
    it returns; :meth:`transaction` batches several changes into one write. Reads return
    copies: changing a returned record does not change the store.
    """

    def __init__(
        self,
        *,
        path: Path | None,
        unlocked: _Unlocked | None,
        state: _State,
        reproducible: bool,
        fingerprint: _Fingerprint | None = None,
        _token: object = None,
    ) -> None:
        if _token is not _CONSTRUCT:
            raise TypeError(
                "use KeyStore.create(), KeyStore.open(), KeyStore.in_memory() or restore_backup()"
            )
        self._path = path
        self._unlocked = unlocked
        self._state = state
        self._pending: _State | None = None
        self._reproducible = reproducible
        self._fingerprint = fingerprint
        self._lock = threading.RLock()
        self._closed = False
        # exclusive(): nesting depth in the owning thread and the held lock file (flock).
        self._exclusive_depth = 0
        self._lock_fd: int | None = None

    # ----------------------------------------------------------------- construction

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        kdf: KdfParams | None = None,
        reproducible: bool = False,
    ) -> KeyStore:
        """Create an empty store at ``path`` (which must not exist), unlocked by exactly one of
        ``passphrase`` or ``key_file``. ``kdf`` applies to passphrases only."""
        path = Path(path)
        _refuse_existing(path)
        secret, from_key_file = _unlock_secret(passphrase, key_file)
        _check_reproducible_allowed(reproducible)
        unlocked = _new_unlocked(STORE_MAGIC, labels.KEYSTORE_KEK, secret, from_key_file, kdf, reproducible)
        store = cls(
            path=path, unlocked=unlocked, state=_State(), reproducible=reproducible, _token=_CONSTRUCT
        )
        store._fingerprint = store._write_state(store._state, exclusive=True)
        _log.info("created key store %s (%s)", path, store._unlock_description())
        return store

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
    ) -> KeyStore:
        """Open an existing store. Wrong secret, damage or tampering raise :class:`KeyStoreError`."""
        # Writes replace the file by rename; resolving a symlink first makes them update its
        # target instead of silently turning the link into a separate regular file.
        path = Path(os.path.realpath(path))
        secret, from_key_file = _unlock_secret(passphrase, key_file)
        data, fingerprint = _read_file(path, "key store")
        unlocked, state = _unseal(data, path, STORE_MAGIC, labels.KEYSTORE_KEK, secret, from_key_file)
        reproducible = bool(unlocked.flags & _FLAG_REPRODUCIBLE)
        # Checked only after authentication, so a flipped flag bit reads as damage.
        if reproducible and not reproducible_mode_allowed():
            raise ReproducibleModeError(
                f"{path} is a reproducible (test/docs) key store; set {REPRODUCIBLE_ENV}=1 to open it"
            )
        kdf = _kdf_from_fields(unlocked.kdf_id, unlocked.params)
        if kdf is not None and kdf.is_weak and not reproducible_mode_allowed():
            _log.warning("key store %s uses a test-strength KDF; re-create it with KdfParams.default()", path)
        store = cls(
            path=path, unlocked=unlocked, state=state, reproducible=reproducible,
            fingerprint=fingerprint, _token=_CONSTRUCT,
        )  # fmt: skip
        _log.info("opened key store %s (%d keys, %d records)", path, len(state.keys), len(state.records))
        return store

    @classmethod
    def in_memory(cls, *, reproducible: bool = False) -> KeyStore:
        """A store that never touches the disk (simulators, notebooks). Same API and rules;
        :meth:`export_backup` still works."""
        _check_reproducible_allowed(reproducible)
        return cls(path=None, unlocked=None, state=_State(), reproducible=reproducible, _token=_CONSTRUCT)

    @classmethod
    def restore_backup(
        cls,
        backup_path: str | os.PathLike[str],
        new_path: str | os.PathLike[str],
        *,
        backup_passphrase: str | bytes,
        passphrase: str | bytes | None = None,
        key_file: str | os.PathLike[str] | None = None,
        kdf: KdfParams | None = None,
    ) -> KeyStore:
        """Create a new store at ``new_path`` (must not exist) from a backup made by
        :meth:`export_backup`, unlocked by a new ``passphrase`` or ``key_file``."""
        backup_path, new_path = Path(backup_path), Path(new_path)
        _refuse_existing(new_path)
        backup_secret = _passphrase_bytes(backup_passphrase)
        secret, from_key_file = _unlock_secret(passphrase, key_file)
        data, _ = _read_file(backup_path, "key-store backup")
        backup, state = _unseal(data, backup_path, BACKUP_MAGIC, labels.KEYSTORE_BACKUP, backup_secret, False)
        reproducible = bool(backup.flags & _FLAG_REPRODUCIBLE)
        _check_reproducible_allowed(reproducible)
        unlocked = _new_unlocked(STORE_MAGIC, labels.KEYSTORE_KEK, secret, from_key_file, kdf, reproducible)
        store = cls(
            path=new_path, unlocked=unlocked, state=state, reproducible=reproducible, _token=_CONSTRUCT
        )
        store._fingerprint = store._write_state(state, exclusive=True)
        _log.info("restored key store %s from backup %s", new_path, backup_path)
        return store

    @staticmethod
    def generate_key_file(path: str | os.PathLike[str]) -> Path:
        """Write 32 fresh random bytes to a new file (mode 0600) for ``key_file=`` use."""
        path = Path(path)
        try:
            _atomic_write(path, secrets.token_bytes(32), exclusive=True)
        except FileExistsError:
            raise KeyStoreError(f"{path} already exists; refusing to overwrite a key file") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot write key file {path}: {_os_error_text(exc)}") from None
        return path

    # ----------------------------------------------------------------- properties

    @property
    def path(self) -> Path | None:
        """The file, or None for an in-memory store."""
        return self._path

    @property
    def reproducible(self) -> bool:
        """True for a test/docs store; only such a store accepts reproducible keys."""
        return self._reproducible

    @property
    def kdf(self) -> KdfParams | None:
        """The passphrase KDF, or None for key-file and in-memory stores."""
        if self._unlocked is None:
            return None
        return _kdf_from_fields(self._unlocked.kdf_id, self._unlocked.params)

    # ----------------------------------------------------------------- reads

    def names(self) -> list[str]:
        """All names (private keys and records), sorted."""
        with self._lock:
            state = self._view()
            return sorted([*state.keys, *state.records])

    def key_names(self) -> list[str]:
        """Names of private keys, sorted."""
        with self._lock:
            return sorted(self._view().keys)

    def record_names(self) -> list[str]:
        """Names of records, sorted."""
        with self._lock:
            return sorted(self._view().records)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            state = self._view()
            return name in state.keys or name in state.records

    def __len__(self) -> int:
        with self._lock:
            state = self._view()
            return len(state.keys) + len(state.records)

    def private_key(self, name: str) -> PrivateKey:
        """The private key called ``name``; keys from a reproducible store come back marked
        reproducible, so they can never be copied into a production store."""
        with self._lock:
            state = self._view()
            scalar = state.keys.get(name)
            if scalar is None:
                if name in state.records:
                    raise KeyStoreError(f"{name!r} is a record, not a private key")
                raise KeyStoreError(f"no private key named {name!r}")
        try:
            return PrivateKey.from_scalar_bytes(scalar, reproducible=self._reproducible)
        except ValueError:
            raise KeyStoreError(f"stored private key {name!r} is not a valid P-256 scalar") from None

    def record(self, name: str) -> dict[Any, Any]:
        """A fresh copy of the record called ``name``."""
        with self._lock:
            state = self._view()
            if name not in state.records:
                if name in state.keys:
                    raise KeyStoreError(f"{name!r} is a private key, not a record")
                raise KeyStoreError(f"no record named {name!r}")
            value = state.records[name]
        return _deep_copy(value)

    # ----------------------------------------------------------------- writes

    def put_private_key(self, name: str, key: PrivateKey, *, replace: bool = False) -> None:
        """Store ``key`` as ``name``. Refuses to overwrite an existing key unless ``replace``
        (losing an identity key is unrecoverable) and refuses a reproducible key in a
        production store."""
        _check_name(name)
        if not isinstance(key, PrivateKey):
            raise KeyStoreError("put_private_key() takes a modbatt PrivateKey")
        if key.reproducible and not self._reproducible:
            raise ReproducibleModeError(
                f"refusing to store reproducible (seeded, test-only) key {name!r} in a production key store"
            )
        scalar = key.scalar_bytes()

        def change(state: _State) -> None:
            if name in state.records:
                raise KeyStoreError(f"{name!r} already names a record")
            if name in state.keys and not replace:
                raise KeyStoreError(f"a private key named {name!r} exists; pass replace=True to overwrite it")
            state.keys[name] = scalar

        self._mutate(change)

    def put_record(self, name: str, value: Mapping[Any, Any]) -> None:
        """Store a CBOR-encodable map as ``name``, replacing any record of that name.
        The store keeps its own copy; CBOR turns tuples into lists."""
        _check_name(name)
        if not isinstance(value, Mapping):
            raise KeyStoreError(f"record {name!r} must be a mapping")
        try:
            copy = cbor2.loads(canonical_dumps(dict(value)))
        except EncodingError:
            raise KeyStoreError(f"record {name!r} is not CBOR-encodable") from None

        def change(state: _State) -> None:
            if name in state.keys:
                raise KeyStoreError(f"{name!r} already names a private key")
            state.records[name] = copy

        self._mutate(change)

    def delete(self, name: str) -> None:
        """Remove the key or record called ``name``."""

        def change(state: _State) -> None:
            if name in state.keys:
                del state.keys[name]
            elif name in state.records:
                del state.records[name]
            else:
                raise KeyStoreError(f"nothing named {name!r} in the key store")

        self._mutate(change)

    def refresh(self) -> bool:
        """Re-read the file if another process replaced it since this instance last read or wrote it.

        Uses the KEK already derived (no KDF run). Returns True when the contents were reloaded.
        A file now sealed under another salt or KDF (re-created, restored) is refused: reopen it.
        Call it inside :meth:`exclusive`, so nothing changes the file between the re-read and
        the decision taken on it.
        """
        with self._lock:
            self._check_open()
            if self._path is None:
                return False
            if self._pending is not None:
                raise KeyStoreError("cannot refresh a key store inside a transaction")
            try:
                current = _fingerprint(os.stat(self._path))
            except OSError as exc:
                raise KeyStoreError(f"cannot read key store {self._path}: {_os_error_text(exc)}") from None
            if current == self._fingerprint:
                return False
            assert self._unlocked is not None
            data, fingerprint = _read_file(self._path, "key store")
            self._state = _reseal_check(data, self._path, self._unlocked)
            self._fingerprint = fingerprint
            _log.debug("key store %s re-read (changed by another process)", self._path)
            return True

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[KeyStore]:
        """Hold the store against other threads *and other processes* for the ``with`` block.

        Processes sharing one store file serialise on an advisory ``flock(2)`` of a lock file
        beside it (``.NAME.lock``); the file is re-read (:meth:`refresh`) once the lock is held,
        so a check made inside the block sees every change another holder committed. Nested
        blocks in the same thread are free. In-memory stores take the thread lock only.
        """
        with self._lock:
            self._check_open()
            outer = self._exclusive_depth == 0
            if outer and self._path is not None:
                lock_path = self._path.parent / f".{self._path.name}.lock"
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
                try:
                    fd = os.open(lock_path, flags, 0o600)
                except OSError as exc:
                    raise KeyStoreError(f"cannot open lock file {lock_path}: {_os_error_text(exc)}") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._exclusive_depth += 1
            try:
                if outer and self._pending is None:
                    self.refresh()
                yield self
            finally:
                self._exclusive_depth -= 1
                if outer and self._lock_fd is not None:
                    fd, self._lock_fd = self._lock_fd, None
                    with contextlib.suppress(OSError):
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[KeyStore]:
        """Batch changes into one atomic write at the end of the ``with`` block.

        An exception inside the block discards every change made in it (nothing is
        written). Nested transactions are savepoints: the inner block's changes are undone
        if it raises, and everything is written when the outermost block ends. Other
        threads wait until the transaction ends.
        """
        with self._lock:
            self._check_open()
            if self._pending is not None:
                savepoint = self._pending.copy()
                try:
                    yield self
                except BaseException:
                    self._pending = savepoint
                    raise
                return
            self._pending = self._state.copy()
            try:
                yield self
            except BaseException:
                self._pending = None
                raise
            pending, self._pending = self._pending, None
            if pending != self._state:
                self._commit(pending)

    def export_backup(
        self,
        path: str | os.PathLike[str],
        *,
        passphrase: str | bytes,
        kdf: KdfParams | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Write an encrypted copy of the committed contents, under its own passphrase,
        salt and label (``keystore/backup``), so losing the store's passphrase or file is
        recoverable. Keep the backup passphrase apart from the store's."""
        path = Path(path)
        secret = _passphrase_bytes(passphrase)
        with self._lock:
            self._check_open()
            if self._pending is not None:
                raise KeyStoreError("finish the transaction before exporting a backup")
            if self._path is not None and path.resolve() == self._path.resolve():
                raise KeyStoreError("a backup cannot overwrite the key store itself")
            unlocked = _new_unlocked(
                BACKUP_MAGIC, labels.KEYSTORE_BACKUP, secret, False, kdf, self._reproducible
            )
            data = _seal(unlocked, self._state)
        try:
            _atomic_write(path, data, exclusive=not overwrite)
        except FileExistsError:
            raise KeyStoreError(f"{path} already exists; pass overwrite=True to replace it") from None
        except OSError as exc:
            raise KeyStoreError(f"cannot write backup {path}: {_os_error_text(exc)}") from None
        _log.info("exported key-store backup to %s", path)
        return path

    def close(self) -> None:
        """Forget the KEK and the decrypted contents (best effort: Python cannot wipe memory)."""
        with self._lock:
            self._unlocked = None
            self._state = _State()
            self._pending = None
            self._closed = True

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self._path) if self._path is not None else "<memory>"
        if self._closed:
            return f"KeyStore({where!r}, closed)"
        return (
            f"KeyStore({where!r}, keys={len(self._state.keys)}, records={len(self._state.records)}, "
            f"unlock={self._unlock_description()}, reproducible={self._reproducible})"
        )

    __str__ = __repr__

    def __reduce__(self) -> object:
        raise TypeError("a KeyStore holds secrets and cannot be pickled; use export_backup()")

    # ----------------------------------------------------------------- internals

    def _unlock_description(self) -> str:
        if self._unlocked is None:
            return "none"
        if self._unlocked.kdf_id == _KDF_KEY_FILE:
            return "key-file"
        kdf = self.kdf
        assert kdf is not None
        return kdf.algorithm

    def _check_open(self) -> None:
        if self._closed:
            raise KeyStoreError("the key store is closed")

    def _view(self) -> _State:
        self._check_open()
        return self._pending if self._pending is not None else self._state

    def _mutate(self, change: Callable[[_State], None]) -> None:
        # ``change`` validates before it assigns, so a refused change leaves no trace.
        with self._lock:
            self._check_open()
            if self._pending is not None:
                change(self._pending)
                return
            new = self._state.copy()
            change(new)
            self._commit(new)

    def _commit(self, new: _State) -> None:
        """Persist ``new`` and only then adopt it: a failed write changes nothing."""
        if self._path is not None:
            self._fingerprint = self._write_state(new, exclusive=False)
            _log.debug(
                "key store %s written (%d keys, %d records)", self._path, len(new.keys), len(new.records)
            )
        self._state = new

    def _write_state(self, state: _State, *, exclusive: bool) -> _Fingerprint:
        assert self._path is not None and self._unlocked is not None
        path = self._path
        data = _seal(self._unlocked, state)
        if not exclusive:
            # Lost-update guard: another process (or a restore) replaced the file since we
            # read it; overwriting would silently drop its keys.
            try:
                current = _fingerprint(os.stat(path))
            except FileNotFoundError:
                raise KeyStoreError(f"{path} has disappeared; not recreating it implicitly") from None
            except OSError as exc:
                raise KeyStoreError(f"cannot write key store {path}: {_os_error_text(exc)}") from None
            if current != self._fingerprint:
                raise KeyStoreError(f"{path} was changed by someone else since it was opened; reopen it")
        try:
            return _atomic_write(path, data, exclusive=exclusive)
        except FileExistsError:
            raise KeyStoreError(f"{path} already exists; refusing to overwrite it") from None
        except OSError as exc:
            if exclusive:
                raise KeyStoreError(f"cannot create key store {path}: {_os_error_text(exc)}") from None
            raise KeyStoreError(
                f"cannot write key store {path}: {_os_error_text(exc)}; the previous file is unchanged"
            ) from None


_CONSTRUCT = object()


def _refuse_existing(path: Path) -> None:
    # Early and friendly; the exclusive link in _atomic_write is what actually guarantees it.
    if os.path.lexists(path):
        raise KeyStoreError(f"{path} already exists; refusing to overwrite it")


def _check_reproducible_allowed(reproducible: bool) -> None:
    if reproducible and not reproducible_mode_allowed():
        raise ReproducibleModeError(
            f"reproducible key stores are for tests and docs only; set {REPRODUCIBLE_ENV}=1 to create one"
        )


def _read_file(path: Path, what: str) -> tuple[bytes, _Fingerprint]:
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > _MAX_FILE_BYTES:
                raise KeyStoreError(f"{path} is too large to be a {what}")
            data = fh.read(_MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyStoreError(f"no {what} at {path}") from None
    except OSError as exc:
        raise KeyStoreError(f"cannot read {what} {path}: {_os_error_text(exc)}") from None
    if st.st_mode & 0o077:
        _log.warning("%s %s is accessible by group or others (mode %o)", what, path, stat.S_IMODE(st.st_mode))
    return data, _fingerprint(st)


def _deep_copy(value: Any) -> Any:
    # Records are CBOR values; a CBOR round trip is an exact, cheap deep copy.
    return cbor2.loads(cbor2.dumps(value, canonical=True))
