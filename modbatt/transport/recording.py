"""Record frames to python-can log files and read them back.

Thin wrappers on :class:`can.Logger` and :class:`can.LogReader` that accept only the formats
modbatt promises to round-trip, chosen by file suffix:

========  ==================  ======================================================
suffix    format              opens in
========  ==================  ======================================================
``.log``  candump ``-L``      can-utils ``canplayer``/``log2asc``, SavvyCAN, cantools
``.asc``  Vector ASCII        CANalyzer / CANoe, PEAK tools, SavvyCAN
``.blf``  Vector binary       CANalyzer / CANoe (python-can writes BLF v2 objects)
========  ==================  ======================================================

What survives a round trip (checked by ``tests/test_recording.py``): ID and its width, data, FD
and BRS flags, direction (Rx/Tx) in all three; and in detail:

* ``.log``: absolute timestamps to the microsecond and the channel name; a remote frame comes
  back with DLC 0 and an error frame with ID 0 (candump's text has no field for either).
* ``.asc``: timestamps come back *relative to the first frame* (python-can's reader default; the
  absolute start is in the header, to the millisecond only); channels become integers.
* ``.blf``: absolute timestamps, remote DLC and error frames survive; channels become integers.
"""

from __future__ import annotations

import copy
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import can
import can.util
from can.io.blf import BLFParseError
from can.io.generic import MessageWriter

from ..errors import ConfigError

__all__ = ["LOG_FORMATS", "RecordingWriter", "log_format", "open_writer", "read_log", "write_log"]

#: Supported suffixes and what they are.
LOG_FORMATS: dict[str, str] = {
    ".log": "candump -L (can-utils)",
    ".asc": "Vector ASC",
    ".blf": "Vector BLF",
}


def log_format(path: str | os.PathLike[str], action: str = "record to") -> str:
    """The suffix of ``path`` if modbatt can handle it, else :class:`~modbatt.errors.ConfigError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in LOG_FORMATS:
        known = ", ".join(f"{s} ({d})" for s, d in LOG_FORMATS.items())
        raise ConfigError(
            f"cannot {action} {os.fspath(path)!r}: unknown log suffix {suffix or '(none)'!r}; use one of {known}"
        )
    return suffix


class RecordingWriter(can.Listener):
    """A python-can log writer behind a guard for channel names the formats cannot hold.

    python-can's ASC and BLF writers turn ``msg.channel`` into an integer by its trailing
    digits (``"can1"`` → 1, written as 2), so a virtual channel name ending in a long number
    (a date, a UUID's digits) overflows BLF's 16-bit field and kills the writer, and with it a
    Notifier thread (python-can 4.6). Channels whose number would exceed
    :attr:`MAX_CHANNEL` are recorded as the writer's default channel instead; candump logs get
    whitespace in channel names replaced by ``_`` (it would split the line). Everything else
    is passed to the python-can writer untouched; :attr:`writer` is that writer.
    """

    #: Largest channel number kept in ASC/BLF (Vector tools number channels from 1, a few dozen).
    MAX_CHANNEL = 255

    def __init__(self, writer: MessageWriter, suffix: str) -> None:
        self.writer = writer
        self._numbered = suffix in (".asc", ".blf")

    def _fix(self, msg: can.Message) -> can.Message:
        channel = msg.channel
        if channel is None or (isinstance(channel, int) and 0 <= channel <= self.MAX_CHANNEL):
            return msg
        if self._numbered:
            number = can.util.channel2int(channel)
            if number is not None and 0 <= number <= self.MAX_CHANNEL:
                return msg
            fixed = copy.copy(msg)  # never mutate a message other listeners also hold
            fixed.channel = None
            return fixed
        if isinstance(channel, str) and any(c.isspace() for c in channel):
            fixed = copy.copy(msg)
            fixed.channel = "_".join(channel.split())
            return fixed
        return msg

    def on_message_received(self, msg: can.Message) -> None:
        self.writer.on_message_received(self._fix(msg))

    def on_error(self, exc: Exception) -> None:
        self.writer.on_error(exc)

    def stop(self) -> None:
        """Flush and close the file (idempotent: a Notifier and a ``with`` may both call it)."""
        if not getattr(self, "_stopped", False):
            self._stopped = True
            self.writer.stop()

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def open_writer(path: str | os.PathLike[str], **kwargs: Any) -> RecordingWriter:
    """A recorder for ``path``: a :class:`can.Listener` and context manager.

    Hand it to a :class:`can.Notifier`, or call ``on_message_received`` with each message;
    ``stop()`` (or leaving the ``with`` block) flushes and closes the file. ``kwargs`` go to the
    python-can writer.
    """
    suffix = log_format(path)
    try:
        writer = can.Logger(os.fspath(path), **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot record to {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    # can.Logger returns the concrete writer; BLF, ASC and candump writers are MessageWriters.
    return RecordingWriter(writer, suffix)  # type: ignore[arg-type]


def write_log(path: str | os.PathLike[str], messages: Iterable[can.Message]) -> int:
    """Write ``messages`` to ``path`` (format by suffix); returns how many were written."""
    count = 0
    with open_writer(path) as writer:
        for msg in messages:
            writer.on_message_received(msg)
            count += 1
    return count


def read_log(path: str | os.PathLike[str], **kwargs: Any) -> Iterator[can.Message]:
    """Yield the messages recorded in ``path`` (format by suffix), in file order.

    Raises :class:`~modbatt.errors.ConfigError` for a missing file, an unknown suffix or a
    file the python-can reader cannot parse.
    """
    log_format(path, "read")
    if not Path(path).is_file():
        raise ConfigError(f"no such log file: {os.fspath(path)!r}")
    try:
        with can.LogReader(os.fspath(path), **kwargs) as reader:
            yield from reader
    except (BLFParseError, ValueError, IndexError, KeyError, EOFError, struct.error) as exc:
        # python-can readers raise assorted errors on damaged files; one clear message instead.
        raise ConfigError(f"cannot read log file {os.fspath(path)!r}: {exc}") from exc
