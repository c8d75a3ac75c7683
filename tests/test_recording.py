"""Recording round trips through python-can's candump, ASC and BLF formats."""

from __future__ import annotations

import uuid
from pathlib import Path

import can
import pytest

from modbatt.errors import ConfigError
from modbatt.transport.recording import LOG_FORMATS, OPTIONAL_FORMATS, open_writer, read_log, write_log

T0 = 1_700_000_000.123456


def _frames() -> list[can.Message]:
    return [
        can.Message(timestamp=T0, arbitration_id=0x18FF50E5, data=b"\x01\x02\x03", is_rx=True),
        can.Message(timestamp=T0 + 0.001, arbitration_id=0x0A0001, data=bytes(range(8)), is_rx=False),
        can.Message(timestamp=T0 + 0.0025, arbitration_id=0x411, is_extended_id=False, data=b"\xff" * 8),
        can.Message(
            timestamp=T0 + 0.01, arbitration_id=0x1234567, is_fd=True, bitrate_switch=True, data=bytes(range(12))
        ),
        can.Message(timestamp=T0 + 0.02, arbitration_id=0x123, is_extended_id=False, is_fd=True, data=bytes(range(64))),
        can.Message(timestamp=T0 + 0.03, arbitration_id=0x7FF, is_extended_id=False, is_remote_frame=True, dlc=4),
    ]


# What each format keeps besides ID, width, data and DLC (see modbatt.transport.recording).
_KEEPS = {
    ".log": {"fd", "rx", "remote"},
    ".asc": {"fd", "rx", "remote"},
    ".blf": {"fd", "rx", "remote"},
    ".mf4": {"fd", "rx", "remote"},
    ".trc": {"rx"},  # no FD and no remote frames: not written
    ".csv": {"remote"},
    ".db": {"remote"},
}


@pytest.mark.parametrize("suffix", sorted(LOG_FORMATS))
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    if suffix in OPTIONAL_FORMATS:
        pytest.importorskip(OPTIONAL_FORMATS[suffix][0], reason=f"python-can's {suffix} support needs it")
    keeps = _KEEPS[suffix]
    path = tmp_path / f"capture{suffix}"
    sent = _frames()
    if "fd" not in keeps and "remote" not in keeps:
        expected = [m for m in sent if not m.is_fd and not m.is_remote_frame]
    else:
        expected = sent
    assert write_log(path, sent) == len(expected)
    back = list(read_log(path))
    assert len(back) == len(expected)
    for a, b in zip(expected, back, strict=True):
        assert (b.arbitration_id, b.is_extended_id, bytes(b.data)) == (
            a.arbitration_id,
            a.is_extended_id,
            bytes(a.data),
        )
        if "fd" in keeps:
            assert (b.is_fd, b.bitrate_switch) == (a.is_fd, a.bitrate_switch)
        if "rx" in keeps:
            assert b.is_rx == a.is_rx
        assert b.is_remote_frame == a.is_remote_frame
        if suffix != ".log" or not a.is_remote_frame:  # candump text has no remote DLC
            assert b.dlc == a.dlc
        # .asc reads back relative to the first frame (python-can's reader default)
        expected_ts = a.timestamp - (T0 if suffix == ".asc" else 0.0)
        assert b.timestamp == pytest.approx(expected_ts, abs=2e-6)


def test_every_python_can_format_is_supported() -> None:
    from can.io.logger import MESSAGE_WRITERS
    from can.io.player import MESSAGE_READERS

    assert set(LOG_FORMATS) == set(MESSAGE_READERS) & set(MESSAGE_WRITERS)  # .txt is write-only


def test_a_candump_recording_names_its_channel(tmp_path: Path) -> None:
    path = tmp_path / "udp.log"
    write_log(path, [can.Message(timestamp=T0, arbitration_id=1, channel=None)], channel="239.74.163.2")
    assert "239.74.163.2 00000001#" in path.read_text()
    assert [m.channel for m in read_log(path)] == ["239.74.163.2"]


def test_writer_as_notifier_listener(tmp_path: Path) -> None:
    path = tmp_path / "live.blf"
    # A channel name ending in a big number: python-can's BLF writer alone overflows on it.
    channel = f"rec-{uuid.uuid4().hex}-4294967296"
    with can.Bus(interface="virtual", channel=channel) as rx, can.Bus(interface="virtual", channel=channel) as tx:
        seen = can.BufferedReader()
        # Listeners get each frame in list order: once `seen` has a frame, the writer has it.
        # Leaving the block stops the notifier, which stops (closes) both listeners.
        with can.Notifier(rx, [open_writer(path), seen], timeout=0.05):  # stop() waits <= timeout
            for i in range(10):
                tx.send(can.Message(arbitration_id=0x100 + i, data=bytes([i])))
            got = [seen.get_message(timeout=2.0) for _ in range(10)]
            assert all(m is not None for m in got)
    assert [m.arbitration_id for m in read_log(path)] == [0x100 + i for i in range(10)]


@pytest.mark.parametrize("suffix", sorted(LOG_FORMATS))
def test_channel_names_the_formats_cannot_hold(tmp_path: Path, suffix: str) -> None:
    if suffix in OPTIONAL_FORMATS:
        pytest.importorskip(OPTIONAL_FORMATS[suffix][0], reason=f"python-can's {suffix} support needs it")
    path = tmp_path / f"channels{suffix}"
    msgs = [
        can.Message(timestamp=T0, arbitration_id=1, channel="bench 7"),
        can.Message(timestamp=T0 + 1, arbitration_id=2, channel="239.74.163.2"),
        can.Message(timestamp=T0 + 2, arbitration_id=3, channel="can1"),
        can.Message(timestamp=T0 + 3, arbitration_id=4, channel="rig-20260101"),  # > MAX_CHANNEL
    ]
    assert write_log(path, msgs) == 4
    back = list(read_log(path))
    assert [m.arbitration_id for m in back] == [1, 2, 3, 4]
    if suffix == ".log":
        assert [m.channel for m in back] == ["bench_7", "239.74.163.2", "can1", "rig-20260101"]
    elif suffix in (".asc", ".blf"):  # python-can keeps the trailing number of a name ("239.74.163.2" -> 2)
        assert [m.channel for m in back] == [7, 2, 1, 0]  # default channel 1, read as 0
    assert msgs[1].channel == "239.74.163.2"  # the caller's message is untouched


def test_unknown_suffix_missing_and_damaged_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown log suffix '\.xyz'.*\.blf"):
        open_writer(tmp_path / "x.xyz")
    with pytest.raises(ConfigError, match="cannot read"):
        list(read_log(tmp_path / "x"))
    with pytest.raises(ConfigError, match="no such log file"):
        list(read_log(tmp_path / "absent.asc"))
    bad = tmp_path / "bad.blf"
    bad.write_bytes(b"garbage" * 20)
    with pytest.raises(ConfigError, match="as a Vector BLF log"):
        list(read_log(bad))
    bad_log = tmp_path / "bad.log"
    bad_log.write_text("this is not candump\n")
    with pytest.raises(ConfigError, match="as a candump -L log"):
        list(read_log(bad_log))
    with pytest.raises(ConfigError, match="cannot record to"):
        open_writer(tmp_path / "no-such-dir" / "x.log")
