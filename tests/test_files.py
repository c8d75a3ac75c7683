"""The one atomic-write helper: exact modes, exclusive create, no temporary file left behind."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

import pytest
from helpers_files import fail_directory_fsync

from modbatt.files import write_atomic


def test_replaces_with_the_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    old_umask = os.umask(0o077)  # the mode is exact, not filtered by the umask
    try:
        write_atomic(target, b"new", mode=0o644)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write_atomic(target, b"secret", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_exclusive_refuses_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "disk gone")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_directory_sync_failure_warns_unless_durability_is_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    fail_directory_fsync(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="modbatt.files"):
        write_atomic(tmp_path / "f", b"data")
    assert "could not be synced" in caplog.text
    assert (tmp_path / "f").read_bytes() == b"data"  # past the commit point: the write stands
    with pytest.raises(OSError, match="directory fsync unsupported"):
        write_atomic(tmp_path / "g", b"data", durable=True)
