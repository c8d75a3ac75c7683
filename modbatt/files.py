"""Atomic file replacement: the one way the package writes a file that must never be half-written.

A write goes to a temporary file in the same directory (so the rename cannot cross file
systems), created with ``O_EXCL`` and already at its final mode (a secret is 0600 from the
first byte, never chmod-ed afterwards), is fsync-ed, then renamed over the target with
``os.replace`` (atomic on POSIX, rename(2)), and finally the directory is fsync-ed so the rename
itself survives a power loss. A reader sees the old file or the new one; on any error before the
rename the old file is untouched and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
from pathlib import Path

__all__ = ["fsync_directory", "write_atomic"]

_log = logging.getLogger(__name__)

# Errors that mean "this file system has no hard links", not "the target exists".
_NO_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOSYS)


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync ``directory`` so a rename or create inside it is durable; raises ``OSError``."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    *,
    mode: int = 0o644,
    exclusive: bool = False,
    durable: bool = False,
) -> os.stat_result:
    """Replace ``path`` with ``data`` atomically; returns the new file's ``fstat``.

    ``mode`` is the file's exact permission bits (not filtered by the umask): 0o600 for
    secrets, 0o644 for files meant to be shared. ``exclusive`` refuses to replace an existing
    file (``FileExistsError``) by linking the temporary file instead of renaming it. The
    directory fsync runs after the commit point: if it fails, ``durable=True`` raises (for a
    caller whose safety rests on the new content surviving a crash, such as a counter
    reservation), otherwise it is logged as a warning and the write stands.
    """
    target = Path(path)
    directory = target.parent
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if mode != 0o600:
                os.fchmod(fd, mode)
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if exclusive:
            _link_exclusive(tmp, target)
        else:
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        fsync_directory(directory)
    except OSError as exc:
        if durable:
            raise
        _log.warning(
            "%s written, but directory %s could not be synced (%s); the change may not survive a power loss",
            target.name,
            directory,
            exc.strerror or type(exc).__name__,
        )
    return st


def _link_exclusive(tmp: Path, target: Path) -> None:
    """Install ``tmp`` at ``target`` only if ``target`` does not exist (link(2) is atomic)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise
    except OSError as exc:  # no hard links here (some FUSE/network file systems)
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "file exists", str(target)) from None
        os.replace(tmp, target)
    else:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
