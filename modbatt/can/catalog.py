"""The legacy ModBatt CAN message catalog as typed rows and as a cantools database.

Source: ``modbatt/data/legacy-can-catalog.csv``, compiled from the ModBatt repository's headers and
emulator code (dp-web4/modbatt-CAN; docs/can-fragmentation-and-dbc.md §3.1 names the files). One CSV
row per signal; ``start_bit`` is where the C compiler really puts the field (``uint32_t`` bitfields
never straddle a 32-bit unit), which for 0x404, 0x412-0x416, 0x220 and 0x222 differs from the header
comments. We trust the compiled position because that is what ``memcpy`` puts on the wire.

Two ID rules (docs/can-fragmentation-and-dbc.md §3.1):

* app bus (0x2xx, 0x4xx): 11-bit standard frames, ``base + pack_id * 0x100``;
* module bus (0x5xx): 29-bit extended frames, ``(base << 18) | module_id``.

The WEB4 key-distribution frames (0x407-0x40A and their ACKs 0x4A7-0x4A9) are the exception: the
configuration utility sends them as *extended* frames ``base | (chunk << 8) | pack_id``
(``Unit1.cpp``), so they are catalogued as extended and keep that rule.

The DBC view fixes ``pack_id = 0`` and ``module_id = DBC_MODULE_ID`` (0x01, the first assigned
module), because a DBC file holds one concrete ID per message; :func:`frame_id` computes the ID for
any other pack or module. Fields that lie past bit 63 are never transmitted (the compiled struct is
12 bytes but only 8 are copied into the frame) and are dropped from the DBC, listed per message in
:attr:`LegacyMessage.dropped`.
"""

from __future__ import annotations

import csv
import enum
import functools
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources

import cantools.database
from cantools.database.can import Message, Node, Signal
from cantools.database.conversion import BaseConversion

from ..errors import ConfigError
from .ids import LEGACY_MODULE_LAYOUT, STANDARD_ID_MAX, CanIdFields

__all__ = [
    "CATALOG_RESOURCE",
    "DBC_MODULE_ID",
    "DBC_PACK_ID",
    "KEY_CHUNK_BASES",
    "LegacyBus",
    "LegacyMessage",
    "LegacySignal",
    "build_legacy_database",
    "bus_of",
    "cantools_signal",
    "catalog_id_rows",
    "frame_id",
    "is_extended_base",
    "load_catalog",
    "message_by_base",
    "parse_catalog",
]

#: Package-data file name (under ``modbatt/data``).
CATALOG_RESOURCE = "legacy-can-catalog.csv"

#: The pack the legacy DBC describes (app-bus IDs are ``base + pack_id * 0x100``).
DBC_PACK_ID = 0
#: The module the legacy DBC describes: 0x01 is the first assigned module id (0x00 is broadcast,
#: 0xFF unregistered), so a trace of a one-module bench decodes without editing the DBC.
DBC_MODULE_ID = 0x01

#: App-bus bases the configuration utility sends as extended frames ``base | (chunk << 8) | pack``
#: (docs/can-fragmentation-and-dbc.md §3.1: 0x407-0x409 key halves and component IDs, 0x40A host ID,
#: 0x4A7-0x4A9 ACKs).
KEY_CHUNK_BASES = frozenset({0x407, 0x408, 0x409, 0x40A, 0x4A7, 0x4A8, 0x4A9})
#: The utility sends 8 chunks (0-7) per key (``Unit1.cpp``).
KEY_CHUNKS = range(8)

_CLASSIC_BITS = 64  # a classic CAN frame carries at most 8 bytes = 64 bits
_MODULE_ID_MAX = 0xFF
_PACK_STRIDE = 0x100

# DBC nodes: the app and the VCU share one role on the app bus.
NODE_VCU = "VCU"
NODE_PACK = "PACK"
NODE_MODULE = "MODULE"
# Direction text in the CSV comment column -> (sender, receiver).
_DIRECTIONS: tuple[tuple[str, str, str], ...] = (
    ("pack->all modules", NODE_PACK, NODE_MODULE),
    ("VCU/app->pack", NODE_VCU, NODE_PACK),
    ("app->pack", NODE_VCU, NODE_PACK),
    ("pack->VCU/app", NODE_PACK, NODE_VCU),
    ("diag pack->VCU", NODE_PACK, NODE_VCU),
    ("module->pack", NODE_MODULE, NODE_PACK),
    ("pack->module", NODE_PACK, NODE_MODULE),
)

