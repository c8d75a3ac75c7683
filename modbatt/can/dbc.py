"""DBC files: the secured protocol on the wire, its cleartext view, and the legacy ModBatt buses.

Three databases, all built from the single definitions elsewhere in ``modbatt.can``
(docs/can-fragmentation-and-dbc.md §3):

* :func:`build_secure_database` (``modbatt.dbc``): every frame the secured protocol puts on the
  bus, for every module node 0x01-0x1F, as SavvyCAN, CANalyzer or ``cantools decode`` see it
  without keys. Identifiers come from the ID layout (``ids.SEED_LAYOUT``), functions from
  ``functions.FUNCTIONS``, tiers from the default encryption policy, payload lengths, rates,
  units and scales from ``payloads`` (which reuses the legacy catalog), byte layouts from
  ``secured.frame_format`` and carriers from ``fragment``. Ciphertext, freshness and tag show as
  raw fields at their real positions; a clear payload shows its physical signals.
* :func:`build_plain_database` (``modbatt-plain.dbc``): the *cleartext view*, the decrypted and
  reassembled payload of every fixed-length unit, with physical values, on the identifier the
  unit would have at tier NONE. ``modbatt decode --output FILE.asc`` writes plaintext logs on
  these identifiers.
* :func:`~modbatt.can.catalog.build_legacy_database`: the legacy catalog (see ``catalog``).

A DBC signal lives in the data field and cannot read identifier bits, so the ID-derived fields
(encryption flag, level, function, direction, node) are message attributes (``MB_EncFlag``,
``MB_Level``, ``MB_Function``, ``MB_Direction``, ``MB_Node``, ``MB_Transport``), and appear in the
message name ``<FUNCTION>_<C2N|N2C>_<TIER>_<NODE>`` and comment.

Exact lengths: a DBC holds one layout per identifier, so each function has a fixed payload
length per direction (``payloads``), and every frame of an identifier has one length:

* NONE: the payload (DLC n on classic; FD rounds up to a valid length with zero padding).
* EXCHANGE / PAIRING, classic: ``Ciphertext`` (n bytes) | ``FreshnessLow`` (FV bits 7-0) |
  ``MAC`` (4-byte CCM tag): DLC n + 5.
* EXCHANGE / PAIRING, FD: ``Freshness`` (56-bit FV) | ``PadCount`` | ``Ciphertext`` (n bytes) |
  ``MAC`` (16-byte GCM tag) | zero padding to the next valid FD length.
* Units too big for one frame, variable units and every BINDING unit travel as transport frames:
  broadcast fragments for the functions sent to everyone (``payloads.BROADCAST_FUNCTIONS``),
  ISO-TP single, first, consecutive and flow-control frames for the others. Classic frames are
  padded with 0xCC to 8 bytes; an ISO-TP link uses the two directions of one function as its
  pair of IDs, so flow control arrives on the opposite direction's ID.

All multi-byte fields of the secured formats are big-endian (Motorola in DBC terms), so a
field's hex reads in wire order.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import cantools.database
from cantools.database.can import Bus, Message, Node, Signal
from cantools.database.can.formats.dbc import DbcAttribute, DbcAttributeDefinition, DbcSpecifics
from cantools.database.conversion import BaseConversion

from ..errors import ConfigError, VerificationError
from ..files import write_atomic
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy, MessageClass
from ..model.profile import ProtocolProfile
from ..model.tier import Tier
from . import fragment
from .catalog import DBC_MODULE_ID, DBC_PACK_ID, build_legacy_database, cantools_signal
from .functions import FUNCTIONS, Function
from .ids import NODE_BROADCAST, SEED_LAYOUT, IdLayout, TierSignal
from .payloads import BROADCAST_FUNCTIONS, PAYLOADS, Payload, Transport, transport_for
from .secured import Direction, frame_format
from .wiretime import CLASSIC, BusProfile, frame_length

__all__ = [
    "BROADCAST_FUNCTIONS",
    "LEGACY_DBC_NAME",
    "MODULE_NODES",
    "PLAIN_DBC_NAME",
    "SECURE_DBC_NAME",
    "ExportedFile",
    "Transport",
    "build_legacy_database",
    "build_plain_database",
    "build_secure_database",
    "export_dbc_files",
    "plain_message_name",
    "secure_message_name",
    "write_dbc",
]

SECURE_DBC_NAME = "modbatt.dbc"
PLAIN_DBC_NAME = "modbatt-plain.dbc"
LEGACY_DBC_NAME = "modbatt-legacy.dbc"

#: Module node ids of a pack (the seed layout's ``node`` field; 0x00 is broadcast, 0xFF unregistered).
MODULE_NODES = range(0x01, 0x20)

NODE_CONTROLLER = "PACK_CONTROLLER"
NODE_MODULE = "MODULE"
_DIR_SHORT = {Direction.INITIATOR_TO_RESPONDER: "C2N", Direction.RESPONDER_TO_INITIATOR: "N2C"}
_DIR_SENDER = {
    Direction.INITIATOR_TO_RESPONDER: (NODE_CONTROLLER, NODE_MODULE),
    Direction.RESPONDER_TO_INITIATOR: (NODE_MODULE, NODE_CONTROLLER),
}
_TRANSPORTS = [t.value for t in Transport]

# -- DBC attribute definitions ------------------------------------------------------------------

_LEVELS = [t.label for t in Tier]  # ENUM index = the seed's 2-bit level code
_DIRECTIONS = ["controller_to_node", "node_to_controller"]  # index = the seed layout's dir bit
_SEND_TYPES = ["Cyclic", "Event"]


def _attr_def(name: str, type_name: str, default: object, **kw: object) -> DbcAttributeDefinition:
    return DbcAttributeDefinition(name, default_value=default, kind="BO_", type_name=type_name, **kw)  # type: ignore[arg-type]


_ATTRS = OrderedDict(
    (d.name, d)
    for d in (
        _attr_def("MB_EncFlag", "INT", 0, minimum=0, maximum=1),
        _attr_def("MB_Level", "ENUM", _LEVELS[0], choices=_LEVELS),
        _attr_def("MB_Function", "HEX", 0, minimum=0, maximum=0x1FF),
        _attr_def("MB_Direction", "ENUM", _DIRECTIONS[0], choices=_DIRECTIONS),
        _attr_def("MB_Node", "HEX", 0, minimum=0, maximum=0xFF),
        _attr_def("MB_Transport", "ENUM", _TRANSPORTS[0], choices=_TRANSPORTS),
        _attr_def("MB_ForgeryLog2", "INT", 0, minimum=-128, maximum=0),
        _attr_def("GenMsgSendType", "ENUM", _SEND_TYPES[1], choices=_SEND_TYPES),
    )
)

# Vector's network attribute: "CAN FD" makes writers emit VFrameFormat, so tools see FD frames.
_BUS_TYPE = DbcAttributeDefinition("BusType", default_value="CAN", kind=None, type_name="STRING")


def _attributes(**values: int) -> DbcSpecifics:
    """Message attributes; ENUM values are written as their index, as DBC requires."""
    return DbcSpecifics(
        attributes=OrderedDict((name, DbcAttribute(value, _ATTRS[name])) for name, value in values.items())
    )


def _database_specifics(fd: bool) -> DbcSpecifics:
    return DbcSpecifics(
        attributes=OrderedDict([("BusType", DbcAttribute("CAN FD" if fd else "CAN", _BUS_TYPE))]),
        attribute_definitions=OrderedDict([*_ATTRS.items(), (_BUS_TYPE.name, _BUS_TYPE)]),
    )


# -- signal helpers -----------------------------------------------------------------------------


def _be(
    name: str, first_byte: int, msb_in_byte: int, length: int, *, choices: dict[int, str] | None = None, **kw: object
) -> Signal:
    """A big-endian (Motorola) field whose most significant bit is bit ``msb_in_byte`` of ``first_byte``."""
    conversion = BaseConversion.factory(choices=choices) if choices else None
    return Signal(name, first_byte * 8 + msb_in_byte, length, "big_endian", conversion=conversion, **kw)  # type: ignore[arg-type]


def _byte_fields(name: str, start: int, stop: int, **kw: object) -> list[Signal]:
    """Bytes ``start`` … ``stop - 1`` as big-endian raw signals of at most 8 bytes each."""
    spans = [(b, min(b + 8, stop)) for b in range(start, stop, 8)]
    out = []
    for i, (lo, hi) in enumerate(spans):
        label = name if len(spans) == 1 else f"{name}_{i}"
        out.append(_be(label, lo, 7, 8 * (hi - lo), **kw))
    return out


def _mux(ids: Sequence[int], mux: str) -> dict[str, object]:
    return {"multiplexer_ids": list(ids), "multiplexer_signal": mux}


def _single_frame_signals(tier: Tier, profile: BusProfile, payload: Payload) -> tuple[list[Signal], int, str]:
    """Signals, data length and a one-line layout note for one single-frame unit of ``payload``."""
    n = payload.length
    assert n is not None
    fmt = frame_format(tier, profile)
    if tier is Tier.NONE:
        return [cantools_signal(s) for s in payload.signals], frame_length(n, fd=profile.fd), f"{payload.name} in clear"
    if not profile.fd:
        fv_bytes = fmt.fv_bits // 8
        sigs = [
            *_byte_fields("Ciphertext", 0, n),
            _be("FreshnessLow", n, 7, fmt.fv_bits, comment="freshness value, low bits (SecOC-style)"),
            *_byte_fields("MAC", n + fv_bytes, n + fmt.overhead),
        ]
        sigs[-1].comment = f"truncated tag, {fmt.tag_bytes} bytes: forgery odds 2^{fmt.forgery_odds_log2} per try"
        note = f"ciphertext({n}) | FV low {fmt.fv_bits} bits | {fmt.tag_bytes}-byte tag"
        return sigs, n + fmt.overhead, note
    fv_bytes = fmt.fv_bits // 8
    tag_at = fmt.header_bytes + n
    length = frame_length(n + fmt.overhead, fd=True)
    sigs = [
        _be("Freshness", 0, 7, fmt.fv_bits, comment="full freshness value"),
        _be("PadCount", fv_bytes, 7, 8 * (fmt.header_bytes - fv_bytes), comment="zero bytes after the tag"),
        *_byte_fields("Ciphertext", fmt.header_bytes, tag_at),
        *_byte_fields("MAC", tag_at, tag_at + fmt.tag_bytes),
    ]
    zeros = length - tag_at - fmt.tag_bytes
    note = f"FV({fv_bytes}) | pad count | ciphertext({n}) | {fmt.tag_bytes}-byte tag | {zeros} zero bytes"
    return sigs, length, note


def _fragment_signals(profile: BusProfile) -> tuple[list[Signal], int, str]:
    """The broadcast fragment header (``fragment`` module) as a multiplexed DBC message."""
    field = profile.data_field
    index_bits = (fragment.MAX_FRAGMENTS - 1).bit_length()
    tid_bits = (fragment.TRANSFER_IDS - 1).bit_length()
    # Only the indices a MAX_PAYLOAD message can use: higher ones are refused as OVERSIZED anyway,
    # and cantools builds one decoder entry per multiplexer value.
    rest = range(1, fragment.fragment_count(fragment.MAX_PAYLOAD, field))
    sigs = [
        _be("FRAG_TransferId", 0, 7, tid_bits),
        _be("FRAG_Index", 0, 7 - tid_bits, index_bits, is_multiplexer=True),
        _be(
            "FRAG_TotalLength",
            fragment.HEADER_LEN,
            7,
            8 * (fragment.FIRST_HEADER_LEN - fragment.HEADER_LEN),
            unit="B",
            **_mux([0], "FRAG_Index"),
        ),
        *_byte_fields("FRAG_FirstData", fragment.FIRST_HEADER_LEN, field, **_mux([0], "FRAG_Index")),
        *_byte_fields("FRAG_Data", fragment.HEADER_LEN, field, **_mux(rest, "FRAG_Index")),
    ]
    return (
        sigs,
        field,
        (
            "broadcast fragments: transfer id (4 bits) | index (12 bits) [| total length u16 in fragment 0] | "
            "data of message | CRC-32, last fragment padded with 0xCC; see docs/can-fragmentation-and-dbc.md"
        ),
    )


_PCI_TYPES = {0: "SingleFrame", 1: "FirstFrame", 2: "ConsecutiveFrame", 3: "FlowControl"}
_FLOW_STATUS = {0: "ContinueToSend", 1: "Wait", 2: "Overflow"}


def _isotp_signals(profile: BusProfile) -> tuple[list[Signal], int, str]:
    """ISO 15765-2 protocol control information, multiplexed on the frame type."""
    field = profile.data_field
    sigs = [
        _be("TP_PciType", 0, 7, 4, is_multiplexer=True, choices=dict(_PCI_TYPES)),
        _be("TP_SF_DL", 0, 3, 4, unit="B", **_mux([0], "TP_PciType")),
        *_byte_fields("TP_SF_Data", 1, field, **_mux([0], "TP_PciType")),
        _be("TP_FF_DL", 0, 3, 12, unit="B", **_mux([1], "TP_PciType")),
        *_byte_fields("TP_FF_Data", 2, field, **_mux([1], "TP_PciType")),
        _be("TP_CF_SN", 0, 3, 4, **_mux([2], "TP_PciType")),
        *_byte_fields("TP_CF_Data", 1, field, **_mux([2], "TP_PciType")),
        _be("TP_FC_FlowStatus", 0, 3, 4, choices=dict(_FLOW_STATUS), **_mux([3], "TP_PciType")),
        _be("TP_FC_BlockSize", 1, 7, 8, **_mux([3], "TP_PciType")),
        _be("TP_FC_STmin", 2, 7, 8, **_mux([3], "TP_PciType")),
    ]
    note = "ISO-TP (ISO 15765-2) frames padded with 0xCC; flow control arrives on the other direction's ID"
    if profile.fd:
        note += (
            "; FD single frames above 7 bytes use SF_DL = 0 and the length in byte 1, and single, last "
            "consecutive and flow-control frames are shorter than 64 bytes (a DBC holds one length per ID)"
        )
    return sigs, field, note


# -- the secured database -----------------------------------------------------------------------


def _tiers_for(function: Function, policy: EncryptionPolicy) -> list[Tier]:
    """Tiers this function may be sent at: its minimum and above, and clear where the policy could allow it."""
    if function.tiers is not None:  # fixed by the protocol (resync), not by the policy
        return list(function.tiers)
    minimum = policy.minimum[MessageClass(function.message_class)]
    tiers = [t for t in Tier if t >= minimum]
    if minimum is not Tier.NONE:
        try:
            policy.with_clear(function.message_class)  # the policy's own rule says whether clear is allowed
        except VerificationError:
            pass
        else:
            tiers.insert(0, Tier.NONE)
    return tiers


def secure_message_name(function: Function, direction: Direction | None, tier: Tier, node: int | None = None) -> str:
    """``<FUNCTION>_<C2N|N2C>_<TIER>[_<NODE>]``, e.g. ``VOLTAGE_N2C_EXCHANGE_05``.

    ``direction`` None (a layout without a direction bit) leaves the direction out; ``node`` None
    (a database for one node) leaves the node out.
    """
    parts = [function.name]
    if direction is not None:
        parts.append(_DIR_SHORT[Direction(direction)])
    parts.append(Tier(tier).name)
    if node is not None:
        parts.append(f"{node:02X}")
    return "_".join(parts)


def plain_message_name(function: Function, direction: Direction, node: int | None = None) -> str:
    """``<FUNCTION>_<C2N|N2C>[_<NODE>]``: a decrypted unit in the cleartext view."""
    name = f"{function.name}_{_DIR_SHORT[Direction(direction)]}"
    return name if node is None else f"{name}_{node:02X}"


def _node_list(node: int | None, nodes: Iterable[int] | None) -> tuple[list[int], bool]:
    chosen = list(nodes) if nodes is not None else [DBC_MODULE_ID if node is None else node]
    if not chosen:
        raise ConfigError("no node to describe")
    for n in chosen:
        if not 0 <= n <= 0xFF:
            raise ConfigError(f"node {n:#x} is outside 0x00-0xFF")
    if len(set(chosen)) != len(chosen):
        raise ConfigError("a node is listed twice")
    return chosen, nodes is not None


def _cycle(payload: Payload | None, transport: Transport) -> int | None:
    """The documented period in ms of the units on a data-carrying identifier, else None (on event)."""
    if payload is None or payload.cycle_s is None or transport is Transport.BROADCAST_FRAGMENTS:
        return None
    return round(payload.cycle_s * 1000)


def build_secure_database(
    *,
    node: int | None = None,
    nodes: Iterable[int] | None = None,
    profile: BusProfile = CLASSIC,
    layout: IdLayout = SEED_LAYOUT,
    policy: EncryptionPolicy = DEFAULT_POLICY,
    functions: Iterable[Function] | None = None,
) -> cantools.database.can.Database:
    """The secured protocol on the wire, for one module ``node`` or several ``nodes``, on ``profile``.

    One message per node, function, direction and permitted tier, at the function's priority
    (what ``nodes.link.SelectiveLink`` sends), with the length the payload catalog fixes. With
    ``nodes`` every name ends in the node (``_1F``); with a single ``node`` (default 0x01) it does
    not. A direction that sends nothing over a single-frame connection has no message.
    """
    chosen, suffixed = _node_list(node, nodes)
    if layout.tier_signal is TierSignal.NONE:
        raise ConfigError(f"layout {layout.name} does not signal the tier; the secured DBC needs one that does")
    # A layout without a direction bit (j1939: the node field is the source address) gives both
    # directions one identifier, so it gets one message per function and tier.
    has_direction = any(f.name == "direction" for f in layout.fields)
    directions: tuple[Direction | None, ...] = tuple(Direction) if has_direction else (None,)
    carriers = {Transport.ISOTP: _isotp_signals(profile), Transport.BROADCAST_FRAGMENTS: _fragment_signals(profile)}
    messages: list[Message] = []
    seen: dict[int, str] = {}
    for function in functions if functions is not None else FUNCTIONS.values():
        entry = PAYLOADS[function.code]
        for direction in directions:
            sender, receiver = _DIR_SENDER[direction] if direction is not None else (None, None)
            payload = entry.direction(Direction.RESPONDER_TO_INITIATOR if direction is None else direction)
            for tier in _tiers_for(function, policy):
                transport = transport_for(function, tier, profile)
                if transport is Transport.SINGLE_FRAME:
                    if payload is None:
                        continue  # nothing travels this way on this connection
                    signals, length, layout_note = _single_frame_signals(tier, profile, payload)
                else:
                    template, length, layout_note = carriers[transport]
                    signals = [_copy(s) for s in template]
                fmt = frame_format(tier, profile)
                carried = "flow control only"
                if payload is not None:
                    carried = f"{payload.name} ({'variable' if payload.length is None else f'{payload.length} B'})"
                for n in chosen:
                    fields = function.id_fields(n, int(direction or 0), tier)
                    frame_id = layout.encode(fields)
                    name = secure_message_name(function, direction, tier, n if suffixed else None)
                    if frame_id in seen:  # a DBC maps each identifier to one message
                        raise ConfigError(f"{name} and {seen[frame_id]} share identifier {frame_id:#x}")
                    seen[frame_id] = name
                    sigs = [_copy(s) for s in signals] if n != chosen[0] else signals
                    for sig in sigs:
                        sig.receivers = [receiver] if receiver else []
                    unit = ""
                    if tier is Tier.BINDING:  # its reassembled unit depends on the pairing's protocol profile
                        sealed = frame_format(tier, profile, ProtocolProfile.EFFICIENT)
                        unit = (f" Reassembled unit, seed profile: FV({fmt.header_bytes}) | payload | ECDSA P-256 "
                                f"r|s ({fmt.tag_bytes} B); efficient profile: the pairing tier's format "
                                f"({sealed.tag_bytes}-byte tag, docs/profiles.md).")  # fmt: skip
                    flag = int(tier is not Tier.NONE)
                    way = _DIRECTIONS[int(direction)].replace("_", " ") if direction is not None else "either way"
                    cycle = _cycle(payload, transport)
                    rate = f" Every {cycle} ms." if cycle else " On event."
                    comment = (
                        f"{function.name} (0x{function.code:03x}, {function.message_class.value}) "
                        f"{way}, node 0x{n:02x}, tier {tier.label}: "
                        f"ID flag={flag} level={int(tier):02b} ({layout.name} layout). Carries {carried}. "
                        f"{layout_note}.{unit}{rate}"
                    )
                    messages.append(
                        Message(
                            frame_id=frame_id,
                            name=name,
                            length=length,
                            signals=sigs,
                            comment=comment,
                            senders=[sender] if sender else [],
                            is_extended_frame=layout.id_bits == 29,
                            is_fd=profile.fd,
                            cycle_time=cycle,
                            dbc_specifics=_attributes(
                                MB_EncFlag=flag,
                                MB_Level=int(tier),
                                MB_Function=function.code,
                                MB_Node=n,
                                MB_Transport=_TRANSPORTS.index(transport.value),
                                MB_ForgeryLog2=fmt.forgery_odds_log2 or 0,
                                GenMsgSendType=_SEND_TYPES.index("Cyclic" if cycle else "Event"),
                                **({"MB_Direction": int(direction)} if direction is not None else {}),
                            ),
                        )
                    )
    described = (
        "modules " + ", ".join(f"0x{n:02x}" for n in chosen)
        if len(chosen) < 4
        else (f"modules 0x{chosen[0]:02x}-0x{chosen[-1]:02x}")
    )
    db_nodes = [Node(NODE_CONTROLLER, "pack controller"), Node(NODE_MODULE, f"battery module ({described})")]
    buses = [
        Bus(
            f"modbatt_{profile.name}",
            baudrate=profile.nominal_bitrate,
            fd_baudrate=profile.data_bitrate if profile.fd else None,
        )
    ]
    return cantools.database.can.Database(
        messages=messages,
        nodes=db_nodes,
        buses=buses,
        version=f"modbatt-secure-2 {layout.name} {profile.name}",
        dbc_specifics=_database_specifics(profile.fd),
    )


def _copy(sig: Signal) -> Signal:
    """An independent copy of a signal (cantools signals are mutable and tied to one message)."""
    return Signal(
        name=sig.name,
        start=sig.start,
        length=sig.length,
        byte_order=sig.byte_order,
        is_signed=sig.is_signed,
        conversion=sig.conversion,
        unit=sig.unit,
        comment=sig.comment,
        is_multiplexer=sig.is_multiplexer,
        multiplexer_ids=list(sig.multiplexer_ids) if sig.multiplexer_ids else None,
        multiplexer_signal=sig.multiplexer_signal,
    )


def build_plain_database(
    *,
    node: int | None = None,
    nodes: Iterable[int] | None = None,
    layout: IdLayout = SEED_LAYOUT,
    functions: Iterable[Function] | None = None,
) -> cantools.database.can.Database:
    """The cleartext view: each fixed-length unit's decrypted payload with physical signals.

    A unit of function F sent in direction D to or from node N at any tier shows on F's tier-NONE
    identifier for (D, N), with the payload as data: classic frames up to 8 bytes, CAN FD frames
    (zero padded to a valid length) above. Variable units (signed CBOR, firmware blocks, logs)
    have no fixed layout and are not in this view.
    """
    chosen, suffixed = _node_list(node, nodes)
    if layout.tier_signal is TierSignal.NONE:
        raise ConfigError(f"layout {layout.name} does not signal the tier; the cleartext view needs one that does")
    messages: list[Message] = []
    for function in functions if functions is not None else FUNCTIONS.values():
        entry = PAYLOADS[function.code]
        for direction in Direction:
            payload = entry.direction(direction)
            if payload is None or payload.length is None:
                continue
            sender, receiver = _DIR_SENDER[direction]
            fd = payload.length > 8
            length = frame_length(payload.length, fd=fd)
            cycle = round(payload.cycle_s * 1000) if payload.cycle_s else None
            for n in chosen:
                if n == NODE_BROADCAST and function.name not in BROADCAST_FUNCTIONS:
                    continue
                frame_id = layout.encode(function.id_fields(n, int(direction), Tier.NONE))
                messages.append(
                    Message(
                        frame_id=frame_id,
                        name=plain_message_name(function, direction, n if suffixed else None),
                        length=length,
                        signals=[cantools_signal(s) for s in payload.signals],
                        comment=(
                            f"{function.name} {_DIRECTIONS[int(direction)].replace('_', ' ')}, node 0x{n:02x}: "
                            f"decrypted {payload.name} ({payload.length} B"
                            f"{', zero padded' if length > payload.length else ''}); {payload.source}"
                        ),
                        senders=[sender],
                        is_extended_frame=layout.id_bits == 29,
                        is_fd=fd,
                        cycle_time=cycle,
                        dbc_specifics=_attributes(
                            MB_Function=function.code,
                            MB_Node=n,
                            MB_Direction=int(direction),
                            GenMsgSendType=_SEND_TYPES.index("Cyclic" if cycle else "Event"),
                        ),
                    )
                )
                for sig in messages[-1].signals:
                    sig.receivers = [receiver]
    return cantools.database.can.Database(
        messages=messages,
        nodes=[Node(NODE_CONTROLLER, "pack controller"), Node(NODE_MODULE, "battery module")],
        buses=[Bus("modbatt_cleartext_view")],
        version=f"modbatt-plain-1 {layout.name}",
        dbc_specifics=_database_specifics(fd=True),
    )


# -- writing ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ExportedFile:
    """One written DBC file and what it holds."""

    path: Path
    title: str
    messages: int
    signals: int


def write_dbc(database: cantools.database.can.Database, path: str | os.PathLike[str]) -> Path:
    """Write ``database`` as DBC to ``path`` atomically (temporary file, fsync, rename).

    A reader sees the old file or the new one, never half of one. The file is re-read with
    cantools before it replaces anything, so a DBC cantools cannot load is never installed.
    """
    target = Path(path)
    text = database.as_dbc_string()
    cantools.database.load_string(text, database_format="dbc")  # refuse to install what we cannot read
    target.parent.mkdir(parents=True, exist_ok=True)
    # cp1252 and CRLF, as CANalyzer writes DBC files (and cantools reads them by default);
    # 0644 because a DBC is meant to be shared.
    write_atomic(target, text.encode("cp1252"), mode=0o644)
    return target


def export_dbc_files(
    directory: str | os.PathLike[str],
    *,
    pack_id: int = DBC_PACK_ID,
    module_id: int | None = None,
    profile: BusProfile = CLASSIC,
) -> list[ExportedFile]:
    """Write ``modbatt.dbc``, ``modbatt-plain.dbc`` and ``modbatt-legacy.dbc`` into ``directory``.

    The secured files describe every module node 0x01-0x1F, or only ``module_id`` when given;
    the legacy file describes ``module_id`` (default 0x01) and ``pack_id``.
    """
    out_dir = Path(directory)
    nodes = list(MODULE_NODES) if module_id is None else [module_id]
    which = f"modules 0x{nodes[0]:02x}-0x{nodes[-1]:02x}" if len(nodes) > 1 else f"module 0x{nodes[0]:02x}"
    legacy_module = DBC_MODULE_ID if module_id is None else module_id
    jobs = (
        (
            SECURE_DBC_NAME,
            f"secured protocol on the wire, {SEED_LAYOUT.name} layout, {profile.name} frames, {which}",
            lambda: build_secure_database(nodes=nodes, profile=profile),
        ),
        (
            PLAIN_DBC_NAME,
            f"cleartext view of decrypted units, {which}",
            lambda: build_plain_database(nodes=nodes),
        ),
        (
            LEGACY_DBC_NAME,
            f"legacy ModBatt buses, pack {pack_id}, module 0x{legacy_module:02x}",
            lambda: build_legacy_database(pack_id=pack_id, module_id=legacy_module),
        ),
    )
    written = []
    for name, title, build in jobs:
        db = build()
        path = write_dbc(db, out_dir / name)
        written.append(ExportedFile(path, title, len(db.messages), sum(len(m.signals) for m in db.messages)))
    return written
