"""What a frame on the bus means: identifier fields, DBC signals, reassembled and decrypted units.

:class:`FrameDecoder` is the decoding half of ``modbatt monitor`` and ``modbatt decode`` (the
statistics are :mod:`modbatt.transport.busstats`, the text is the workbench's). For every
:class:`can.Message` it returns a :class:`FrameReport`:

* the identifier split by an ID layout of :mod:`modbatt.can.ids` (a bad identifier is reported
  as malformed, never raised);
* the frame's signals from the user's databases (exact ID) or modbatt's own (matched by the
  decoded fields, so any module's frames decode; docs/can-fragmentation-and-dbc.md §3);
* when the frame completes a *unit* of the secured protocol, a :class:`UnitReport`: single
  frames are units by themselves, ISO-TP frames are reassembled passively (can-isotp in listen
  mode: the decoder never answers flow control) and broadcast fragments by
  :class:`modbatt.can.fragment.Reassembler`, per the transport the payload catalog gives the
  identifier (:func:`modbatt.can.payloads.transport_for`). A unit is decrypted through a
  :class:`Decryptor` when one is given, and its cleartext decoded to physical values through
  the cleartext-view database (:func:`modbatt.can.dbc.build_plain_database`).

State is bounded whatever arrives: at most :data:`MAX_ISOTP_STREAMS` identifiers are
reassembled at once (each holds at most one 4095-byte unit) and the fragment reassembler has its
own limits.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, runtime_checkable

import can
import cantools.database
import isotp
from can.util import len2dlc

from ..can import catalog, dbc, fragment
from ..can.functions import FUNCTIONS, RESYNC_FUNCTIONS
from ..can.ids import LAYOUTS, SEED_LAYOUT, CanIdFields, IdLayout
from ..can.payloads import PAYLOADS, Transport, payload_of, transport_for
from ..can.wiretime import CLASSIC, FD, frame_length
from ..errors import ConfigError, VerificationError
from ..model.tier import Tier

__all__ = [
    "MAX_ISOTP_STREAMS",
    "BuiltinDatabases",
    "Decryptor",
    "FrameDecoder",
    "FrameReport",
    "UnitReport",
    "load_databases",
    "resolve_layout",
]

#: Identifiers reassembled at once; frames of further ISO-TP identifiers are counted, not buffered.
MAX_ISOTP_STREAMS: Final = 512

# A listener sees the other direction's flow control, which can-isotp logs as a warning per frame;
# the sniffers count what matters (Counter ``errors``), so their logger stays quiet.
_ISOTP_LOGGER = "modbatt.transport.decoding.isotp"
logging.getLogger(_ISOTP_LOGGER).addHandler(logging.NullHandler())
logging.getLogger(_ISOTP_LOGGER).propagate = False


@runtime_checkable
class Decryptor(Protocol):
    """Hook for showing encrypted units in clear (``--keystore``).

    :class:`modbatt.nodes.monitor_keys.KeyStoreDecryptor` implements it from an entity's key
    store. It receives each protected unit as a :class:`can.Message` (a reassembled unit as one
    message carrying all its bytes) with the decoded ID fields, and

    * returns the plaintext payload (bytes) when it holds the key and the unit verifies,
    * returns ``None`` when it has no key for this unit,
    * raises :class:`~modbatt.errors.VerificationError` when a key is held but the unit fails.

    It must not keep state that a replayed or forged unit could corrupt.
    """

    def decrypt(self, msg: can.Message, id_fields: Any) -> bytes | None: ...


@dataclass
class UnitReport:
    """One complete unit of the secured protocol: its bytes, and what they say in clear."""

    can_id: int
    fields: CanIdFields
    transport: Transport
    data: bytes
    plaintext: bytes | None = None
    decrypt_note: str | None = None  # why there is no plaintext, or why decryption failed
    plain_name: str | None = None  # the cleartext-view message
    plain_signals: Mapping[str, Any] | None = None
    plain_units: Mapping[str, str] = dataclasses.field(default_factory=dict)
    plain_error: str | None = None


@dataclass
class FrameReport:
    """What the decoder learned about one frame."""

    msg: can.Message
    id_fields: CanIdFields | None = None  # None when not decoded (other width, malformed, error frame)
    malformed: str | None = None
    message_name: str | None = None
    signals: Mapping[str, Any] | None = None
    signal_units: Mapping[str, str] = dataclasses.field(default_factory=dict)
    signal_error: str | None = None
    units: list[UnitReport] = dataclasses.field(default_factory=list)
    wire_seconds: float | None = None  # filled in by the statistics


def resolve_layout(name: str | IdLayout | None) -> IdLayout:
    """The :mod:`modbatt.can.ids` layout called ``name`` (the seed layout when ``None``)."""
    if name is None:
        return SEED_LAYOUT
    if isinstance(name, IdLayout):
        return name
    if name not in LAYOUTS:
        raise ConfigError(f"unknown ID layout {name!r}; choose one of: {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[name]


def load_databases(paths: Sequence[str | os.PathLike[str]] = ()) -> list[Any]:
    """cantools databases from files (DBC, KCD, SYM, ARXML …), for exact-ID signal decoding."""
    databases: list[Any] = []
    for path in paths:
        try:
            databases.append(cantools.database.load_file(os.fspath(path)))
        except FileNotFoundError as exc:
            raise ConfigError(f"no such database file: {os.fspath(path)!r}") from exc
        except Exception as exc:  # cantools raises many parser-specific types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"cannot load database {os.fspath(path)!r}: {first}") from exc
    return databases


@functools.cache
def _built(key: str) -> Any:
    """modbatt's own databases, built once per process (the FD wire view takes a second)."""
    if key == "legacy":
        return catalog.build_legacy_database()
    if key == "secure-fd":
        return dbc.build_secure_database(profile=FD)
    if key == "plain":
        return dbc.build_plain_database()
    return dbc.build_secure_database()


