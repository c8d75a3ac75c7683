"""A LAWICEL / slcan USB-CAN adapter emulated on a pseudo-terminal.

Stands in for a CANable / CANUSB style adapter on machines without one (docs/buses.md §4): python-can's
``slcan`` interface talks to :attr:`SlcanEmulator.tty_path` exactly as to ``/dev/ttyACM0``, and
the emulator bridges frames to and from any python-can bus (by default a ``virtual`` channel in
the same process)::

    with SlcanEmulator(virtual_channel="bench") as emu:
        host = can.Bus(interface="slcan", channel=emu.tty_path, bitrate=500000, sleep_after_open=0)
        side = can.Bus(interface="virtual", channel="bench")
        host.send(can.Message(arbitration_id=0x18FF50E5, data=b"\\x01"))
        side.recv(1.0)  # -> the frame

Commands served (LAWICEL CANUSB manual, plus the CANable 2.0 FD dialect python-can uses):

========  =============================================  =====================================
command   meaning                                        reply
========  =============================================  =====================================
``Sn``    nominal bit rate, n = 0…8 (10k…1M), 9 = 83.3k  ``\\r`` (``\\a`` if the channel is open)
``sXXYY`` SJA1000 BTR0/BTR1                              ``\\r`` (closed only)
``Yn``    FD data bit rate, n = 1, 2, 4, 5, 8 Mbit/s     ``\\r`` (closed only)
``O``     open the channel                               ``\\r`` (``\\a`` if already open)
``L``     open listen-only (sending is refused)          ``\\r``
``C``     close the channel                              ``\\r`` (``\\a`` if not open)
``V``     hardware / software version                    ``V1013\\r``
``N``     serial number                                  ``NMB01\\r``
``F``     status flags (read clears them)                ``Fxx\\r`` (open only)
``Zn``    receive timestamps off/on (ms, 4 hex digits)   ``\\r`` (closed only)
``M``/``m`` acceptance code / mask (stored, not applied) ``\\r``
``Xn``    auto-poll (always on here)                     ``\\r``
``t T``   send classic data frame, 11 / 29-bit ID        ``z\\r`` / ``Z\\r``
``r R``   send remote frame                              ``z\\r`` / ``Z\\r``
``d D``   send CAN FD frame (DLC is one hex digit)       ``z\\r`` / ``Z\\r``
``b B``   send CAN FD frame with bit-rate switch         ``z\\r`` / ``Z\\r``
========  =============================================  =====================================

Anything else, or a frame command that does not parse, gets ``\\a`` (BELL); no input ends a thread
(unparseable bridged-bus input is dropped and counted in ``stats.malformed``). While the channel is
open, frames from the bus are written to the host as ``t/T/r/R/d/D/b/B`` lines, like an adapter in
auto-poll mode. The bit rate is recorded, not enforced (the bridged bus decides timing).

Two background threads, both blocking (no busy-waiting): one waits in ``select`` on the pty and
a wake-up pipe, the other in ``bus.recv(timeout)`` on the bridged bus. Output to the host is
buffered up to ``max_pending`` bytes; past that, frames are dropped and the data-overrun status
flag is set, as a real adapter does when the host stops reading.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import selectors
import signal
import sys
import threading
import time
import tty
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import can
from can.util import CAN_FD_DLC, len2dlc

from ..can.ids import STANDARD_ID_MAX, id_fits
from ..errors import TransportError

__all__ = ["SlcanEmulator", "SlcanStats", "main"]

_OK = b"\r"
_BELL = b"\a"
_HEX = frozenset("0123456789abcdefABCDEF")
_MAX_LINE = 200  # longest valid line: "B" + 8 + 1 + 128 hex digits + timestamp; beyond is garbage

#: ``Sn`` codes (python-can's table, incl. its non-standard S9 = 83.3 kbit/s).
BITRATE_CODES = {
    "0": 10_000,
    "1": 20_000,
    "2": 50_000,
    "3": 100_000,
    "4": 125_000,
    "5": 250_000,
    "6": 500_000,
    "7": 750_000,
    "8": 1_000_000,
    "9": 83_300,
}
#: ``Yn`` codes of the CANable 2.0 FD firmware.
DATA_BITRATE_CODES = {"1": 1_000_000, "2": 2_000_000, "4": 4_000_000, "5": 5_000_000, "8": 8_000_000}

# Status flag bits answered by ``F`` (LAWICEL CANUSB manual).
FLAG_RX_FIFO_FULL = 0x01
FLAG_DATA_OVERRUN = 0x08
FLAG_BUS_ERROR = 0x80


@dataclass
class SlcanStats:
    """Counters a test or a demo can assert on."""

    commands: int = 0
    bells: int = 0
    frames_to_bus: int = 0
    frames_to_host: int = 0
    frames_dropped: int = 0  # host not reading (buffer full) or channel closed
    frames_skipped: int = 0  # error frames / frames slcan cannot express
    malformed: int = 0  # input dropped: bus-side data that is no frame, host lines that broke the parser


class _BadCommand(Exception):
    """A command line that gets a BELL."""


class SlcanEmulator:
    """An slcan adapter on an ``os.openpty()`` pseudo-terminal, bridged to a python-can bus.

    :param bus: the bus to bridge to; when ``None`` a ``virtual`` bus on ``virtual_channel`` is
        opened and owned (shut down by :meth:`stop`). A bus passed in must not echo the
        emulator's own frames back (``receive_own_messages`` off), or they would loop.
    :param virtual_channel: channel of the owned virtual bus.
    :param max_pending: bytes buffered towards a host that is not reading before frames drop.
    :param poll_interval: how long the bus thread blocks in ``recv`` between stop checks;
        it bounds :meth:`stop` latency, not frame latency.
    """

    HW_VERSION = 10
    SW_VERSION = 13
    SERIAL_NUMBER = "MB01"

    def __init__(
        self,
        bus: can.BusABC | None = None,
        *,
        virtual_channel: str = "modbatt-slcan",
        max_pending: int = 64 * 1024,
        poll_interval: float = 0.05,
    ) -> None:
        self._bus = bus
        self._owns_bus = bus is None
        self._virtual_channel = virtual_channel
        self._max_pending = max_pending
        self._poll_interval = poll_interval
        self.stats = SlcanStats()
        # Adapter state, as set by the host's commands.
        self.is_open = False
        self.listen_only = False
        self.bitrate: int | None = None
        self.data_bitrate: int | None = None
        self.btr: str | None = None
        self.timestamps = False
        self.acceptance: tuple[str | None, str | None] = (None, None)
        self._flags = 0  # status flags for "F"; guarded by _out_lock
        # I/O plumbing, created by start().
        self._master = -1
        self._slave = -1
        self._wake_r = -1
        self._wake_w = -1
        self._tty_path: str | None = None
        self._out = bytearray()
        self._out_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = time.monotonic()
        self.error: BaseException | None = None  # what ended a thread early, if anything

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def tty_path(self) -> str:
        """The pseudo-terminal to give python-can as the slcan ``channel``."""
        if self._tty_path is None:
            raise TransportError("the slcan emulator is not started")
        return self._tty_path

    @property
    def bus(self) -> can.BusABC:
        """The bridged bus (available after :meth:`start`)."""
        if self._bus is None:
            raise TransportError("the slcan emulator is not started")
        return self._bus

    @property
    def virtual_channel(self) -> str | None:
        """The virtual channel of the bus the emulator owns (None when a bus was passed in)."""
        return self._virtual_channel if self._owns_bus else None

    @property
    def running(self) -> bool:
        return bool(self._threads) and not self._stop.is_set()

    def start(self) -> SlcanEmulator:
        """Open the pty and the bus, then serve in two daemon threads. Returns ``self``."""
        if self._threads:
            raise TransportError("the slcan emulator is already started")
        if self._bus is None:
            from .canbus import BusConfig, open_bus  # buses open in one place (docs/buses.md §2)

            self._bus = open_bus(BusConfig(interface="virtual", channel=self._virtual_channel))
        self._master, self._slave = os.openpty()
        # Raw mode: no echo, no CR->NL translation, so bytes pass as an adapter sends them.
        tty.setraw(self._slave)
        # The emulator keeps the slave open for its whole life: otherwise the master reads EIO
        # whenever no host has the tty open, and a host could not reconnect.
        self._tty_path = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop.clear()
        self._t0 = time.monotonic()
        self._threads = [
            threading.Thread(target=self._serve_tty, name="slcan-emu-tty", daemon=True),
            threading.Thread(target=self._serve_bus, name="slcan-emu-bus", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop both threads, close the pty and shut down an owned bus. Idempotent."""
        if not self._threads:
            return
        self._stop.set()
        self._wake()
        for thread in self._threads:
            thread.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = -1
        if self._owns_bus and self._bus is not None:
            self._bus.shutdown()
            self._bus = None
        if alive:
            raise TransportError(f"slcan emulator threads did not stop within {timeout} s: {alive}")

    def __enter__(self) -> SlcanEmulator:
        if not self._threads:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- output to the host ----------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe already means "wake up"
            os.write(self._wake_w, b"x")

    def _emit(self, data: bytes, *, is_frame: bool = False) -> bool:
        """Queue bytes for the host and try to write them now; False if a frame was dropped."""
        with self._out_lock:
            if is_frame and len(self._out) + len(data) > self._max_pending:
                self._flags |= FLAG_DATA_OVERRUN | FLAG_RX_FIFO_FULL
                self.stats.frames_dropped += 1
                return False
            self._out += data
            pending = self._flush_locked()
        if pending:
            self._wake()  # let the tty thread wait for the pty to drain
        return True

    def _flush_locked(self) -> bool:
        """Write what the pty accepts; True if bytes remain."""
        while self._out:
            try:
                n = os.write(self._master, self._out)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EBADF):
                    self._out.clear()  # pty gone (stopping): nothing to deliver to
                    return False
                raise
            del self._out[:n]
        return False

    # -- tty thread ------------------------------------------------------------------------

    def _serve_tty(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            sel.register(self._master, selectors.EVENT_READ, "tty")
            line = bytearray()
            want_write = False
            while not self._stop.is_set():
                for key, events in sel.select():
                    if key.data == "wake":
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                        continue
                    if events & selectors.EVENT_WRITE:
                        with self._out_lock:
                            self._flush_locked()
                    if events & selectors.EVENT_READ:
                        try:
                            chunk = os.read(self._master, 4096)
                        except BlockingIOError:
                            chunk = b""
                        for byte in chunk:
                            if byte == 0x0D:  # '\r' ends a command
                                self._handle_line(bytes(line))
                                line.clear()
                            elif byte != 0x0A:  # tolerate hosts that add '\n'
                                line.append(byte)
                                if len(line) > _MAX_LINE:
                                    line.clear()
                                    self.stats.bells += 1
                                    self._emit(_BELL)
                with self._out_lock:
                    pending = bool(self._out)
                if pending != want_write and not self._stop.is_set():
                    want_write = pending
                    mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
                    sel.modify(self._master, mask, "tty")
        except Exception as exc:  # surfaced through .error; a dead thread must not hang tests
            if not self._stop.is_set():
                self.error = exc
        finally:
            sel.close()

    def _handle_line(self, raw: bytes) -> None:
        self.stats.commands += 1
        try:
            reply = self._command(raw.decode("ascii"))
        except (_BadCommand, UnicodeDecodeError, ValueError, IndexError):
            self.stats.bells += 1
            reply = _BELL
        except Exception:  # any other parser failure: still one refused line, never a dead thread
            self.stats.bells += 1
            self.stats.malformed += 1
            reply = _BELL
        self._emit(reply)

    def _require(self, condition: bool) -> None:
        if not condition:
            raise _BadCommand

    def _command(self, line: str) -> bytes:
        if not line:
            return _OK  # a bare CR: adapters answer it (hosts send it to resynchronise)
        cmd, arg = line[0], line[1:]
        if cmd in "tTrRdDbB":
            return self._send_frame(cmd, arg)
        if cmd == "S":
            self._require(not self.is_open and arg in BITRATE_CODES)
            self.bitrate, self.btr = BITRATE_CODES[arg], None
        elif cmd == "s":
            self._require(not self.is_open and len(arg) == 4)
            int(arg, 16)
            self.btr, self.bitrate = arg.upper(), None
        elif cmd == "Y":
            self._require(not self.is_open and arg in DATA_BITRATE_CODES)
            self.data_bitrate = DATA_BITRATE_CODES[arg]
        elif cmd in "OL":
            self._require(not self.is_open and not arg)
            self.is_open, self.listen_only = True, cmd == "L"
        elif cmd == "C":
            self._require(self.is_open and not arg)
            self.is_open = self.listen_only = False
        elif cmd == "V":
            return b"V%02d%02d\r" % (self.HW_VERSION, self.SW_VERSION)
        elif cmd == "N":
            return b"N" + self.SERIAL_NUMBER.encode() + _OK
        elif cmd == "F":
            self._require(self.is_open)
            with self._out_lock:  # the bus thread sets overrun flags under this lock
                flags, self._flags = self._flags, 0
            return b"F%02X\r" % flags
        elif cmd == "Z":
            self._require(not self.is_open and arg in ("0", "1"))
            self.timestamps = arg == "1"
        elif cmd in "Mm":
            self._require(len(arg) == 8)
            int(arg, 16)
            code, mask = self.acceptance
            self.acceptance = (arg, mask) if cmd == "M" else (code, arg)
        elif cmd == "X":
            self._require(arg in ("0", "1"))
        else:
            raise _BadCommand
        return _OK

    def _send_frame(self, cmd: str, arg: str) -> bytes:
        self._require(self.is_open and not self.listen_only)
        # Only hex digits: int() and bytes.fromhex() would also take signs, "0x", spaces.
        self._require(all(c in _HEX for c in arg))
        extended = cmd.isupper()
        id_len = 8 if extended else 3
        can_id = int(arg[:id_len], 16)
        self._require(len(arg) > id_len and id_fits(can_id, extended=extended))
        dlc_char = arg[id_len]
        rest = arg[id_len + 1 :]
        is_fd = cmd in "dDbB"
        if is_fd:
            length = CAN_FD_DLC[int(dlc_char, 16)]
        else:
            self._require(dlc_char.isdigit() and int(dlc_char) <= 8)
            length = int(dlc_char)
        if cmd in "rR":
            self._require(not rest)
            data = b""
        else:
            self._require(len(rest) == 2 * length)
            data = bytes.fromhex(rest)
        msg = can.Message(
            timestamp=time.time(),
            arbitration_id=can_id,
            is_extended_id=extended,
            is_remote_frame=cmd in "rR",
            is_fd=is_fd,
            bitrate_switch=cmd in "bB",
            dlc=length,
            data=data,
            is_rx=False,
        )
        try:
            self.bus.send(msg, timeout=1.0)
        except can.CanError:
            with self._out_lock:
                self._flags |= FLAG_BUS_ERROR
            raise _BadCommand from None
        self.stats.frames_to_bus += 1
        return b"Z\r" if extended else b"z\r"

    # -- bus thread ------------------------------------------------------------------------

    def _serve_bus(self) -> None:
        bus = self.bus
        try:
            while not self._stop.is_set():
                try:
                    msg = bus.recv(timeout=self._poll_interval)
                except can.CanOperationError as exc:
                    if isinstance(exc.__cause__, OSError):
                        raise  # the bus itself failed
                    # Bytes the bridged backend could not turn into a frame (e.g. a foreign
                    # udp_multicast datagram): drop them, keep bridging.
                    self.stats.malformed += 1
                    continue
                if msg is None:
                    continue
                if not self.is_open:
                    self.stats.frames_dropped += 1  # a closed adapter receives nothing
                    continue
                line = self._encode(msg)
                if line is None:
                    self.stats.frames_skipped += 1
                elif self._emit(line, is_frame=True):
                    self.stats.frames_to_host += 1
        except Exception as exc:
            if not self._stop.is_set():
                self.error = exc

    def _encode(self, msg: can.Message) -> bytes | None:
        """The line an adapter would send for ``msg``; None for what slcan cannot express."""
        if msg.is_error_frame:
            return None
        ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
        if not msg.is_extended_id and msg.arbitration_id > STANDARD_ID_MAX:
            return None
        if msg.is_remote_frame:
            if msg.dlc > 8:
                return None
            text = ("R" if msg.is_extended_id else "r") + ident + str(msg.dlc)
        elif msg.is_fd:
            data = bytes(msg.data)
            if len(data) > 64:
                return None
            code = len2dlc(len(data))
            data = data.ljust(CAN_FD_DLC[code], b"\0")  # pad like a controller does
            letter = "B" if msg.bitrate_switch else "D"
            letter = letter if msg.is_extended_id else letter.lower()
            text = letter + ident + f"{code:X}" + data.hex().upper()
        else:
            if msg.dlc > 8 or len(msg.data) > 8:
                return None
            text = ("T" if msg.is_extended_id else "t") + ident + str(msg.dlc) + msg.data.hex().upper()
        if self.timestamps:
            # LAWICEL: milliseconds, wrapping at 60 000.
            text += f"{int((time.monotonic() - self._t0) * 1000) % 60000:04X}"
        return text.encode("ascii") + _OK


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m modbatt.transport.slcan_emulator``: serve until Ctrl-C / SIGTERM / --duration."""
    parser = argparse.ArgumentParser(
        prog="python -m modbatt.transport.slcan_emulator",
        description="Emulate an slcan (LAWICEL) USB-CAN adapter on a pseudo-terminal; prints the tty path.",
    )
    parser.add_argument("--virtual-channel", default=None, help="bridge to this python-can virtual channel")
    parser.add_argument("--interface", default=None, help="bridge to a python-can interface instead")
    parser.add_argument("--channel", default=None, help="channel for --interface")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)

    from ..errors import ModbattError
    from .canbus import open_bus, resolve_bus  # the CLI alone needs configuration

    if args.interface is not None and args.virtual_channel is not None:
        parser.error("use either --virtual-channel or --interface")
    bus: can.BusABC | None = None
    if args.interface is not None:
        try:
            bus = open_bus(resolve_bus(args.interface, args.channel))  # the bus rule (docs/buses.md §2)
        except ModbattError as exc:
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
    emu = SlcanEmulator(bus, virtual_channel=args.virtual_channel or "modbatt-slcan")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    with emu:
        print(emu.tty_path, flush=True)
        done.wait(args.duration)
    if bus is not None:
        bus.shutdown()
    stats = emu.stats
    print(
        f"stopped: {stats.frames_to_bus} frames to bus, {stats.frames_to_host} to host, "
        f"{stats.frames_dropped} dropped, {stats.bells} errors",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
