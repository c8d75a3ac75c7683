"""``modbatt monitor`` without its face: a monitor that decodes and counts, and the loop that feeds it.

A :class:`Monitor` is a :class:`~modbatt.transport.decoding.FrameDecoder` (identifier fields,
signals, reassembled and decrypted units) and a :class:`~modbatt.transport.busstats.BusStatistics`
(per-ID counts, frame rate, bus load) fed the same frames. :func:`run_monitor` drives one from a
live bus or a recorded log until a frame count, a duration, the end of the log or Ctrl-C,
optionally recording what it sees, and hands each report to a :class:`MonitorView`. The text a
person sees is the view's business (``modbatt.workbench.monitor_view``), so the command line and
the notebooks show the same thing.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import can

from ..can.ids import EXTENDED_ID_MAX, STANDARD_ID_MAX, IdLayout
from ..errors import ConfigError
from .busstats import DEFAULT_LOAD_BITRATE, BusStatistics, IdStats, MonitorSummary
from .decoding import (
    BuiltinDatabases,
    Decryptor,
    FrameDecoder,
    FrameReport,
    UnitReport,
    load_databases,
    resolve_layout,
)

__all__ = [
    "DEFAULT_LOAD_BITRATE",
    "BuiltinDatabases",
    "Decryptor",
    "FrameReport",
    "IdStats",
    "Monitor",
    "MonitorSummary",
    "MonitorView",
    "UnitReport",
    "describe_error_frame",
    "filter_matches",
    "load_databases",
    "parse_filters",
    "resolve_layout",
    "run_monitor",
]


class Monitor:
    """Decodes frames and keeps statistics; no I/O (see :func:`run_monitor`).

    :param layout: an ID layout, a layout name, or ``None`` for the seed layout.
    :param databases: cantools databases tried in order for signal decoding (exact ID match);
        they win over the built-in ones.
    :param decryptor: optional :class:`Decryptor` for protected units.
    :param builtin_databases: also decode with modbatt's own databases (:class:`BuiltinDatabases`).
    :param on_problem: told (once each) about a built-in database that cannot be built.
    :param bitrate: nominal bit rate for bus load (default 500 kbit/s, stated in the summary).
    :param data_bitrate: CAN FD data-phase rate for FD frames with BRS.
    :param reassemble: rebuild multi-frame units per the payload catalog (see :class:`FrameDecoder`).
    """

    def __init__(
        self,
        layout: str | IdLayout | None = None,
        databases: Sequence[Any] = (),
        decryptor: Decryptor | None = None,
        *,
        builtin_databases: bool = False,
        on_problem: Callable[[str], None] | None = None,
        bitrate: int | None = None,
        data_bitrate: int | None = None,
        reassemble: bool = True,
    ) -> None:
        self.decoder = FrameDecoder(
            layout, databases, decryptor, builtin_databases=builtin_databases, on_problem=on_problem,
            reassemble=reassemble,
        )  # fmt: skip
        self.stats = BusStatistics(bitrate, data_bitrate)

    @property
    def layout(self) -> IdLayout:
        return self.decoder.layout

    @property
    def builtin(self) -> BuiltinDatabases | None:
        return self.decoder.builtin

    @property
    def per_id(self) -> dict[tuple[int, bool], IdStats]:
        return self.stats.per_id

    def observe(self, msg: can.Message) -> FrameReport:
        """Decode ``msg`` and count it."""
        report = self.decoder.decode(msg)
        report.wire_seconds = self.stats.observe(
            msg, malformed=report.malformed, id_fields=report.id_fields, name=report.message_name
        )
        return report

    def summary(self) -> MonitorSummary:
        return self.stats.summary()


class MonitorView(Protocol):
    """Where :func:`run_monitor` sends what it sees (``modbatt.workbench.monitor_view`` has the text ones)."""

    def frame(self, monitor: Monitor, report: FrameReport) -> None:
        """One frame observed (trace mode)."""

    def table(self, monitor: Monitor) -> None:
        """The per-ID view is due (every refresh period on a live bus, and at the end)."""

    def finish(self, monitor: Monitor, summary: MonitorSummary) -> None:
        """The run ended: show the summary."""


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
            mask = int(mask_text, 16) if mask_text else EXTENDED_ID_MAX
        except ValueError:
            raise ConfigError(f"bad filter {spec!r}: use hex ID:MASK, ID~MASK or ID") from None
        if not (0 <= can_id <= EXTENDED_ID_MAX and 0 <= mask <= EXTENDED_ID_MAX):
            raise ConfigError(f"bad filter {spec!r}: ID and mask are at most 29 bits")
        filters.append({"can_id": can_id, "can_mask": mask, "invert": invert})
    return filters


def filter_matches(msg: can.Message, filters: Sequence[Mapping[str, Any]]) -> bool:
    """Whether ``msg`` passes ``filters`` (see :func:`parse_filters`; no filters pass all)."""
    if not filters:
        return True
    for f in filters:
        hit = (msg.arbitration_id & f["can_mask"]) == (f["can_id"] & f["can_mask"])
        if f["can_id"] > STANDARD_ID_MAX and not msg.is_extended_id:
            hit = False
        if hit != f.get("invert", False):
            return True
    return False


def _messages_from_bus(
    bus: can.BusABC, deadline: Callable[[], float | None], dropped: collections.Counter[str]
) -> Iterator[can.Message | None]:
    """Frames from ``bus``; yields ``None`` on idle so the caller can refresh and check stops.

    A backend that raises for input it cannot decode (not for a failed device: that error is
    chained from an ``OSError`` and ends the monitor) costs one count in ``dropped``, not the run
    (docs/buses.md, "Malformed input").
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


