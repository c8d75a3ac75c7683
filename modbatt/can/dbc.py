"""DBC files: the secured protocol's cleartext view, and the legacy ModBatt buses.

Two databases, both built from the single definitions elsewhere in ``modbatt.can``:

* :func:`build_secure_database`: what a CAN engineer sees of the secured protocol in SavvyCAN,
  CANalyzer or ``cantools decode``. Identifiers come from the ID layout (``ids.SEED_LAYOUT``), the
  functions from ``functions.FUNCTIONS``, the tiers from the default encryption policy, the byte
  layouts from ``secured.frame_format`` and the carrier formats from ``fragment``. Nothing is
  decrypted: ciphertext, freshness and MAC show as raw fields.
* :func:`~modbatt.can.catalog.build_legacy_database`: the legacy catalog (see ``catalog``).

A DBC signal lives in the data field and cannot read identifier bits. So the ID-derived fields
(encryption flag, level, function, direction, node) are carried as message attributes
(``MB_EncFlag``, ``MB_Level``, ``MB_Function``, ``MB_Direction``, ``MB_Node``, ``MB_Transport``),
in the message name ``<FUNCTION>_<C2N|N2C>_<TIER>`` and in the message comment. Each tier a
function may legitimately use is its own message, because each tier is its own identifier.

Data-field layouts (``n`` = payload bytes; the DBC describes the full frame):

* NONE: the payload, shown raw (``Payload``; FD: ``Payload_0`` … ``Payload_7``).
* EXCHANGE / PAIRING, classic: ``Ciphertext`` (3 B) | ``FreshnessLow`` (FV bits 7-0) | ``MAC``
  (4-byte CCM tag). A shorter payload sends a shorter frame (DLC ``n + 5``): FV and MAC move left
  and the DBC, which has one layout per ID, no longer matches. ``cantools decode`` says "wrong
  data size".
* EXCHANGE / PAIRING, FD: ``Freshness`` (56-bit FV) | ``PadCount`` | ciphertext | 16-byte GCM tag
  | zero padding; the full frame carries 40 payload bytes and the tag in bytes 48-63.
* BINDING: always more than one frame (a 64-byte signature), so its identifiers carry transport
  frames: the broadcast fragment header for functions sent to everyone (:data:`BROADCAST_FUNCTIONS`)
  and ISO-TP PCI fields for the others. An ISO-TP link uses the two directions of one function as
  its pair of IDs, so flow-control frames come on the opposite direction's ID.

All multi-byte fields of the secured formats are big-endian (Motorola in DBC terms), so a
field's hex reads in wire order.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import cantools.database
from cantools.database.can import Bus, Message, Node, Signal
from cantools.database.can.formats.dbc import DbcAttribute, DbcAttributeDefinition, DbcSpecifics
from cantools.database.conversion import BaseConversion

from ..errors import ConfigError, VerificationError
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy, MessageClass
from ..model.tier import Tier
from . import fragment
from .catalog import DBC_MODULE_ID, DBC_PACK_ID, build_legacy_database
from .functions import FUNCTIONS, Function
from .ids import SEED_LAYOUT, IdLayout, TierSignal
from .secured import Direction, frame_format
from .wiretime import CLASSIC, BusProfile

__all__ = [
    "BROADCAST_FUNCTIONS",
    "LEGACY_DBC_NAME",
    "SECURE_DBC_NAME",
    "ExportedFile",
    "Transport",
    "build_legacy_database",
    "build_secure_database",
    "export_dbc_files",
    "secure_message_name",
    "write_dbc",
]

SECURE_DBC_NAME = "modbatt.dbc"
LEGACY_DBC_NAME = "modbatt-legacy.dbc"

#: Functions whose multi-frame units go to every node at once, so ISO-TP (one receiver answering
#: flow control) cannot carry them: the level-1 announce and witness broadcasts.
BROADCAST_FUNCTIONS = frozenset({"ANNOUNCE", "WITNESS"})

NODE_CONTROLLER = "PACK_CONTROLLER"
NODE_MODULE = "MODULE"
_DIR_SHORT = {Direction.INITIATOR_TO_RESPONDER: "C2N", Direction.RESPONDER_TO_INITIATOR: "N2C"}
_DIR_SENDER = {
    Direction.INITIATOR_TO_RESPONDER: (NODE_CONTROLLER, NODE_MODULE),
    Direction.RESPONDER_TO_INITIATOR: (NODE_MODULE, NODE_CONTROLLER),
}


class Transport:
    """How an identifier's frames are to be read (values of the ``MB_Transport`` attribute)."""

    SINGLE_FRAME = "single_frame"
    BROADCAST_FRAGMENTS = "broadcast_fragments"
    ISOTP = "isotp"
    ALL = (SINGLE_FRAME, BROADCAST_FRAGMENTS, ISOTP)


# -- DBC attribute definitions ------------------------------------------------------------------

