"""python-can's slcan interface against the LAWICEL emulator on a pseudo-terminal."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import can
import pytest
import serial

from modbatt.transport.canbus import BusConfig, open_bus
from modbatt.transport.slcan_emulator import SlcanEmulator

# Every wait in this file is bounded by this (seconds).
WAIT = 2.0


@pytest.fixture
def emu() -> Iterator[SlcanEmulator]:
    with SlcanEmulator(virtual_channel=f"slcan-{uuid.uuid4().hex}") as emulator:
        yield emulator
    assert emulator.error is None


@pytest.fixture
def side(emu: SlcanEmulator) -> Iterator[can.BusABC]:
    """The CAN side of the emulated adapter: a second bus on its virtual channel."""
    bus = can.Bus(interface="virtual", channel=emu.virtual_channel, ignore_config=True)
    yield bus
    bus.shutdown()


def _host(emu: SlcanEmulator, **kwargs: object) -> can.BusABC:
    """An slcan bus on the emulator, with its open commands handled.

    python-can does not wait for the adapter's acks, so a frame sent on the CAN side right after
    opening could reach a still-closed adapter (and be dropped, as by real hardware). A version
    query is answered in command order: once it returns, "S" and "O" have been handled.
    """
    bus = open_bus(BusConfig(interface="slcan", channel=emu.tty_path, bitrate=500000, **kwargs))  # type: ignore[arg-type]
    assert bus.get_version(WAIT) == (10, 13)  # type: ignore[attr-defined]
    return bus


def _recv_frame(bus: can.BusABC) -> can.Message:
    msg = bus.recv(timeout=WAIT)
    assert msg is not None, "no frame within the wait bound"
    return msg


def _raw(port: serial.Serial, command: bytes) -> bytes:
    """Send one command line on a raw serial handle; return the reply up to '\\r' or '\\a'."""
    port.write(command + b"\r")
    reply = bytearray()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        byte = port.read(1)
        if byte:
            reply += byte
            if byte in (b"\r", b"\a"):
                return bytes(reply)
    raise AssertionError(f"no reply to {command!r}")


def test_version_serial_open_close(emu: SlcanEmulator) -> None:
    started = time.perf_counter()
    host = _host(emu)
    opened_in = time.perf_counter() - started
    assert opened_in < 0.5  # sleep_after_open=0: no 2 s python-can default
    # python-can does not wait for acks; a query answered in order proves S/O were handled
    assert host.get_version(WAIT) == (10, 13)
    assert emu.is_open and emu.bitrate == 500000 and not emu.listen_only
    assert host.get_serial_number(WAIT) == "MB01"
    host.shutdown()  # sends "C"
    deadline = time.monotonic() + WAIT
    while emu.is_open and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not emu.is_open


def test_frames_host_to_bus(emu: SlcanEmulator, side: can.BusABC) -> None:
    sent = [
        can.Message(arbitration_id=0x18FF50E5, data=b"\x01\x02\x03"),
        can.Message(arbitration_id=0x123, is_extended_id=False, data=b""),
        can.Message(arbitration_id=0x7FF, is_extended_id=False, data=bytes(range(8))),
        can.Message(arbitration_id=0x1ABCDEF0, is_remote_frame=True, dlc=4),
        can.Message(arbitration_id=0x1234567, is_fd=True, data=bytes(range(12))),
        can.Message(arbitration_id=0x321, is_extended_id=False, is_fd=True, bitrate_switch=True, data=bytes(64)),
    ]
    with _host(emu) as host:
        for msg in sent:
            host.send(msg)
            got = _recv_frame(side)
            assert msg.equals(got, timestamp_delta=None, check_channel=False, check_direction=False), got
    assert emu.stats.frames_to_bus == len(sent)


def test_frames_bus_to_host(emu: SlcanEmulator, side: can.BusABC) -> None:
    sent = [
        can.Message(arbitration_id=0x18FF50E5, data=b"\xaa\xbb"),
        can.Message(arbitration_id=0x42, is_extended_id=False, data=b"\x00" * 8),
        can.Message(arbitration_id=0x42, is_extended_id=False, is_remote_frame=True, dlc=2),
        can.Message(arbitration_id=0x1234567, is_fd=True, bitrate_switch=True, data=bytes(range(20))),
    ]
    with _host(emu) as host:
        for msg in sent:
            side.send(msg)
            got = _recv_frame(host)
            assert msg.equals(got, timestamp_delta=None, check_channel=False, check_direction=False), got
        # an error frame cannot be said in slcan: skipped, and the next frame still arrives
        side.send(can.Message(is_error_frame=True))
        side.send(sent[0])
        assert _recv_frame(host).arbitration_id == sent[0].arbitration_id
    assert emu.stats.frames_skipped == 1


def test_closed_channel_drops_bus_frames_and_reopens(emu: SlcanEmulator, side: can.BusABC) -> None:
    with _host(emu):
        pass
    deadline = time.monotonic() + WAIT
    while emu.is_open and time.monotonic() < deadline:  # "C" is handled asynchronously
        time.sleep(0.005)
    side.send(can.Message(arbitration_id=0x100, data=b"\x01"))
    deadline = time.monotonic() + WAIT
    while emu.stats.frames_dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert emu.stats.frames_dropped == 1
    with _host(emu) as host:  # a second host session on the same tty
        assert host.get_version(WAIT) == (10, 13)
        side.send(can.Message(arbitration_id=0x101, data=b"\x02"))
        assert _recv_frame(host).arbitration_id == 0x101


def test_fd_data_bitrate_reaches_the_adapter(emu: SlcanEmulator) -> None:
    with _host(emu, fd=True, data_bitrate=2_000_000) as host:
        assert host.get_version(WAIT) == (10, 13)  # barrier: earlier commands are handled
        assert (emu.bitrate, emu.data_bitrate) == (500000, 2_000_000)


def test_raw_lawicel_commands(emu: SlcanEmulator) -> None:
    with serial.Serial(emu.tty_path, timeout=0.05) as port:
        assert _raw(port, b"V") == b"V1013\r"
        assert _raw(port, b"N") == b"NMB01\r"
        assert _raw(port, b"T1234567811") == b"\a"  # channel closed
        assert _raw(port, b"C") == b"\a"  # not open
        assert _raw(port, b"S9") == b"\r" and emu.bitrate == 83_300
        assert _raw(port, b"S") == b"\a"
        assert _raw(port, b"s031C") == b"\r" and emu.btr == "031C" and emu.bitrate is None
        assert _raw(port, b"Z1") == b"\r"
        assert _raw(port, b"Q") == b"\a"  # unknown command
        assert _raw(port, b"L") == b"\r" and emu.listen_only
        assert _raw(port, b"t1230") == b"\a"  # listen-only refuses to send
        assert _raw(port, b"C") == b"\r"
        assert _raw(port, b"O") == b"\r"
        assert _raw(port, b"O") == b"\a"  # already open
        assert _raw(port, b"S6") == b"\a"  # no bit-rate change while open
        assert _raw(port, b"F") == b"F00\r"
        for bad in (
            b"T123",
            b"t8000",
            b"t12390011",
            b"T20000000100",
            b"t123201",
            b"tXYZ0",
            b"R1234567811",
            b"t-120",
            b"t1231 A",
        ):
            assert _raw(port, bad) == b"\a", bad
        assert _raw(port, b"t1232ABCD") == b"z\r"
        assert _raw(port, b"R123456784") == b"Z\r"
        # timestamps on: frames to the host carry 4 hex digits of milliseconds
        side = can.Bus(interface="virtual", channel=emu.virtual_channel, ignore_config=True)
        try:
            side.send(can.Message(arbitration_id=0x7E8, is_extended_id=False, data=b"\x01"))
            line = _raw(port, b"")  # a bare CR is answered with CR; the frame line may come first
            if line == b"\r":
                line = port.read_until(b"\r")
            else:
                assert port.read(1) == b"\r"
        finally:
            side.shutdown()
        assert line.startswith(b"t7E8101") and len(line) == len(b"t7E8101") + 4 + 1
    assert emu.stats.bells >= 10


def test_host_not_reading_drops_frames_without_hanging() -> None:
    channel = f"slcan-{uuid.uuid4().hex}"
    emu = SlcanEmulator(virtual_channel=channel, max_pending=256).start()
    side = can.Bus(interface="virtual", channel=channel, ignore_config=True)
    n = 4000
    try:
        with serial.Serial(emu.tty_path, timeout=0.05) as port:
            assert _raw(port, b"O") == b"\r"
            # ~110 kB of lines: more than the pty buffer plus 256 bytes can hold. Digits only, so
            # the "F" of the status reply cannot appear in the frame lines read before it.
            for _ in range(n):
                side.send(can.Message(arbitration_id=0x100, data=b"\x55" * 8))
            deadline = time.monotonic() + WAIT
            while emu.stats.frames_to_host + emu.stats.frames_dropped < n and time.monotonic() < deadline:
                time.sleep(0.01)
            assert emu.stats.frames_dropped > 0
            port.write(b"F\r")
            port.timeout = WAIT  # pyserial's timeout bounds the whole read_until
            data = port.read_until(b"F", size=1 << 20)
            flags = port.read(3)
            assert data.endswith(b"F") and int(flags[:2], 16) & 0x08, flags  # data overrun
    finally:
        side.shutdown()
        started = time.perf_counter()
        emu.stop()
        assert time.perf_counter() - started < 1.0
    assert not emu.running and emu.error is None
    emu.stop()  # idempotent


def test_module_entry_point_prints_the_tty() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "modbatt.transport.slcan_emulator", "--virtual-channel", "x", "--duration", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready, "emulator did not print its tty"
        assert proc.stdout is not None
        tty_path = proc.stdout.readline().strip()
        assert tty_path.startswith("/dev/pts/") and os.path.exists(tty_path)
        # another process talks to it like to a USB adapter
        with can.Bus(interface="slcan", channel=tty_path, bitrate=250000, sleep_after_open=0) as host:
            assert host.get_version(WAIT) == (10, 13)
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "stopped:" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
