"""The bus monitor behind ``modbatt monitor``: decode, count and summarise frames.

A :class:`Monitor` turns each :class:`can.Message` into a :class:`FrameReport`: the 29-bit ID
split by an ID layout of :mod:`modbatt.can.ids` (encryption flag, level/tier, function, node; or
"malformed: …" — a monitor shows bad frames, it never stops on them), signals from any cantools
database whose message matches, and, given an entity key store, the plaintext through a
:class:`Decryptor`. It keeps per-ID statistics (count, Δt, rate, changed bytes — the
can.viewer / cansniffer / SavvyCAN "overwrite" view, in plain text) and the bus load from
:mod:`modbatt.can.wiretime` bit counts.

:func:`run_monitor` drives a monitor from a live bus or from a recorded log, optionally recording
what it sees, until a frame count, a duration or Ctrl-C. Everything a person sees is produced
here so that notebooks and tests reach the same output as the command line.

The layer-3 modules are imported lazily: the monitor degrades to raw frames if an ID layout,
database or wire-time model is not available, instead of failing to start.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import importlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import can

from ..errors import ConfigError, VerificationError

__all__ = [
    "BuiltinDatabases",
    "Decryptor",
    "FrameReport",
    "IdStats",
    "Monitor",
    "MonitorSummary",
    "describe_error_frame",
    "filter_matches",
    "load_databases",
    "parse_filters",
    "resolve_layout",
    "run_monitor",
]

#: Bit rate assumed for bus load when neither the bus nor the user gives one (ModBatt CAN 1).
DEFAULT_LOAD_BITRATE = 500_000


@runtime_checkable
class Decryptor(Protocol):
    """Hook for showing encrypted payloads in clear (``--keystore``).

    :class:`modbatt.nodes.monitor_keys.KeyStoreDecryptor` implements it from an entity's key
    store (its pairings' secrets and binding keys). An implementation receives every frame whose
    ID carries the encryption flag, with the decoded ID fields of the monitor's layout, and

    * returns the plaintext payload (bytes) when it holds the key and the frame verifies,
    * returns ``None`` when it has no key for this frame (shown as ``encrypted``),
    * raises :class:`~modbatt.errors.VerificationError` when a key is held but the frame fails
      (bad MAC, stale freshness …); the monitor shows the reason and goes on.

    It must not keep state that a replayed or forged frame could corrupt: a monitor observes,
    it does not take part in freshness tracking.
    """

    def decrypt(self, msg: can.Message, id_fields: Any) -> bytes | None: ...


@dataclass
class FrameReport:
    """What the monitor learned about one frame."""

    msg: can.Message
    id_text: str  # e.g. "enc=1 tier=pairing fn=0x12 node=0x05", "11-bit" or "malformed: …"
    id_fields: Any = None  # the layout's CanIdFields, None if not decoded
    malformed: str | None = None
    message_name: str | None = None
    signals: Mapping[str, Any] | None = None
    signal_error: str | None = None
    plaintext: bytes | None = None
    decrypt_note: str | None = None
    wire_seconds: float | None = None  # time on the wire per the wire-time model


@dataclass
class IdStats:
    """Per-ID statistics for the one-line-per-ID view."""

    arbitration_id: int
    is_extended_id: bool
    count: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    last_dt: float | None = None
    data: bytes = b""
    changed: tuple[int, ...] = ()
    id_text: str = ""
    name: str | None = None

    @property
    def rate(self) -> float | None:
        """Mean frames per second over this ID's lifetime (None before two frames)."""
        span = self.last_ts - self.first_ts
        return (self.count - 1) / span if self.count > 1 and span > 0 else None


@dataclass
class MonitorSummary:
    """Totals over everything observed."""

    frames: int
    duration: float
    frames_per_s: float | None
    ids: int
    malformed: int
    error_frames: int
    bitrate: int
    bitrate_assumed: bool  # True when no bit rate was given and DEFAULT_LOAD_BITRATE was used
    load_percent: float | None  # None when no wire-time model is available
    peak_load_percent: float | None  # busiest whole second (bucketed by timestamp)
    no_model: bool = False  # load is None because modbatt.can.wiretime is unavailable
    #: Live bus only: input that was no frame (a foreign datagram, a garbled adapter line), dropped
    #: by the adapter or the receive loop; None for a log or an adapter that does not count it.
    input_dropped: int | None = None

    def format(self) -> str:
        fps = f"{self.frames_per_s:.1f} frames/s" if self.frames_per_s is not None else "- frames/s"
        text = f"{self.frames} frames in {self.duration:.3f} s ({fps}), {self.ids} IDs"
        if self.load_percent is None:
            why = "no wire-time model" if self.no_model else "needs 2 frames over a time span"
            text += f"; bus load n/a ({why})"
        else:
            assumed = " assumed" if self.bitrate_assumed else ""
            text += f"; bus load {self.load_percent:.2f} % of {self.bitrate / 1000:g} kbit/s{assumed}"
            if self.peak_load_percent is not None:
                text += f", peak 1 s {self.peak_load_percent:.2f} %"
            text += " (worst-case stuffing)"
        text += f"; malformed IDs: {self.malformed}; error frames: {self.error_frames}"
        if self.input_dropped is not None:
            text += f"; undecodable input dropped: {self.input_dropped}"
        return text


def _optional_module(name: str) -> Any:
    """Import a modbatt layer-3 module if it exists (it may be built later than the monitor)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name == name:
            return None
        raise


def resolve_layout(name: str | None) -> Any:
    """The :mod:`modbatt.can.ids` layout called ``name`` (the seed layout when ``None``).

    Returns ``None`` when no ID layouts are available and none was asked for by name.
    """
    ids = _optional_module("modbatt.can.ids")
    if ids is None:
        if name is not None:
            raise ConfigError(f"ID layout {name!r} unavailable: modbatt.can.ids is not installed")
        return None
    if name is None:
        return ids.SEED_LAYOUT
    layouts: Mapping[str, Any] = ids.LAYOUTS
    if name not in layouts:
        raise ConfigError(f"unknown ID layout {name!r}; choose one of: {', '.join(sorted(layouts))}")
    return layouts[name]


def load_databases(paths: Sequence[str | os.PathLike[str]] = ()) -> list[Any]:
    """cantools databases from files (DBC, KCD, SYM, ARXML …), for exact-ID signal decoding."""
    import cantools.database  # deferred: only needed when a monitor decodes signals

    databases: list[Any] = []
    for path in paths:
        try:
            databases.append(cantools.database.load_file(os.fspath(path)))
        except FileNotFoundError as exc:
            raise ConfigError(f"no such database file: {os.fspath(path)!r}") from exc
        except Exception as exc:  # cantools raises many parser-specific types
            raise ConfigError(f"cannot load database {os.fspath(path)!r}: {exc}") from exc
    return databases


@functools.cache
def _built_database(key: str) -> Any:
    """Build one of modbatt's own databases once per process (the FD one takes seconds)."""
    if key == "legacy":
        return importlib.import_module("modbatt.can.catalog").build_legacy_database()
    dbc = importlib.import_module("modbatt.can.dbc")
    if key == "secure-fd":
        return dbc.build_secure_database(profile=importlib.import_module("modbatt.can.wiretime").FD)
    return dbc.build_secure_database()


class BuiltinDatabases:
    """modbatt's own databases, matched by decoded ID fields rather than by exact ID.

    A DBC holds one concrete ID per message, so :mod:`modbatt.can.dbc` writes the secured
    protocol for one module (``node`` 0x01, each function at its priority) and :mod:`modbatt.can.catalog` the
    legacy buses for pack 0 / module 0x01. Node and priority do not change a frame's data
    layout, so a frame decoded by the layout is looked up with its node (and priority)
    replaced by the database's: any module's frames decode. Which database applies follows
    the layout: the secured protocol's for ``seed`` (classic or FD by the frame), the legacy
    catalog's for ``legacy-*``; 11-bit frames always try the legacy app bus (no secured
    layout uses 11-bit IDs).

    Databases are built on first need and cached per process: building the FD view of the
    secured protocol takes seconds (cantools' multiplexer checks), and a capture without FD
    frames should not pay for it. One that cannot be built is left out, reported once
    through ``on_problem`` and listed in :attr:`problems`; the monitor runs on without it.
    """

    def __init__(self, layout: Any, on_problem: Callable[[str], None] | None = None) -> None:
        self.layout = layout
        self.problems: list[str] = []
        self._on_problem = on_problem
        self._failed: set[str] = set()
        catalog = _optional_module("modbatt.can.catalog")
        self._node = getattr(catalog, "DBC_MODULE_ID", 0x01)
        self._pack = getattr(catalog, "DBC_PACK_ID", 0)
        name = getattr(layout, "name", "") or ""
        self._secure = name == "seed" and _optional_module("modbatt.can.dbc") is not None
        self._legacy = catalog is not None

    def prepare(self, *, fd: bool = False) -> None:
        """Build now what a live bus will need, so the first frames are not held up.

        A live monitor calls this before opening the bus: a multicast socket that is not read
        for the seconds a build takes overflows and loses frames.
        """
        if self._legacy:
            self._get("legacy")
        if self._secure:
            self._get("secure")
            if fd:
                self._get("secure-fd")

    def _get(self, key: str) -> Any:
        if key in self._failed:
            return None
        try:
            return _built_database(key)
        except Exception as exc:  # a database is an aid: the monitor runs without it
            self._failed.add(key)
            problem = f"built-in {key} database unavailable: {type(exc).__name__}: {exc}"
            self.problems.append(problem)
            if self._on_problem is not None:
                self._on_problem(problem)
            return None

    def lookup(self, msg: can.Message, fields: Any) -> Any:
        """The cantools message describing ``msg`` (None if no built-in database has one)."""
        if not msg.is_extended_id:
            if not self._legacy:
                return None
            if getattr(self.layout, "id_bits", 29) == 11 and fields is not None:
                can_id = self._normalise(fields, self._pack)
            else:
                can_id = msg.arbitration_id
            return _find(self._get("legacy"), can_id, extended=False)
        if fields is None:
            return None
        name = getattr(self.layout, "name", "") or ""
        if name == "seed" and self._secure:
            db = self._get("secure-fd" if msg.is_fd else "secure")
        elif name.startswith("legacy") and self._legacy:
            db = self._get("legacy")
        else:
            return None
        return _find(db, self._normalise(fields, self._node), extended=True)

    def _normalise(self, fields: Any, node: int) -> int | None:
        replace: dict[str, int] = {"node": node}
        if hasattr(fields, "priority"):
            # The built-in secure database holds each function at its own priority.
            functions = _optional_module("modbatt.can.functions")
            spec = functions.FUNCTIONS.get(getattr(fields, "function", None)) if functions is not None else None
            replace["priority"] = spec.priority if spec is not None else 0
        try:
            return int(self.layout.encode(dataclasses.replace(fields, **replace)))
        except (ValueError, TypeError, VerificationError):
            return None


def _find(db: Any, can_id: int | None, *, extended: bool) -> Any:
    if db is None or can_id is None:
        return None
    try:
        message = db.get_message_by_frame_id(can_id, force_extended_id=extended)
    except KeyError:
        return None
    return message if bool(message.is_extended_frame) == extended else None


def _format_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, enum.Enum):
        label = getattr(value, "label", None)
        return str(label) if isinstance(label, str) else value.name.lower()
    if isinstance(value, int) and name in ("function", "node"):
        return f"0x{value:02X}"
    return "-" if value is None else str(value)