_ENUM_RE = re.compile(r"enum((?:\s+\d+=[A-Za-z_][A-Za-z0-9_]*)+)")
_ENUM_REF_RE = re.compile(r"enum \d+-\d+ as (0x[0-9A-Fa-f]+)")


class LegacyBus(enum.StrEnum):
    """Which physical bus a legacy message travels on."""

    APP = "app"  # CAN 1: app/VCU <-> pack controller
    MODULE = "module"  # CAN 2: pack controller <-> modules


@dataclass(frozen=True, slots=True)
class LegacySignal:
    """One signal at its compiled position (Intel bit numbering, bit 0 = LSB of byte 0)."""

    name: str
    start_bit: int
    length: int
    byte_order: str
    is_signed: bool
    scale: float
    offset: float
    unit: str
    comment: str
    choices: tuple[tuple[int, str], ...] = ()

    @property
    def end_bit(self) -> int:
        """One past the highest bit (little-endian signals only)."""
        return self.start_bit + self.length

    @property
    def transmitted(self) -> bool:
        """False for fields the compiler pushed past bit 63: ``memcpy`` of 8 bytes never sends them."""
        return self.end_bit <= _CLASSIC_BITS


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    """One catalogued message: its base ID, bus, and the signals really sent."""

    base_id: int
    name: str
    dlc: int
    bus: LegacyBus
    is_extended: bool
    sender: str | None
    receiver: str | None
    signals: tuple[LegacySignal, ...]
    dropped: tuple[LegacySignal, ...] = field(default=())
    comment: str = ""

    def frame_id(self, *, pack_id: int = DBC_PACK_ID, module_id: int = DBC_MODULE_ID, chunk: int = 0) -> int:
        """The arbitration ID of this message for a given pack / module / key chunk."""
        return frame_id(self.base_id, pack_id=pack_id, module_id=module_id, chunk=chunk)


def bus_of(base_id: int) -> LegacyBus:
    """0x5xx bases live on the module bus, everything else on the app bus."""
    return LegacyBus.MODULE if 0x500 <= base_id <= 0x5FF else LegacyBus.APP


def is_extended_base(base_id: int) -> bool:
    """Whether frames of this base are 29-bit (module bus, WEB4 key frames) or 11-bit."""
    return bus_of(base_id) is LegacyBus.MODULE or base_id in KEY_CHUNK_BASES


def frame_id(base_id: int, *, pack_id: int = DBC_PACK_ID, module_id: int = DBC_MODULE_ID, chunk: int = 0) -> int:
    """Compute the arbitration ID the firmware uses for ``base_id``.

    * module bus: ``(base << 18) | module_id`` (``module_id`` 0x00 broadcast .. 0xFF unregistered);
    * WEB4 key frames: ``base | (chunk << 8) | pack_id``, extended (the utility's formula, defects
      included: chunks 4-7 of 0x407 reuse the IDs of chunks 0-3 because bit 10 is already set);
    * other app-bus frames: ``base + pack_id * 0x100``, standard 11-bit.

    Raises :class:`ConfigError` when the result does not fit the frame format.
    """
    if bus_of(base_id) is LegacyBus.MODULE:
        if not 0 <= module_id <= _MODULE_ID_MAX:
            raise ConfigError(f"module id {module_id:#x} is outside 0x00-0xFF")
        return LEGACY_MODULE_LAYOUT.encode(CanIdFields(function=base_id, node=module_id))
    if pack_id < 0:
        raise ConfigError(f"pack id {pack_id} is negative")
    if base_id in KEY_CHUNK_BASES:
        if chunk not in KEY_CHUNKS:
            raise ConfigError(f"key chunk {chunk} is outside 0-7")
        if pack_id > 0xFF:
            raise ConfigError(f"pack id {pack_id} does not fit the key-frame low byte")
        return base_id | (chunk << 8) | pack_id
    fid = base_id + pack_id * _PACK_STRIDE
    if fid > STANDARD_ID_MAX:
        raise ConfigError(f"pack id {pack_id} pushes {base_id:#05x} past the 11-bit range ({fid:#x})")
    return fid