class BuiltinDatabases:
    """modbatt's own databases, matched by decoded ID fields rather than by exact ID.

    The built-in databases describe one node (0x01), each function at its priority. Node and
    priority do not change a frame's data layout, so a frame is looked up with its node and
    priority replaced by the database's: any module's frames decode. The seed layout uses the
    secured protocol's wire view (classic or FD by the frame) and its cleartext view; the
    ``legacy-*`` layouts the legacy catalog; 11-bit frames always try the legacy app bus.

    A database that cannot be built is left out, reported once through ``on_problem`` and listed
    in :attr:`problems`; decoding goes on without it.
    """

    def __init__(self, layout: IdLayout, on_problem: Callable[[str], None] | None = None) -> None:
        self.layout = layout
        self.problems: list[str] = []
        self._on_problem = on_problem
        self._failed: set[str] = set()
        self._secure = layout.name == "seed"

    def prepare(self, *, fd: bool = False) -> None:
        """Build now what a live bus will need, so the first frames are not held up.

        A live monitor calls this before opening the bus: a multicast socket that is not read
        for the time a build takes overflows and loses frames.
        """
        self._get("legacy")
        if self._secure:
            self._get("secure")
            self._get("plain")
            if fd:
                self._get("secure-fd")

    def _get(self, key: str) -> Any:
        if key in self._failed:
            return None
        try:
            return _built(key)
        except Exception as exc:  # a database is an aid: decoding runs without it
            self._failed.add(key)
            problem = f"built-in {key} database unavailable: {type(exc).__name__}: {exc}"
            self.problems.append(problem)
            if self._on_problem is not None:
                self._on_problem(problem)
            return None

    def lookup(self, msg: can.Message, fields: CanIdFields | None) -> Any:
        """The cantools message describing ``msg`` on the wire (None if no built-in database has one)."""
        if not msg.is_extended_id:
            if self.layout.id_bits == 11 and fields is not None:
                can_id = self._normalise(fields, catalog.DBC_PACK_ID)
            else:
                can_id = msg.arbitration_id
            return _find(self._get("legacy"), can_id, extended=False)
        if fields is None:
            return None
        if self._secure:
            db = self._get("secure-fd" if msg.is_fd else "secure")
        elif self.layout.name.startswith("legacy"):
            db = self._get("legacy")
        else:
            return None
        return _find(db, self._normalise(fields, catalog.DBC_MODULE_ID), extended=True)

    def plain(self, fields: CanIdFields) -> Any:
        """The cleartext-view message for a unit with ``fields`` (None outside the seed layout)."""
        if not self._secure:
            return None
        cleartext = dataclasses.replace(fields, tier=Tier.NONE)
        return _find(self._get("plain"), self._normalise(cleartext, catalog.DBC_MODULE_ID), extended=True)

    def _normalise(self, fields: CanIdFields, node: int) -> int | None:
        replace: dict[str, int] = {"node": node}
        if self._secure:
            spec = FUNCTIONS.get(fields.function)
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