def format_id_fields(
    fields: Any,
    function_names: Mapping[int, Any] | None = None,
    present: Iterable[str] | None = None,
) -> str:
    """A decoded ID in a few words.

    For :class:`modbatt.can.ids.CanIdFields`: ``flag=1 pairing fn=0x40(VOLTAGE) node=0x05 prio=3
    dir=1`` (flag = encryption flag, then the level/tier; ``tier=-`` when the layout does not
    carry it; the function's name when ``function_names`` knows the code). ``present`` names
    the fields the layout really has, so that defaults of absent ones (``dir`` in the J1939
    layout) are not shown as if read from the wire.
    Any other dataclass / NamedTuple / object is shown as ``name=value`` pairs.
    """
    if all(hasattr(fields, a) for a in ("tier", "function", "node")):
        tier = fields.tier
        head = "tier=-" if tier is None else f"flag={int(_is_encrypted(fields))} {_format_value('tier', tier)}"
        fn = _format_value("function", fields.function)
        known = (function_names or {}).get(fields.function)
        if known is not None:
            fn += f"({getattr(known, 'name', known)})"
        text = f"{head} fn={fn} node={_format_value('node', fields.node)}"
        shown = None if present is None else set(present)
        for attr, short in (("priority", "prio"), ("direction", "dir")):
            value = getattr(fields, attr, None)
            if value is not None and (shown is None or attr in shown):
                text += f" {short}={value}"
        return text
    if dataclasses.is_dataclass(fields) and not isinstance(fields, type):
        items = [(f.name, getattr(fields, f.name)) for f in dataclasses.fields(fields)]
    elif hasattr(fields, "_asdict"):
        items = list(fields._asdict().items())
    else:
        items = [(k, v) for k, v in vars(fields).items() if not k.startswith("_")]
    return " ".join(f"{name}={_format_value(name, value)}" for name, value in items)