def _parse_choices(comment: str) -> tuple[tuple[int, str], ...]:
    match = _ENUM_RE.search(comment)
    if not match:
        return ()
    pairs = (item.split("=", 1) for item in match.group(1).split())
    return tuple((int(value), label) for value, label in pairs)


def _direction(comment: str) -> tuple[str | None, str | None]:
    for text, sender, receiver in _DIRECTIONS:
        if text in comment:
            return sender, receiver
    return None, None


def _float(text: str, default: float) -> float:
    return float(text) if text.strip() else default


def parse_catalog(text: str) -> tuple[LegacyMessage, ...]:
    """Parse catalog CSV text into messages, in first-seen order.

    Rows without a start bit describe messages with no signals (ID defines only). Raises
    :class:`ConfigError` on a row that contradicts an earlier one for the same ID.
    """
    rows: dict[int, list[dict[str, str]]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        base = int(row["message_id_hex"], 16)
        rows.setdefault(base, []).append(row)

    # First pass: signals with their own enum text, so "enum 0-3 as 0x400" can borrow them.
    own_choices: dict[int, tuple[tuple[int, str], ...]] = {}
    for base, group in rows.items():
        for row in group:
            parsed = _parse_choices(row["comment"])
            if parsed and base not in own_choices:
                own_choices[base] = parsed

    messages: list[LegacyMessage] = []
    for base, group in rows.items():
        names = {r["message_name"] for r in group}
        dlcs = {r["dlc"] for r in group}
        if len(names) != 1 or len(dlcs) != 1:
            raise ConfigError(f"catalog rows for {base:#05x} disagree on name or DLC: {names} {dlcs}")
        sent: list[LegacySignal] = []
        dropped: list[LegacySignal] = []
        for row in group:
            if not row["start_bit"].strip():
                continue  # message without signals
            choices = _parse_choices(row["comment"])
            ref = _ENUM_REF_RE.search(row["comment"])
            if not choices and ref:
                choices = own_choices.get(int(ref.group(1), 16), ())
            sig = LegacySignal(
                name=row["signal_name"],
                start_bit=int(row["start_bit"]),
                length=int(row["length_bits"]),
                byte_order=row["byte_order"] or "little_endian",
                is_signed=row["signed"].strip().lower() == "true",
                scale=_float(row["scale"], 1.0),
                offset=_float(row["offset"], 0.0),
                unit=row["unit"],
                comment=row["comment"],
                choices=choices,
            )
            (sent if sig.transmitted else dropped).append(sig)
        sender, receiver = _direction(group[0]["comment"])
        note = ""
        if dropped:
            note = "Not sent (compiled past bit 63, outside the 8-byte frame): " + ", ".join(
                f"{s.name}@{s.start_bit}/{s.length}" for s in dropped
            )
        messages.append(
            LegacyMessage(
                base_id=base,
                name=group[0]["message_name"],
                dlc=int(group[0]["dlc"]),
                bus=bus_of(base),
                is_extended=is_extended_base(base),
                sender=sender,
                receiver=receiver,
                signals=tuple(sent),
                dropped=tuple(dropped),
                comment=note,
            )
        )
    return tuple(messages)


@functools.cache
def load_catalog() -> tuple[LegacyMessage, ...]:
    """The shipped catalog (package data), parsed once per process."""
    text = resources.files("modbatt").joinpath("data", CATALOG_RESOURCE).read_text(encoding="utf-8")
    return parse_catalog(text)


def message_by_base(base_id: int, catalog: Sequence[LegacyMessage] | None = None) -> LegacyMessage:
    """Look a message up by its base ID (``KeyError`` if absent)."""
    for msg in catalog if catalog is not None else load_catalog():
        if msg.base_id == base_id:
            return msg
    raise KeyError(f"{base_id:#05x} is not in the legacy catalog")


def _rule_text(msg: LegacyMessage) -> str:
    if msg.bus is LegacyBus.MODULE:
        return (
            f"module bus, 29-bit ID = ({msg.base_id:#05x} << 18) | module_id; DBC uses module_id {DBC_MODULE_ID:#04x}"
        )
    if msg.is_extended:
        return (
            f"app bus, extended ID = {msg.base_id:#05x} | (chunk << 8) | packID; DBC uses chunk 0, packID {DBC_PACK_ID}"
        )
    return f"app bus, 11-bit ID = {msg.base_id:#05x} + packID * 0x100; DBC uses packID {DBC_PACK_ID}"


def cantools_signal(sig: LegacySignal, receiver: str | None = None) -> Signal:
    """``sig`` as a cantools signal: scale, offset, unit, value table and comment (none when empty)."""
    choices = dict(sig.choices) if sig.choices else None
    return Signal(
        name=sig.name,
        start=sig.start_bit,
        length=sig.length,
        byte_order=sig.byte_order,
        is_signed=sig.is_signed,
        conversion=BaseConversion.factory(scale=sig.scale, offset=sig.offset, choices=choices),
        unit=sig.unit or None,
        comment=sig.comment or None,
        receivers=[receiver] if receiver else [],
    )


def build_legacy_database(
    catalog: Sequence[LegacyMessage] | None = None,
    *,
    pack_id: int = DBC_PACK_ID,
    module_id: int = DBC_MODULE_ID,
) -> cantools.database.can.Database:
    """A cantools database of the legacy buses at one pack id and one module id.

    Signals sit at their compiled positions; fields past bit 63 are left out and named in the
    message comment.
    """
    msgs = catalog if catalog is not None else load_catalog()
    out: list[Message] = []
    for msg in msgs:
        comment = _rule_text(msg) + (f". {msg.comment}" if msg.comment else "")
        out.append(
            Message(
                frame_id=msg.frame_id(pack_id=pack_id, module_id=module_id),
                name=msg.name,
                length=msg.dlc,
                signals=[cantools_signal(s, msg.receiver) for s in msg.signals],
                comment=comment,
                senders=[msg.sender] if msg.sender else [],
                is_extended_frame=msg.is_extended,
            )
        )
    nodes = [
        Node(NODE_VCU, "app / VCU (CAN 1)"),
        Node(NODE_PACK, "pack controller (CAN 1 and CAN 2)"),
        Node(NODE_MODULE, "battery module (CAN 2)"),
    ]
    return cantools.database.can.Database(messages=out, nodes=nodes, version="modbatt-legacy-1")


def catalog_id_rows(
    catalog: Iterable[LegacyMessage] | None = None,
    *,
    pack_ids: Iterable[int] = (DBC_PACK_ID,),
    module_ids: Iterable[int] = (DBC_MODULE_ID,),
    key_chunks: Iterable[int] = (0,),
) -> Iterator[tuple[str, int, bool]]:
    """``(name, frame_id, is_extended)`` rows for the ID collision checker.

    One row per message and per pack id (app bus), module id (module bus) or key chunk (WEB4 key
    frames), so a caller can ask e.g. for every module 0x00-0xFF. Names carry the instance,
    e.g. ``MODULE_STATUS_1[module=0x01]``.
    """
    packs = tuple(pack_ids)
    modules = tuple(module_ids)
    chunks = tuple(key_chunks)
    for msg in catalog if catalog is not None else load_catalog():
        if msg.bus is LegacyBus.MODULE:
            for mid in modules:
                yield f"{msg.name}[module={mid:#04x}]", msg.frame_id(module_id=mid), True
        elif msg.is_extended:
            for pid in packs:
                for chunk in chunks:
                    yield (
                        f"{msg.name}[pack={pid},chunk={chunk}]",
                        msg.frame_id(pack_id=pid, chunk=chunk),
                        True,
                    )
        else:
            for pid in packs:
                yield f"{msg.name}[pack={pid}]", msg.frame_id(pack_id=pid), False
