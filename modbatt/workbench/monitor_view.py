"""The text of ``modbatt monitor``: trace lines, the per-ID table, the summary.

Views for :func:`modbatt.transport.monitor.run_monitor`: :class:`TraceView` writes one line per
frame (and the per-ID table as plain lines), :class:`LiveTableView` keeps the per-ID table on a
terminal and redraws it in place. Every line goes through
:func:`~modbatt.workbench.terminal.escape` before it is written: names, choice strings, units and
error texts come from DBC files, logs and the bus.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

import can

from ..can.functions import FUNCTIONS
from ..transport.busstats import MIN_LOAD_WINDOW_S, MonitorSummary
from ..transport.decoding import FrameReport, UnitReport
from ..transport.monitor import Monitor, describe_error_frame
from .terminal import Screen, escape

__all__ = [
    "LiveTableView",
    "TraceView",
    "format_frame",
    "format_id_fields",
    "format_per_id",
    "format_summary",
    "format_unit",
]


def _format_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, enum.Enum):
        label = getattr(value, "label", None)
        return str(label) if isinstance(label, str) else value.name.lower()
    if isinstance(value, int) and name in ("function", "node"):
        return f"0x{value:02X}"
    return "-" if value is None else str(value)


def format_id_fields(fields: Any, layout_fields: Iterable[str] | None = None, *, seed: bool = True) -> str:
    """A decoded identifier in a few words: ``flag=1 pairing fn=0x40(VOLTAGE) node=0x05 prio=3 dir=1``.

    ``layout_fields`` names the fields the layout really has, so defaults of absent ones (``dir``
    in the J1939 layout) are not shown as if read from the wire; function names are the seed
    layout's (``seed``).
    """
    tier = fields.tier
    head = "tier=-" if tier is None else f"flag={int(fields.encrypted)} {_format_value('tier', tier)}"
    fn = _format_value("function", fields.function)
    known = FUNCTIONS.get(fields.function) if seed else None
    if known is not None:
        fn += f"({known.name})"
    text = f"{head} fn={fn} node={_format_value('node', fields.node)}"
    shown = None if layout_fields is None else set(layout_fields)
    for attr, short in (("priority", "prio"), ("direction", "dir")):
        if shown is None or attr in shown:
            text += f" {short}={getattr(fields, attr)}"
    return text


def _id_text(monitor: Monitor, msg: can.Message, fields: Any, malformed: str | None) -> str:
    if msg.is_error_frame:
        return "error frame"
    layout = monitor.layout
    width = 29 if msg.is_extended_id else 11
    if width != layout.id_bits:
        return f"{width}-bit ID (layout {layout.name} is {layout.id_bits}-bit)"
    if malformed is not None:
        return f"malformed: {malformed}"
    if fields is None:
        return "-"
    return format_id_fields(fields, monitor.decoder.layout_fields, seed=layout.name == "seed")


def _format_signal(value: Any, unit: str | None = None) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return f"{text} {unit}" if unit and isinstance(value, (int, float)) and not isinstance(value, bool) else text


def _signals(signals: Mapping[str, Any], units: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={_format_signal(v, units.get(k))}" for k, v in signals.items())


def format_id(arbitration_id: int, is_extended_id: bool) -> str:
    return f"{arbitration_id:08X}" if is_extended_id else f"{arbitration_id:03X}     "


def format_unit(unit: UnitReport) -> str:
    """What a complete unit says: its size and transport, then its cleartext (or why there is none)."""
    text = f"unit {len(unit.data)} B"
    if unit.transport.value != "single_frame":
        text += f" ({unit.transport.value})"
    if unit.decrypt_note:
        return f"{text}: {unit.decrypt_note}"
    if unit.plaintext is None:
        return text
    text += f": plain {unit.plaintext.hex(' ').upper()}"
    if unit.plain_name is not None:
        if unit.plain_error is not None:
            text += f" | {unit.plain_name}: cannot decode: {unit.plain_error}"
        elif unit.plain_signals is not None:
            text += f" | {unit.plain_name}: {_signals(unit.plain_signals, unit.plain_units)}"
    return text


def format_frame(monitor: Monitor, report: FrameReport) -> str:
    """One trace line: time, ID, decoded ID, DLC and flags, data, signals, completed units (escaped)."""
    msg = report.msg
    flags = "".join(
        letter for letter, on in (("R", msg.is_remote_frame), ("F", msg.is_fd), ("B", msg.bitrate_switch)) if on
    )
    dlc = f"[{msg.dlc}]{flags:<2}"
    data = bytes(msg.data).hex(" ").upper() if not msg.is_remote_frame else "(remote)"
    stamp = f"{msg.timestamp:17.6f}"
    if msg.is_error_frame:
        line = f"{stamp}  ERROR FRAME {msg.arbitration_id:08X}  {describe_error_frame(msg):<44}  [{msg.dlc}] {data}"
    else:
        id_text = _id_text(monitor, msg, report.id_fields, report.malformed)
        line = f"{stamp}  {format_id(msg.arbitration_id, msg.is_extended_id)}  {id_text:<58}  {dlc:<6} {data}"
    if report.message_name is not None:
        if report.signal_error is not None:
            line += f"  | {report.message_name}: cannot decode: {report.signal_error}"
        else:
            line += f"  | {report.message_name}: {_signals(report.signals or {}, report.signal_units)}"
    for unit in report.units:
        if unit.fields.tier is not None and unit.fields.tier.value == 0 and unit.transport.value == "single_frame":
            continue  # a clear single frame: its signals are already on the line
        line += f"  | {format_unit(unit)}"
    return escape(line)


def format_per_id(monitor: Monitor) -> list[str]:
    """The one-line-per-ID table (sorted by ID); ``*`` marks bytes changed by the last frame (escaped)."""
    header = f"{'ID':<8}  {'count':>7}  {'Δt ms':>9}  {'rate/s':>8}  {'DLC':>3}  {'data':<31}  decoded"
    lines = [header]
    for key in sorted(monitor.per_id):
        s = monitor.per_id[key]
        dt = f"{s.last_dt * 1000:9.3f}" if s.last_dt is not None else f"{'-':>9}"
        rate = f"{s.rate:8.1f}" if s.rate is not None else f"{'-':>8}"
        data = " ".join(f"{b:02X}" + ("*" if i in s.changed else "") for i, b in enumerate(s.data))
        msg = can.Message(arbitration_id=s.arbitration_id, is_extended_id=s.is_extended_id)
        shown = _id_text(monitor, msg, s.id_fields, s.malformed) + (f" {s.name}" if s.name else "")
        lines.append(
            escape(
                f"{format_id(s.arbitration_id, s.is_extended_id):<8}  {s.count:>7}  {dt}  {rate}  "
                f"{len(s.data):>3}  {data:<31}  {shown}"
            )
        )
    return lines


def format_summary(summary: MonitorSummary) -> str:
    """The last line: frames, rate, IDs, bus load (flagged when its window is too short), problems."""
    fps = f"{summary.frames_per_s:.1f} frames/s" if summary.frames_per_s is not None else "- frames/s"
    text = f"{summary.frames} frames in {summary.duration:.3f} s ({fps}), {summary.ids} IDs"
    if summary.load_percent is None:
        text += "; bus load n/a (needs 2 frames over a time span)"
    else:
        assumed = " assumed" if summary.bitrate_assumed else ""
        text += f"; bus load {summary.load_percent:.2f} % of {summary.bitrate / 1000:g} kbit/s{assumed}"
        if summary.peak_load_percent is not None:
            text += f", peak 1 s {summary.peak_load_percent:.2f} %"
        text += " (worst-case stuffing)"
        if not summary.load_reliable:
            text += f" [unreliable: window {summary.duration:.3f} s < {MIN_LOAD_WINDOW_S:g} s]"
    text += f"; malformed IDs: {summary.malformed}; error frames: {summary.error_frames}"
    if summary.bad_timestamps:
        text += f"; unusable timestamps: {summary.bad_timestamps}"
    if summary.input_dropped is not None:
        text += f"; undecodable input dropped: {summary.input_dropped}"
    return escape(text)


class TraceView:
    """Plain lines through ``write``: a trace line per frame, the table as a block, the summary."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write

    def frame(self, monitor: Monitor, report: FrameReport) -> None:
        self.write(format_frame(monitor, report))

    def table(self, monitor: Monitor) -> None:
        for line in format_per_id(monitor):
            self.write(line)
        self.write("")

    def finish(self, monitor: Monitor, summary: MonitorSummary) -> None:
        self.write(format_summary(summary))


class LiveTableView(TraceView):
    """The per-ID table kept on a terminal and redrawn in place; plain blocks when ``stream`` is piped."""

    def __init__(self, stream: TextIO, *, in_place: bool | None = None) -> None:
        self.screen = Screen(stream, in_place=in_place)
        super().__init__(self.screen.line)

    def table(self, monitor: Monitor) -> None:
        self.screen.draw(format_per_id(monitor))