def _input_dropped(bus: can.BusABC, dropped: collections.Counter[str]) -> int | None:
    """Input dropped on a live bus: what the adapter counted (``malformed``, see
    :mod:`modbatt.transport.canbus`) plus what the receive loop caught; ``None`` when neither
    counts anything (an adapter without the counter and nothing caught)."""
    adapter = getattr(bus, "malformed", None)
    if not isinstance(adapter, int) and not dropped:
        return None
    return (adapter if isinstance(adapter, int) else 0) + dropped["input"]


def run_monitor(
    monitor: Monitor,
    source: can.BusABC | Iterable[can.Message],
    view: MonitorView,
    *,
    per_id: bool = False,
    count: int | None = None,
    duration: float | None = None,
    recorder: can.Listener | None = None,
    refresh: float = 1.0,
    filters: Sequence[Mapping[str, Any]] = (),
    clock: Callable[[], float] = time.monotonic,
) -> MonitorSummary:
    """Feed ``monitor`` from a bus or a message iterable and report to ``view``.

    Stops after ``count`` frames, after ``duration`` seconds (wall clock on a bus, frame
    timestamps in a log), at the end of a log, or on Ctrl-C. With ``per_id`` the view's table is
    due every ``refresh`` seconds (live bus only) and at the end; otherwise each frame goes to the
    view. ``recorder`` (e.g. :func:`modbatt.transport.recording.open_writer`) receives every
    frame seen; the caller stops it. ``filters`` (:func:`parse_filters`) drop other frames
    before anything else sees them; error frames always pass. Returns the summary.
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
                    view.frame(monitor, report)
            if live and per_id and clock() >= next_refresh:
                next_refresh = clock() + refresh
                view.table(monitor)
            if count is not None and seen >= count:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a person ends a live monitor: still show what was seen
    if per_id:
        view.table(monitor)
    summary = monitor.summary()
    if live:
        assert isinstance(source, can.BusABC)
        summary = dataclasses.replace(summary, input_dropped=_input_dropped(source, dropped))
    view.finish(monitor, summary)
    return summary
