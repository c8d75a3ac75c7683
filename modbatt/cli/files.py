"""Checks on files and folders a user names, made before any work starts.

Each raises :class:`~modbatt.errors.ConfigError` with one line that names the path and what is
wrong with it, so a command exits 2 (a user mistake) instead of failing half-way.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

__all__ = ["expect_file_kind", "writable_directory"]


def writable_directory(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """``path`` as a folder this process can create or write into; ConfigError naming ``what`` otherwise."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {os.fspath(target)!r} exists and is not a directory")
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {os.fspath(target)!r} cannot be created: {os.fspath(existing)!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == target else f" (its parent {os.fspath(existing)!r} is read-only)"
        raise ConfigError(f"{what} {os.fspath(target)!r} is not writable{where}")
    return target


#: What each kind of file starts with (its magic), for :func:`expect_file_kind`.
_MAGIC: dict[str, tuple[bytes, ...]] = {
    "SQLite database": (b"SQLite format 3\x00",),
}


def expect_file_kind(path: str | os.PathLike[str], kind: str, *, magic: tuple[bytes, ...] | None = None) -> Path:
    """Refuse a file that is missing, not a regular file, or does not start like a ``kind`` file.

    ``magic`` lists accepted leading bytes (default: the known magic of ``kind``). The file is
    only read, never opened for writing, and only its first bytes are read.
    """
    target = Path(path)
    if not target.exists():
        raise ConfigError(f"no such file: {os.fspath(target)!r}")
    if not target.is_file():
        raise ConfigError(f"{os.fspath(target)!r} is not a regular file (expected a {kind})")
    prefixes = magic if magic is not None else _MAGIC.get(kind, ())
    if prefixes:
        try:
            with target.open("rb") as fh:
                head = fh.read(max(len(p) for p in prefixes))
        except OSError as exc:
            raise ConfigError(f"cannot read {os.fspath(target)!r}: {exc.strerror or exc}") from None
        if not any(head.startswith(p) for p in prefixes):
            raise ConfigError(f"{os.fspath(target)!r} is not a {kind}")
    return target
