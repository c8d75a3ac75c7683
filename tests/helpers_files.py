"""A file system whose directories cannot be fsync-ed (some FUSE and network file systems)."""

from __future__ import annotations

import errno
import os
import stat

import pytest


def fail_directory_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``os.fsync`` of a directory raise EINVAL; files still sync."""
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "directory fsync unsupported")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
