"""Record frames to python-can log files and read them back.

Thin wrappers on :class:`can.Logger` and :class:`can.LogReader` for every log format python-can
reads and writes, chosen by file suffix:

========  ========================  ==========================================  =====================
suffix    format                    opens in                                    needs
========  ========================  ==========================================  =====================
``.log``  candump ``-L``            can-utils ``canplayer``/``log2asc``,         -
                                    SavvyCAN, ``cantools decode``
``.asc``  Vector ASCII              CANalyzer / CANoe, PEAK tools, SavvyCAN     -
``.blf``  Vector binary             CANalyzer / CANoe (BLF v2 objects)          -
``.trc``  PEAK PCAN-View trace      PCAN-View, PCAN-Explorer, SavvyCAN          -
``.csv``  python-can CSV            pandas, spreadsheets                        -
``.db``   python-can SQLite         sqlite3, pandas                             -
``.mf4``  ASAM MDF 4 (bus logging)  asammdf, CANape, Vector tools               ``asammdf``
========  ========================  ==========================================  =====================

What survives a round trip (checked by ``tests/test_recording.py``): ID and its width, data and
DLC in all of them; and in detail:

* ``.log``: absolute timestamps to the microsecond, FD/BRS, direction and the channel name; a
  remote frame comes back with DLC 0 and an error frame with ID 0.
* ``.asc``: timestamps come back *relative to the first frame* (python-can's reader default; the
  absolute start is in the header, to the millisecond only); channels become integers.
* ``.blf`` and ``.mf4``: absolute timestamps, FD/BRS, direction, remote DLC; channels become
  integers.
* ``.trc``: absolute timestamps; python-can's writer has no CAN FD and no remote-frame records,
  so those frames are not written (counted in :attr:`RecordingWriter.skipped`); channels become
  integers.
* ``.csv`` and ``.db``: absolute timestamps, remote and error flags; no FD/BRS flags, no
  direction, no channel (python-can's column sets).

A ``.db`` log is an SQLite database, and SQLite runs what a database's schema says when a row is
read (generated columns, views). python-can's reader opens it read-write and reads ``SELECT *``,
so a hostile file could make it allocate gigabytes, read rows without end, or leave ``-wal`` and
``-shm`` files beside the evidence. Logs are therefore read here: the file opened read-only with
the ledger's hardening (:func:`modbatt.ledger.schema.connect`: ``trusted_schema`` off, values
capped), ``messages`` required to be a plain table with exactly python-can's columns, and every
value type- and range-checked.

A file that is not what its suffix says, or whose frames carry timestamps that are not a finite
time (``(inf)``, ``(nan)``, negative, past the year 2286), is refused with one line naming the
problem (:class:`~modbatt.errors.ConfigError`). Records a python-can reader skips (it logs a
warning quoting each damaged line, control characters and all) are counted in
:class:`ReaderNotes` instead of reaching the terminal.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import can
import can.util
from can.io.generic import MessageWriter

from ..can.ids import EXTENDED_ID_MAX
from ..errors import ConfigError
from .busstats import TIMESTAMP_RANGE, usable_timestamp

__all__ = ["LOG_FORMATS", "ReaderNotes", "RecordingWriter", "log_format", "open_writer", "read_log", "write_log"]

_log = logging.getLogger(__name__)

#: Supported suffixes and what they are.
LOG_FORMATS: dict[str, str] = {
    ".log": "candump -L log (can-utils)",
    ".asc": "Vector ASC log",
    ".blf": "Vector BLF log",
    ".trc": "PEAK TRC trace",
    ".csv": "python-can CSV log",
    ".db": "python-can SQLite log",
    ".mf4": "ASAM MDF4 bus log",
}
#: Formats whose python-can reader and writer need an optional package: suffix -> (module, pip name).
OPTIONAL_FORMATS: dict[str, tuple[str, str]] = {".mf4": ("asammdf", "asammdf")}
_NUMBERED_CHANNELS = frozenset({".asc", ".blf", ".trc", ".mf4"})
_NO_FD_OR_REMOTE = frozenset({".trc"})


def log_format(path: str | os.PathLike[str], action: str = "record to") -> str:
    """The suffix of ``path`` if modbatt can handle it here, else :class:`~modbatt.errors.ConfigError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in LOG_FORMATS:
        known = ", ".join(f"{s} ({d})" for s, d in LOG_FORMATS.items())
        raise ConfigError(
            f"cannot {action} {os.fspath(path)!r}: unknown log suffix {suffix or '(none)'!r}; use one of {known}"
        )
    needs = OPTIONAL_FORMATS.get(suffix)
    if needs is not None:
        import importlib.util

        if importlib.util.find_spec(needs[0]) is None:
            raise ConfigError(
                f"cannot {action} {os.fspath(path)!r}: {suffix} files need {needs[1]} (pip install {needs[1]})"
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
        self.suffix = suffix
        self._numbered = suffix in _NUMBERED_CHANNELS
        self._all_kinds = suffix not in _NO_FD_OR_REMOTE
        #: Frames the format cannot hold and that were therefore not written (CAN FD and remote in .trc).
        self.skipped = 0

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
        if not self._all_kinds and (msg.is_fd or msg.is_remote_frame):
            self.skipped += 1
            return
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


def open_writer(path: str | os.PathLike[str], *, channel: str | None = None, **kwargs: Any) -> RecordingWriter:
    """A recorder for ``path``: a :class:`can.Listener` and context manager.

    Hand it to a :class:`can.Notifier`, or call ``on_message_received`` with each message;
    ``stop()`` (or leaving the ``with`` block) flushes and closes the file. ``channel`` names the
    bus in a candump log for frames that carry no channel of their own (a ``udp_multicast`` bus
    delivers none; python-can's writer would say ``vcan0``). ``kwargs`` go to the python-can writer.
    """
    suffix = log_format(path)
    if channel is not None and suffix == ".log":
        kwargs.setdefault("channel", "_".join(str(channel).split()) or "can")
    try:
        writer = can.Logger(os.fspath(path), **kwargs)
    except OSError as exc:
        raise ConfigError(f"cannot record to {os.fspath(path)!r}: {exc.strerror or exc}") from exc
    # can.Logger returns the concrete writer; every format's writer is a MessageWriter.
    return RecordingWriter(writer, suffix)  # type: ignore[arg-type]


def write_log(path: str | os.PathLike[str], messages: Iterable[can.Message], *, channel: str | None = None) -> int:
    """Write ``messages`` to ``path`` (format by suffix); returns how many were written."""
    count = 0
    with open_writer(path, channel=channel) as writer:
        for msg in messages:
            writer.on_message_received(msg)
            count += 1
    return count - writer.skipped


def _problem(exc: BaseException) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclasses.dataclass
class ReaderNotes:
    """What the log reader complained about while reading: how often, and the first complaint.

    python-can's readers log a warning quoting each record they skip, control characters and
    all, and asammdf prints its own errors; a reader object left half-built by a damaged file
    can raise again when it is collected (``Exception ignored in …`` with a traceback). Each such
    complaint is counted here instead of reaching the terminal.
    """

    count: int = 0
    first: str | None = None

    def add(self, text: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = text[:120]

    def describe(self) -> str:
        """One line for a person (the caller escapes it: the first note quotes the file)."""
        return f"the log reader reported {self.count} problems (first: {self.first})"


class _Collect(logging.Handler):
    def __init__(self, notes: ReaderNotes) -> None:
        super().__init__(logging.INFO)
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format is still one complaint
            text = record.msg if isinstance(record.msg, str) else "?"
        self.notes.add(text)


#: python-can's readers log under can.io.<format>; asammdf (behind .mf4) under asammdf, with a
#: handler of its own that prints to stderr.
_READER_LOGGERS = ("can.io", "asammdf")


@contextlib.contextmanager
def _reader_complaints(notes: ReaderNotes) -> Iterator[None]:
    """While a log is read, the readers' log records and the exceptions their collected objects
    raise (``sys.unraisablehook``) go to ``notes``; what is left of a failed reader is collected
    before the hooks are put back."""
    collect = _Collect(notes)
    saved = []
    for logger_name in _READER_LOGGERS:
        logger = logging.getLogger(logger_name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers[:] = [collect]
        logger.propagate = False
    previous = sys.unraisablehook

    def unraisable(event: Any) -> None:
        notes.add(f"{type(event.exc_value).__name__} while cleaning up after the reader")

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        gc.collect()
        sys.unraisablehook = previous
        for logger, handlers, propagate in saved:
            logger.handlers[:] = handlers
            logger.propagate = propagate


def read_log(
    path: str | os.PathLike[str], *, notes: ReaderNotes | None = None, **kwargs: Any
) -> Iterator[can.Message]:
    """Yield the messages recorded in ``path`` (format by suffix), in file order.

    Raises :class:`~modbatt.errors.ConfigError` for a missing file, an unknown suffix, a file the
    python-can reader cannot parse as its format, a non-empty file with no frame in it, and a
    frame whose timestamp is not a finite time in :data:`~modbatt.transport.busstats.TIMESTAMP_RANGE`.
    The reader's complaints are counted in ``notes`` (:class:`ReaderNotes`; without it, summed up
    in one warning of this module's logger at the end), never printed as the reader words them.
    """
    suffix = log_format(path, "read")
    name = os.fspath(path)
    if not Path(path).is_file():
        raise ConfigError(f"no such log file: {name!r}")
    what = LOG_FORMATS[suffix]
    count = 0
    told = notes if notes is not None else ReaderNotes()
    failure: str | None = None
    with _reader_complaints(told):
        try:
            sqlite = suffix == ".db"
            opened = contextlib.closing(_read_sqlite_log(name, what)) if sqlite else can.LogReader(name, **kwargs)
            with opened as reader:
                for msg in reader:
                    count += 1
                    if not usable_timestamp(msg.timestamp):
                        lo, hi = TIMESTAMP_RANGE
                        raise ConfigError(
                            f"{name!r} is not a usable {what}: frame {count} has timestamp {msg.timestamp!r}, "
                            f"not a finite time in {lo:g}-{hi:g} s"
                        )
                    yield msg
        except ConfigError:
            raise
        except Exception as exc:  # python-can's readers raise assorted errors on damaged or foreign files
            # Raised below, once the reader's half-built objects are gone (with their complaints).
            failure = f"cannot read {name!r} as a {what}: {_problem(exc)}"
    if failure is not None:
        raise ConfigError(failure)
    if notes is None and told.count:
        _log.warning("%s: the log reader reported %d problems", name, told.count)
    if count == 0 and suffix == ".asc" and not _asc_header(Path(path)):
        # python-can's ASC reader skips every line it does not know: a foreign file reads as empty.
        raise ConfigError(f"cannot read {name!r} as a {what}: no 'date' header and no frame")


#: python-can's ``messages`` table (can.io.sqlite.SqliteWriter): column names and declared types, in order.
_SQLITE_COLUMNS = (
    ("ts", "REAL"), ("arbitration_id", "INTEGER"), ("extended", "INTEGER"), ("remote", "INTEGER"),
    ("error", "INTEGER"), ("dlc", "INTEGER"), ("data", "BLOB"),
)  # fmt: skip
#: Largest value a log row holds (64 data bytes); SQLite refuses to build or return anything longer.
_SQLITE_MAX_VALUE = 1024
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _read_sqlite_log(name: str, what: str) -> Iterator[can.Message]:
    """The frames of a python-can SQLite log, read as untrusted input (see the module notes)."""
    import sqlite3

    from ..ledger.schema import connect

    with open(name, "rb") as fh:
        if fh.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
            raise ConfigError(f"cannot read {name!r} as a {what}: not an SQLite database")
    try:
        conn = connect(name, read_only=True, max_value_bytes=_SQLITE_MAX_VALUE)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read {name!r} as a {what}: {exc}") from None
    try:
        kind = conn.execute("SELECT type FROM sqlite_master WHERE name = 'messages'").fetchone()
        if kind is None or kind[0] != "table":
            raise ConfigError(f"cannot read {name!r} as a {what}: no table 'messages'")
        # table_xinfo also lists generated (hidden) columns; each must be python-can's, plain.
        columns = [(row[1], str(row[2]).upper(), row[6]) for row in conn.execute("PRAGMA table_xinfo(messages)")]
        if columns != [(c, t, 0) for c, t in _SQLITE_COLUMNS]:
            raise ConfigError(f"cannot read {name!r} as a {what}: table 'messages' does not have python-can's columns")
        rows = conn.execute(f"SELECT {', '.join(c for c, _ in _SQLITE_COLUMNS)} FROM messages ORDER BY rowid")
        for n, row in enumerate(rows, 1):
            yield _sqlite_frame(row, n, name, what)
    except sqlite3.DataError:
        raise ConfigError(f"cannot read {name!r} as a {what}: a value exceeds {_SQLITE_MAX_VALUE} bytes") from None
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read {name!r} as a {what}: {exc}") from None
    finally:
        conn.close()


def _sqlite_frame(row: tuple[Any, ...], n: int, name: str, what: str) -> can.Message:
    ts, can_id, extended, remote, error, dlc, data = row

    def bad(field: str) -> ConfigError:
        return ConfigError(f"cannot read {name!r} as a {what}: row {n} has an unusable {field}")

    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise bad("timestamp")
    if not isinstance(can_id, int) or not 0 <= can_id <= EXTENDED_ID_MAX:
        raise bad("arbitration_id")
    if any(not isinstance(flag, int) or flag not in (0, 1) for flag in (extended, remote, error)):
        raise bad("flag (extended, remote or error)")
    if not isinstance(dlc, int) or not 0 <= dlc <= 64:
        raise bad("dlc")
    if data is not None and (not isinstance(data, bytes) or len(data) > 64):
        raise bad("data")
    return can.Message(
        timestamp=float(ts), arbitration_id=can_id, is_extended_id=bool(extended), is_remote_frame=bool(remote),
        is_error_frame=bool(error), dlc=dlc, data=data or b"",
    )  # fmt: skip


def _asc_header(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(256).lstrip()
    return not head or head.lower().startswith(b"date ")