def _units_of(message: Any) -> dict[str, str]:
    return {s.name: s.unit for s in message.signals if s.unit}


class _IsoTpSniffer:
    """Passive ISO-TP reassembly on one identifier: can-isotp in listen mode, no threads, never sends."""

    def __init__(self, can_id: int, reverse_id: int, fd: bool) -> None:
        self.can_id = can_id
        self._rx: collections.deque[isotp.CanMessage] = collections.deque()
        self.errors: collections.Counter[str] = collections.Counter()
        params = fragment.isotp_params(fd=fd, listen_mode=True, blocking_send=False, logger_name=_ISOTP_LOGGER)
        self._tp = isotp.TransportLayerLogic(
            rxfn=self._rxfn,
            txfn=self._txfn,
            address=fragment.isotp_address(reverse_id, can_id, extended=True),
            error_handler=self._error,
            params=params,
        )

    def _rxfn(self, _timeout: float) -> isotp.CanMessage | None:
        return self._rx.popleft() if self._rx else None

    def _txfn(self, _msg: isotp.CanMessage) -> None:  # pragma: no cover - listen mode never sends
        raise RuntimeError("a passive ISO-TP reassembler never transmits")

    def _error(self, exc: Exception) -> None:
        self.errors[type(exc).__name__] += 1

    def feed(self, data: bytes, is_fd: bool) -> list[bytes]:
        self._rx.append(isotp.CanMessage(self.can_id, len2dlc(len(data)), data, extended_id=True, is_fd=is_fd))
        self._tp.process()
        units = []
        while self._tp.available():
            unit = self._tp.recv()
            if unit is not None:
                units.append(bytes(unit))
        return units