def _is_encrypted(fields: Any) -> bool:
    for attr in ("encrypted", "flag", "encryption_flag", "is_encrypted"):
        value = getattr(fields, attr, None)
        if value is not None:
            return bool(value)
    return False


def _format_signal(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class Monitor:
    """Decodes frames and keeps statistics; no I/O (see :func:`run_monitor`).

    :param layout: an :mod:`modbatt.can.ids` layout object, a layout name, or ``None`` for the
        seed layout (raw IDs if no layouts are available).
    :param databases: cantools databases tried in order for signal decoding (exact ID match);
        they win over the built-in ones.
    :param builtin_databases: also decode with modbatt's own databases (:class:`BuiltinDatabases`).
    :param on_problem: told (once each) about a built-in database that cannot be built.
    :param decryptor: optional :class:`Decryptor` for encrypted frames.
    :param bitrate: nominal bit rate for bus load (default 500 kbit/s, stated in the summary).
    :param data_bitrate: CAN FD data-phase rate for FD frames with BRS.
    """

    def __init__(
        self,
        layout: Any = None,
        databases: Sequence[Any] = (),
        decryptor: Decryptor | None = None,
        *,
        builtin_databases: bool = False,
        on_problem: Callable[[str], None] | None = None,
        bitrate: int | None = None,
        data_bitrate: int | None = None,
    ) -> None:
        self.layout = resolve_layout(layout) if layout is None or isinstance(layout, str) else layout
        self.databases = list(databases)
        self.builtin = BuiltinDatabases(self.layout, on_problem) if builtin_databases else None
        if decryptor is not None and not isinstance(decryptor, Decryptor):
            raise ConfigError("decryptor must implement decrypt(msg, id_fields)")
        self.decryptor = decryptor
        self.bitrate = bitrate or DEFAULT_LOAD_BITRATE
        self.bitrate_assumed = not bitrate
        self.data_bitrate = data_bitrate
        self._wiretime = _optional_module("modbatt.can.wiretime")
        # Function names are defined for the seed layout's function field only.
        functions = _optional_module("modbatt.can.functions")
        self._function_names: Mapping[int, Any] | None = (
            functions.FUNCTIONS if functions is not None and getattr(self.layout, "name", None) == "seed" else None
        )
        layout_fields = getattr(self.layout, "fields", None)
        self._layout_fields: tuple[str, ...] | None = (
            tuple(getattr(f, "name", "") for f in layout_fields) if layout_fields is not None else None
        )
        self.per_id: dict[tuple[int, bool], IdStats] = {}
        self.frames = 0
        self.malformed = 0
        self.error_frames = 0
        self.unsized = 0  # frames left out of the bus load (error frames, impossible lengths)
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self._wire_seconds = 0.0
        self._wire_known = self._wiretime is not None
        self._seconds_buckets: dict[int, float] = {}

    # -- decoding --------------------------------------------------------------------------

    def decode(self, msg: can.Message) -> FrameReport:
        """Everything the monitor shows about ``msg``; never raises on a bad frame."""
        if msg.is_error_frame:
            return FrameReport(msg, id_text="error frame")
        report = FrameReport(msg, id_text="")
        width = 29 if msg.is_extended_id else 11
        layout_bits = getattr(self.layout, "id_bits", 29)
        if self.layout is None:
            report.id_text = "(no ID layout)"
        elif width != layout_bits:
            # Not an error of the frame: this layout describes the other ID width.
            report.id_text = f"{width}-bit ID (layout {getattr(self.layout, 'name', '?')} is {layout_bits}-bit)"
        else:
            try:
                report.id_fields = self.layout.decode(msg.arbitration_id)
                report.id_text = format_id_fields(report.id_fields, self._function_names, self._layout_fields)
            except VerificationError as exc:
                report.malformed = exc.detail or str(exc)
                report.id_text = f"malformed: {report.malformed}"
            except (ValueError, TypeError) as exc:  # a layout's own argument checks
                report.malformed = str(exc)
                report.id_text = f"malformed: {report.malformed}"
        if report.id_fields is not None and self.decryptor is not None and _is_encrypted(report.id_fields):
            try:
                report.plaintext = self.decryptor.decrypt(msg, report.id_fields)
                report.decrypt_note = None if report.plaintext is not None else "encrypted (no key)"
            except VerificationError as exc:
                report.decrypt_note = f"decrypt failed: {exc}"
        self._decode_signals(msg, report)
        return report

    def _decode_signals(self, msg: can.Message, report: FrameReport) -> None:
        if msg.is_remote_frame:
            return
        message = None
        for db in self.databases:
            message = _find(db, msg.arbitration_id, extended=bool(msg.is_extended_id))
            if message is not None:
                break
        if message is None and self.builtin is not None:
            message = self.builtin.lookup(msg, report.id_fields)
        if message is None:
            return
        report.message_name = message.name
        try:
            report.signals = message.decode(bytes(msg.data), decode_choices=True, scaling=True, allow_truncated=True)
        except Exception as exc:  # cantools DecodeError and friends: show, don't stop
            report.signal_error = str(exc)

    def _wire_seconds_of(self, msg: can.Message) -> float | None:
        """Seconds ``msg`` occupies the bus: :mod:`modbatt.can.wiretime` bit counts, worst-case
        stuffing, at this monitor's rates. None when no model is available; ValueError for a
        frame the model cannot size (error frames, classic DLC > 8)."""
        wt = self._wiretime
        if wt is None:
            return None
        if msg.is_error_frame:
            raise ValueError("error frames are not modelled")
        n = 0 if msg.is_remote_frame else len(msg.data)
        if msg.is_fd:
            bits = wt.fd_frame_bits(n, extended=msg.is_extended_id)
            # BRS with an unknown data rate: count the data phase at the nominal rate (an upper bound).
            data_rate = self.data_bitrate if msg.bitrate_switch and self.data_bitrate else self.bitrate
            return float(bits.nominal_worst / self.bitrate + bits.data_worst / data_rate)
        bits = wt.classic_frame_bits(n, extended=msg.is_extended_id)
        return float(bits.worst / self.bitrate)

    # -- statistics ------------------------------------------------------------------------

    def observe(self, msg: can.Message) -> FrameReport:
        """Decode ``msg`` and count it."""
        report = self.decode(msg)
        ts = float(msg.timestamp)
        self.frames += 1
        if self.first_ts is None:
            self.first_ts = ts
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if msg.is_error_frame:
            self.error_frames += 1
        if report.malformed is not None:
            self.malformed += 1
        if self._wire_known:
            try:
                seconds = self._wire_seconds_of(msg)
            except ValueError:  # error frame or impossible length: not in the load figure
                self.unsized += 1
                seconds = 0.0
            if seconds is None:
                self._wire_known = False
            else:
                report.wire_seconds = seconds
                self._wire_seconds += seconds
                bucket = math.floor(ts)
                self._seconds_buckets[bucket] = self._seconds_buckets.get(bucket, 0.0) + seconds
        if not msg.is_error_frame:
            key = (msg.arbitration_id, bool(msg.is_extended_id))
            stats = self.per_id.get(key)
            data = bytes(msg.data)
            if stats is None:
                stats = self.per_id[key] = IdStats(key[0], key[1], first_ts=ts, last_ts=ts, data=data)
            else:
                stats.last_dt = ts - stats.last_ts
                stats.changed = tuple(
                    i
                    for i in range(max(len(data), len(stats.data)))
                    if i >= len(data) or i >= len(stats.data) or data[i] != stats.data[i]
                )
                stats.last_ts = ts
                stats.data = data
            stats.count += 1
            stats.id_text = report.id_text
            stats.name = report.message_name
        return report

    def summary(self) -> MonitorSummary:
        duration = 0.0
        if self.first_ts is not None and self.last_ts is not None:
            duration = self.last_ts - self.first_ts
        fps = (self.frames - 1) / duration if self.frames > 1 and duration > 0 else None
        load = peak = None
        if self._wire_known and self.frames > 1 and duration > 0:
            # Over the observed span. Above 100 % means a real bus at this rate could not have
            # carried the traffic (the virtual and UDP buses are not rate limited).
            load = 100.0 * self._wire_seconds / duration
            full = [s for b, s in self._seconds_buckets.items() if self.first_ts <= b and b + 1 <= self.last_ts]
            peak = 100.0 * max(full) if full else None
        return MonitorSummary(
            frames=self.frames,
            duration=duration,
            frames_per_s=fps,
            ids=len(self.per_id),
            malformed=self.malformed,
            error_frames=self.error_frames,
            bitrate=self.bitrate,
            bitrate_assumed=self.bitrate_assumed,
            load_percent=load,
            peak_load_percent=peak,
            no_model=not self._wire_known,
        )

    # -- text ------------------------------------------------------------------------------

    @staticmethod
    def format_id(arbitration_id: int, is_extended_id: bool) -> str:
        return f"{arbitration_id:08X}" if is_extended_id else f"{arbitration_id:03X}     "

    def format_frame(self, report: FrameReport) -> str:
        """One trace line: time, ID, decoded ID, DLC and flags, data, signals."""
        msg = report.msg
        flags = "".join(
            letter for letter, on in (("R", msg.is_remote_frame), ("F", msg.is_fd), ("B", msg.bitrate_switch)) if on
        )
        dlc = f"[{msg.dlc}]{flags:<2}"
        data = bytes(msg.data).hex(" ").upper() if not msg.is_remote_frame else "(remote)"
        line = (
            f"{msg.timestamp:17.6f}  {self.format_id(msg.arbitration_id, msg.is_extended_id)}  "
            f"{report.id_text:<58}  {dlc:<6} {data}"
        )
        if msg.is_error_frame:
            line = (
                f"{msg.timestamp:17.6f}  ERROR FRAME {msg.arbitration_id:08X}  "
                f"{describe_error_frame(msg):<44}  [{msg.dlc}] {data}"
            )
        if report.decrypt_note:
            line += f"  | {report.decrypt_note}"
        elif report.plaintext is not None:
            line += f"  | plain {report.plaintext.hex(' ').upper()}"
        if report.message_name is not None:
            if report.signal_error is not None:
                line += f"  | {report.message_name}: cannot decode: {report.signal_error}"
            else:
                sigs = ", ".join(f"{k}={_format_signal(v)}" for k, v in (report.signals or {}).items())
                line += f"  | {report.message_name}: {sigs}"
        return line

    def format_per_id(self) -> list[str]:
        """The one-line-per-ID table (sorted by ID); ``*`` marks bytes changed by the last frame."""
        header = f"{'ID':<8}  {'count':>7}  {'Δt ms':>9}  {'rate/s':>8}  {'DLC':>3}  {'data':<31}  decoded"
        lines = [header]
        for key in sorted(self.per_id):
            s = self.per_id[key]
            dt = f"{s.last_dt * 1000:9.3f}" if s.last_dt is not None else f"{'-':>9}"
            rate = f"{s.rate:8.1f}" if s.rate is not None else f"{'-':>8}"
            data = " ".join(f"{b:02X}" + ("*" if i in s.changed else "") for i, b in enumerate(s.data))
            shown = s.id_text + (f" {s.name}" if s.name else "")
            lines.append(
                f"{self.format_id(s.arbitration_id, s.is_extended_id):<8}  {s.count:>7}  {dt}  {rate}  "
                f"{len(s.data):>3}  {data:<31}  {shown}"
            )
        return lines


#: Error classes in an error frame's ID (Linux ``include/uapi/linux/can/error.h``, which
#: python-can's socketcan, candump logs and most backends follow).
ERROR_CLASSES = (
    (0x001, "tx-timeout"),
    (0x002, "lost-arbitration"),
    (0x004, "controller"),
    (0x008, "protocol-violation"),
    (0x010, "transceiver"),
    (0x020, "no-ack"),
    (0x040, "bus-off"),
    (0x080, "bus-error"),
    (0x100, "restarted"),
    (0x200, "counters"),
)


def describe_error_frame(msg: can.Message) -> str:
    """The error classes an error frame's ID announces, like ``candump -e`` (``?`` if none)."""
    classes = [name for bit, name in ERROR_CLASSES if msg.arbitration_id & bit]
    return ",".join(classes) if classes else "?"


def parse_filters(specs: Iterable[str]) -> list[dict[str, Any]]:
    """python-can filters from ``ID:MASK`` (match) or ``ID~MASK`` (match the inverse) strings.

    Hex, as in ``can.logger --filter``; ``ID`` alone means an exact match. A frame passes when
    any filter matches; IDs above 0x7FF match extended frames only.
    """
    filters: list[dict[str, Any]] = []
    for spec in specs:
        text = spec.strip()
        invert = "~" in text
        can_id_text, _, mask_text = text.partition("~" if invert else ":")
        try:
            can_id = int(can_id_text, 16)
            mask = int(mask_text, 16) if mask_text else 0x1FFFFFFF
        except ValueError:
            raise ConfigError(f"bad filter {spec!r}: use hex ID:MASK, ID~MASK or ID") from None
        if not (0 <= can_id <= 0x1FFFFFFF and 0 <= mask <= 0x1FFFFFFF):
            raise ConfigError(f"bad filter {spec!r}: ID and mask are at most 29 bits")
        filters.append({"can_id": can_id, "can_mask": mask, "invert": invert})
    return filters


def filter_matches(msg: can.Message, filters: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``msg`` passes ``filters`` (see :func:`parse_filters`; no filters pass all)."""
    if not filters:
        return True
    for f in filters:
        hit = (msg.arbitration_id & f["can_mask"]) == (f["can_id"] & f["can_mask"])
        if f["can_id"] > 0x7FF and not msg.is_extended_id:
            hit = False
        if hit != f.get("invert", False):
            return True
    return False


def _messages_from_bus(
    bus: can.BusABC, deadline: Callable[[], float | None], dropped: collections.Counter[str]
) -> Iterator[can.Message | None]:
    """Frames from ``bus``; yields ``None`` on idle so the caller can refresh and check stops.

    A backend that raises for input it cannot decode (not for a failed device: that error is
    chained from an ``OSError`` and ends the monitor) costs one count in ``dropped``, not the run.
    """
    while True:
        left = deadline()
        if left is not None and left <= 0:
            return
        timeout = 0.2 if left is None else min(0.2, left)
        try:
            yield bus.recv(timeout=timeout)
        except can.CanOperationError as exc:
            if isinstance(exc.__cause__, OSError):
                raise
            dropped["input"] += 1
            yield None


def run_monitor(
    monitor: Monitor,
    source: can.BusABC | Iterable[can.Message],
    write: Callable[[str], None],
    *,
    per_id: bool = False,
    count: int | None = None,
    duration: float | None = None,
    recorder: can.Listener | None = None,
    refresh: float = 1.0,
    filters: Sequence[Mapping[str, Any]] = (),
    clock: Callable[[], float] = time.monotonic,
) -> MonitorSummary:
    """Feed ``monitor`` from a bus or a message iterable and write lines through ``write``.

    Stops after ``count`` frames, after ``duration`` seconds (wall clock on a bus, frame
    timestamps in a log), at the end of a log, or on Ctrl-C. With ``per_id`` the per-ID table is
    written every ``refresh`` seconds (live bus only) and at the end; otherwise one line per
    frame. ``recorder`` (e.g. :func:`modbatt.transport.recording.open_writer`) receives every
    frame seen; the caller stops it. ``filters`` (:func:`parse_filters`) drop other frames
    before anything else sees them; error frames always pass. Returns the summary (also
    written as the last line).
    """
    if count is not None and count <= 0:
        raise ConfigError("--count must be a positive number of frames")
    if duration is not None and duration <= 0:
        raise ConfigError("--duration must be a positive number of seconds")
    live = isinstance(source, can.BusABC)
    dropped: collections.Counter[str] = collections.Counter()
    start = clock()
    if live:
        assert isinstance(source, can.BusABC)
        stop_at = None if duration is None else start + duration
        frames: Iterable[can.Message | None] = _messages_from_bus(
            source, lambda: None if stop_at is None else stop_at - clock(), dropped
        )
    else:
        frames = source  # type: ignore[assignment]
    next_refresh = start + refresh
    seen = 0
    first_log_ts: float | None = None
    try:
        for msg in frames:
            if msg is not None and not msg.is_error_frame and not filter_matches(msg, filters):
                msg = None  # filtered out; still refresh and check the stop conditions
            if msg is not None:
                if not live and duration is not None:
                    if first_log_ts is None:
                        first_log_ts = msg.timestamp
                    elif msg.timestamp - first_log_ts > duration:
                        break
                report = monitor.observe(msg)
                if recorder is not None:
                    recorder.on_message_received(msg)
                seen += 1
                if not per_id:
                    write(monitor.format_frame(report))
            if live and per_id and clock() >= next_refresh:
                next_refresh = clock() + refresh
                for line in monitor.format_per_id():
                    write(line)
                write("")
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person ends a live monitor: still print what was seen
    if per_id:
        for line in monitor.format_per_id():
            write(line)
    summary = monitor.summary()
    if live:
        assert isinstance(source, can.BusABC)
        adapter = getattr(source, "malformed", None)
        if isinstance(adapter, int) or dropped:
            summary = dataclasses.replace(summary, input_dropped=(adapter or 0) + dropped["input"])
    write(summary.format())
    return summary