_LEVELS = [t.label for t in Tier]  # ENUM index = the seed's 2-bit level code
_DIRECTIONS = ["controller_to_node", "node_to_controller"]  # index = the seed layout's dir bit


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
        _attr_def("MB_Transport", "ENUM", Transport.ALL[0], choices=list(Transport.ALL)),
        _attr_def("MB_ForgeryLog2", "INT", 0, minimum=-128, maximum=0),
    )
)


# Vector's network attribute: "CAN FD" makes writers emit VFrameFormat, so tools see FD frames.
_BUS_TYPE = DbcAttributeDefinition("BusType", default_value="CAN", kind=None, type_name="STRING")


def _attributes(**values: int) -> DbcSpecifics:
    """Message attributes; ENUM values are written as their index, as DBC requires."""
    return DbcSpecifics(
        attributes=OrderedDict((name, DbcAttribute(value, _ATTRS[name])) for name, value in values.items())
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


def _secured_signals(tier: Tier, profile: BusProfile) -> tuple[list[Signal], str]:
    """Signals and a one-line layout description for a single-frame unit of ``tier``."""
    fmt = frame_format(tier, profile)
    field = profile.data_field
    if tier is Tier.NONE:
        return _byte_fields("Payload", 0, field), "payload in clear"
    if not profile.fd:
        # ct(n) | FV low bits | tag: at full length the payload fills what the trailer leaves.
        room = fmt.room
        fv_bytes = fmt.fv_bits // 8
        sigs = [
            *_byte_fields("Ciphertext", 0, room),
            _be("FreshnessLow", room, 7, fmt.fv_bits, comment="freshness value, low bits (SecOC-style)"),
            *_byte_fields("MAC", room + fv_bytes, field),
        ]
        sigs[-1].comment = f"truncated tag, {fmt.tag_bytes} bytes: forgery odds 2^{fmt.forgery_odds_log2} per try"
        return sigs, (
            f"ciphertext({room}) | FV low {fmt.fv_bits} bits | {fmt.tag_bytes}-byte tag; "
            f"a payload of n < {room} bytes gives DLC n + {fmt.overhead} with FV and tag moved left"
        )
    fv_bytes = fmt.fv_bits // 8
    tag_at = field - fmt.tag_bytes
    sigs = [
        _be("Freshness", 0, 7, fmt.fv_bits, comment="full freshness value"),
        _be("PadCount", fv_bytes, 7, 8 * (fmt.header_bytes - fv_bytes), comment="zero bytes after the tag"),
        *_byte_fields("Ciphertext", fmt.header_bytes, tag_at),
        *_byte_fields("MAC", tag_at, field),
    ]
    return sigs, (
        f"FV({fv_bytes}) | pad count | ciphertext({fmt.room}) | {fmt.tag_bytes}-byte tag | zero padding; "
        "shorter payloads move the tag left by the padding"
    )


def _fragment_signals(profile: BusProfile) -> tuple[list[Signal], str]:
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
    return sigs, (
        "broadcast fragments: transfer id (4 bits) | index (12 bits) [| total length u16 in fragment 0] | "
        "data of message | CRC-32; see docs/can-fragmentation-and-dbc.md"
    )


_PCI_TYPES = {0: "SingleFrame", 1: "FirstFrame", 2: "ConsecutiveFrame", 3: "FlowControl"}
_FLOW_STATUS = {0: "ContinueToSend", 1: "Wait", 2: "Overflow"}


def _isotp_signals(profile: BusProfile) -> tuple[list[Signal], str]:
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
    note = "ISO-TP (ISO 15765-2) frames, padded with 0xCC; flow control arrives on the other direction's ID"
    if profile.fd:
        note += "; FD single frames above 7 bytes use SF_DL = 0 and the length in byte 1"
    return sigs, note


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


def secure_message_name(function: Function, direction: Direction | None, tier: Tier) -> str:
    """``<FUNCTION>_<C2N|N2C>_<TIER>``, e.g. ``VOLTAGE_N2C_EXCHANGE`` (at most 32 characters).

    ``direction`` None (a layout without a direction bit) gives ``<FUNCTION>_<TIER>``.
    """
    if direction is None:
        return f"{function.name}_{Tier(tier).name}"
    return f"{function.name}_{_DIR_SHORT[Direction(direction)]}_{Tier(tier).name}"


def build_secure_database(
    *,
    node: int = DBC_MODULE_ID,
    profile: BusProfile = CLASSIC,
    layout: IdLayout = SEED_LAYOUT,
    policy: EncryptionPolicy = DEFAULT_POLICY,
    functions: Iterable[Function] | None = None,
) -> cantools.database.can.Database:
    """The secured protocol's cleartext view for one module ``node`` on one bus ``profile``.

    One message per function, direction and permitted tier, at the function's priority (what
    ``nodes.link.SelectiveLink`` sends).
    """
    if not 0 <= node <= 0xFF:
        raise ConfigError(f"node {node:#x} is outside 0x00-0xFF")
    if layout.tier_signal is TierSignal.NONE:
        raise ConfigError(f"layout {layout.name} does not signal the tier; the secured DBC needs one that does")
    # A layout without a direction bit (j1939: the node field is the source address) gives both
    # directions one identifier, so it gets one message per function and tier.
    has_direction = any(f.name == "direction" for f in layout.fields)
    directions: tuple[Direction | None, ...] = tuple(Direction) if has_direction else (None,)
    messages: list[Message] = []
    seen: dict[int, str] = {}
    for function in functions if functions is not None else FUNCTIONS.values():
        for direction in directions:
            sender, receiver = _DIR_SENDER[direction] if direction is not None else (None, None)
            for tier in _tiers_for(function, policy):
                fields = function.id_fields(node, int(direction or 0), tier)
                frame_id = layout.encode(fields)
                name = secure_message_name(function, direction, tier)
                if frame_id in seen:  # a DBC maps each identifier to one message
                    raise ConfigError(f"{name} and {seen[frame_id]} share identifier {frame_id:#x}")
                seen[frame_id] = name
                fmt = frame_format(tier, profile)
                if fmt.room > 0:
                    transport = Transport.SINGLE_FRAME
                    signals, layout_note = _secured_signals(tier, profile)
                elif function.name in BROADCAST_FUNCTIONS:
                    transport = Transport.BROADCAST_FRAGMENTS
                    signals, layout_note = _fragment_signals(profile)
                else:
                    transport = Transport.ISOTP
                    signals, layout_note = _isotp_signals(profile)
                for sig in signals:
                    sig.receivers = [receiver] if receiver else []
                unit = ""
                if tier is Tier.BINDING:
                    unit = f" Reassembled unit: FV({fmt.header_bytes}) | payload | ECDSA P-256 r|s ({fmt.tag_bytes} B)."
                decoded = layout.decode(frame_id)
                flag = int(decoded.encrypted)
                way = _DIRECTIONS[int(direction)].replace("_", " ") if direction is not None else "either way"
                comment = (
                    f"{function.name} (0x{function.code:03x}, {function.message_class.value}) "
                    f"{way}, node 0x{node:02x}, tier {tier.label}: "
                    f"ID flag={flag} level={int(tier):02b} ({layout.name} layout). {layout_note}.{unit}"
                )
                messages.append(
                    Message(
                        frame_id=frame_id,
                        name=name,
                        length=profile.data_field,
                        signals=signals,
                        comment=comment,
                        senders=[sender] if sender else [],
                        is_extended_frame=layout.id_bits == 29,
                        is_fd=profile.fd,
                        dbc_specifics=_attributes(
                            MB_EncFlag=flag,
                            MB_Level=int(tier),
                            MB_Function=function.code,
                            MB_Node=node,
                            MB_Transport=Transport.ALL.index(transport),
                            MB_ForgeryLog2=fmt.forgery_odds_log2 or 0,
                            **({"MB_Direction": int(direction)} if direction is not None else {}),
                        ),
                    )
                )
    nodes = [Node(NODE_CONTROLLER, "pack controller"), Node(NODE_MODULE, f"battery module, node 0x{node:02x}")]
    buses = [
        Bus(
            f"modbatt_{profile.name}",
            baudrate=profile.nominal_bitrate,
            fd_baudrate=profile.data_bitrate if profile.fd else None,
        )
    ]
    return cantools.database.can.Database(
        messages=messages,
        nodes=nodes,
        buses=buses,
        version=f"modbatt-secure-1 {layout.name} {profile.name}",
        dbc_specifics=DbcSpecifics(
            attributes=OrderedDict([("BusType", DbcAttribute("CAN FD" if profile.fd else "CAN", _BUS_TYPE))]),
            attribute_definitions=OrderedDict([*_ATTRS.items(), (_BUS_TYPE.name, _BUS_TYPE)]),
        ),
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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        # cp1252 and CRLF, as CANalyzer writes DBC files (and cantools reads them by default).
        with os.fdopen(fd, "w", encoding="cp1252", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a DBC is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every platform lets us open a directory
        dir_fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return target
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return target


def export_dbc_files(
    directory: str | os.PathLike[str],
    *,
    pack_id: int = DBC_PACK_ID,
    module_id: int = DBC_MODULE_ID,
    profile: BusProfile = CLASSIC,
) -> list[ExportedFile]:
    """Write ``modbatt.dbc`` (secured protocol, node = ``module_id``) and ``modbatt-legacy.dbc``."""
    out_dir = Path(directory)
    jobs = (
        (
            SECURE_DBC_NAME,
            f"secured protocol, {SEED_LAYOUT.name} layout, {profile.name} frames, node 0x{module_id:02x}",
            build_secure_database(node=module_id, profile=profile),
        ),
        (
            LEGACY_DBC_NAME,
            f"legacy ModBatt buses, pack {pack_id}, module 0x{module_id:02x}",
            build_legacy_database(pack_id=pack_id, module_id=module_id),
        ),
    )
    written = []
    for name, title, db in jobs:
        path = write_dbc(db, out_dir / name)
        written.append(ExportedFile(path, title, len(db.messages), sum(len(m.signals) for m in db.messages)))
    return written