class FrameDecoder:
    """Decodes frames; keeps only reassembly state (see the module doc). No I/O.

    :param layout: an ID layout, a layout name, or ``None`` for the seed layout.
    :param databases: cantools databases tried first, by exact ID.
    :param decryptor: optional :class:`Decryptor` for protected units.
    :param builtin_databases: also decode with modbatt's own databases.
    :param reassemble: rebuild ISO-TP and broadcast-fragment units per the payload catalog (seed
        layout only); ``False`` takes every frame as a unit by itself, for traffic that does not
        follow the catalog's framing.
    :param on_problem: told once about a built-in database that cannot be built.
    """

    def __init__(
        self,
        layout: str | IdLayout | None = None,
        databases: Sequence[Any] = (),
        decryptor: Decryptor | None = None,
        *,
        builtin_databases: bool = False,
        reassemble: bool = True,
        on_problem: Callable[[str], None] | None = None,
    ) -> None:
        self.layout = resolve_layout(layout)
        self.databases = list(databases)
        if decryptor is not None and not isinstance(decryptor, Decryptor):
            raise ConfigError("decryptor must implement decrypt(msg, id_fields)")
        self.decryptor = decryptor
        self.builtin = BuiltinDatabases(self.layout, on_problem) if builtin_databases else None
        self._plain = self.builtin if self.builtin is not None else BuiltinDatabases(self.layout, on_problem)
        self.reassemble = reassemble
        self._units_known = self.layout.name == "seed"
        self._isotp: dict[int, _IsoTpSniffer] = {}
        self._fragments = fragment.Reassembler()
        #: Frames of ISO-TP identifiers beyond :data:`MAX_ISOTP_STREAMS`, not reassembled.
        self.untracked = 0

    @property
    def layout_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.layout.fields)

    def decode(self, msg: can.Message) -> FrameReport:
        """Everything known about ``msg``; never raises on a bad frame."""
        report = FrameReport(msg)
        if msg.is_error_frame:
            return report
        if (29 if msg.is_extended_id else 11) == self.layout.id_bits:
            try:
                report.id_fields = self.layout.decode(msg.arbitration_id)
            except VerificationError as exc:
                report.malformed = exc.detail or str(exc)
            except (ValueError, TypeError) as exc:  # a layout's own argument checks
                report.malformed = str(exc)
        if msg.is_remote_frame:
            return report
        self._decode_signals(msg, report)
        if self._units_known and report.id_fields is not None and report.id_fields.function in PAYLOADS:
            for unit in self._units(msg, report.id_fields):
                self._open(unit)
                report.units.append(unit)
        return report

    def _decode_signals(self, msg: can.Message, report: FrameReport) -> None:
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
        report.signal_units = _units_of(message)
        try:
            report.signals = message.decode(bytes(msg.data), decode_choices=True, scaling=True)
        except Exception as exc:  # cantools DecodeError and friends: show, don't stop
            report.signal_error = str(exc) or type(exc).__name__

    def _units(self, msg: can.Message, fields: CanIdFields) -> list[UnitReport]:
        assert fields.tier is not None
        data = bytes(msg.data)
        transport = transport_for(fields.function, fields.tier, FD if msg.is_fd else CLASSIC)
        if transport is Transport.SINGLE_FRAME or not self.reassemble:
            return [UnitReport(msg.arbitration_id, fields, Transport.SINGLE_FRAME, data)]
        if transport is Transport.BROADCAST_FRAGMENTS:
            now = float(msg.timestamp) if math.isfinite(msg.timestamp) else 0.0
            done = self._fragments.feed(msg.arbitration_id, data, now)
            return [UnitReport(msg.arbitration_id, fields, transport, m.payload) for m in done]
        sniffer = self._isotp.get(msg.arbitration_id)
        if sniffer is None:
            if len(self._isotp) >= MAX_ISOTP_STREAMS:
                self.untracked += 1
                return []
            reverse = dataclasses.replace(fields, direction=1 - fields.direction)
            sniffer = self._isotp[msg.arbitration_id] = _IsoTpSniffer(
                msg.arbitration_id, self.layout.encode(reverse), bool(msg.is_fd)
            )
        return [UnitReport(msg.arbitration_id, fields, transport, u) for u in sniffer.feed(data, bool(msg.is_fd))]

    def _open(self, unit: UnitReport) -> None:
        fields = unit.fields
        if fields.function in RESYNC_FUNCTIONS and self.decryptor is not None:
            # Resync frames carry no payload, but a key-store decryptor follows them to keep its
            # freshness windows in step across a restart (docs/can-frames.md §3).
            carrier = can.Message(arbitration_id=unit.can_id, data=unit.data, is_extended_id=True)
            try:
                self.decryptor.decrypt(carrier, fields)
            except VerificationError as exc:
                unit.decrypt_note = f"resync refused: {exc}"
                return
            if fields.tier is not Tier.NONE:
                unit.decrypt_note = "resync answer (no payload)"
                return
        if fields.tier is Tier.NONE:
            unit.plaintext = unit.data
        elif self.decryptor is None:
            unit.decrypt_note = "encrypted"
        else:
            # One message per unit: a reassembled unit is longer than one frame.
            carrier = can.Message(arbitration_id=unit.can_id, data=unit.data, is_extended_id=True)
            try:
                unit.plaintext = self.decryptor.decrypt(carrier, fields)
                if unit.plaintext is None:
                    unit.decrypt_note = "encrypted (no key)"
            except VerificationError as exc:
                unit.decrypt_note = f"decrypt failed: {exc}"
        if unit.plaintext is not None:
            self._decode_plain(unit)

    def _decode_plain(self, unit: UnitReport) -> None:
        assert unit.plaintext is not None
        payload = payload_of(unit.fields.function, unit.fields.direction)
        message = self._plain.plain(unit.fields)
        if payload is None or payload.length is None or message is None:
            return  # variable units have no fixed cleartext layout
        unit.plain_name = message.name
        unit.plain_units = _units_of(message)
        if len(unit.plaintext) != payload.length:
            unit.plain_error = f"{len(unit.plaintext)} bytes, the catalog's {payload.name} has {payload.length}"
            return
        padded = unit.plaintext.ljust(frame_length(payload.length, fd=payload.length > 8), b"\0")
        try:
            unit.plain_signals = message.decode(padded, decode_choices=True, scaling=True)
        except Exception as exc:
            unit.plain_error = str(exc) or type(exc).__name__
