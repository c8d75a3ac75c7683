"""What each secured function carries: the cleartext payload per direction, its length and rate.

The single definition behind the DBC files (:mod:`modbatt.can.dbc`), the monitor's decoding of
decrypted payloads, ``modbatt decode`` and the pack simulator's traffic (:mod:`modbatt.sim.schedule`
takes its sizes and rates from here). See docs/can-fragmentation-and-dbc.md §3.

**Fixed length per function and direction.** A DBC holds one layout per identifier, and the
freshness value and tag of a protected frame sit right after the ciphertext, so a DBC can only
describe a frame exactly when its payload length never changes. Every function therefore carries
either a payload of one fixed length in each direction, or a *variable* payload that always
travels over a multi-frame transport (ISO-TP, or the broadcast fragments), whose frames have a
fixed length (classic CAN pads them to 8 bytes with 0xCC). A sender that follows this table
produces frames the DBC describes byte for byte; :func:`transport_for` says which transport a
(function, tier, profile) uses, and the simulator uses the same rule.

Payload layouts reuse the legacy catalog (``legacy-can-catalog.csv``) so physical values keep the
firmware's scales and units: module telemetry is the module bus's MODULE_STATUS_1/2/3, commands
are MODULE_STATE_CHANGE and MODULE_LIMITS behind a 2-byte sequence number, an acknowledgement is
that sequence number with bit 15 meaning "refused".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Final

from ..model.policy import MessageClass
from ..model.tier import Tier
from .catalog import LegacySignal, load_catalog, message_by_base
from .functions import FUNCTIONS, Function
from .secured import Direction, frame_format
from .wiretime import BusProfile

__all__ = [
    "ACK_BYTES",
    "BROADCAST_FUNCTIONS",
    "FIRMWARE_CHECK",
    "FIRMWARE_HEADER",
    "HEARTBEAT_BYTES",
    "LEGACY_TELEMETRY_BYTES",
    "LIMITS_BYTES",
    "NACK_FLAG",
    "PAYLOADS",
    "SEQ_BYTES",
    "SEQ_MASK",
    "STATE_CHANGE_BYTES",
    "TELEMETRY",
    "FunctionPayloads",
    "Payload",
    "TelemetrySpec",
    "Transport",
    "payload_of",
    "transport_for",
]

SEQ_BYTES: Final = 2  # sequence number in front of every acknowledged command (big-endian)
ACK_BYTES: Final = 2  # the acknowledged sequence number, bit 15 set = refused
NACK_FLAG: Final = 0x8000
SEQ_MASK: Final = 0x7FFF
HEARTBEAT_BYTES: Final = 1  # a rolling counter
LEGACY_TELEMETRY_BYTES: Final = 8  # MODULE_STATUS_1/2/3
STATE_CHANGE_BYTES: Final = 4  # legacy MODULE_STATE_CHANGE DLC
LIMITS_BYTES: Final = 8  # legacy MODULE_LIMITS DLC
FIRMWARE_HEADER: Final = 4  # block offset (u32)
FIRMWARE_CHECK: Final = 4  # CRC-32 of the block

#: Functions whose multi-frame units go to every node at once, so ISO-TP (one receiver answering
#: flow control) cannot carry them: the level-1 announce and witness broadcasts.
BROADCAST_FUNCTIONS: Final = frozenset({"ANNOUNCE", "WITNESS"})


class Transport(enum.StrEnum):
    """How the frames of one identifier are to be read (the DBC's ``MB_Transport`` attribute)."""

    SINGLE_FRAME = "single_frame"
    BROADCAST_FRAGMENTS = "broadcast_fragments"
    ISOTP = "isotp"


@dataclass(frozen=True, slots=True)
class Payload:
    """One direction's cleartext payload of one function.

    ``length`` is the fixed number of bytes, or ``None`` for a variable payload (always sent over
    a multi-frame transport). ``signals`` are at their bit positions inside the payload (Intel
    numbering as in the legacy catalog, or big-endian where marked). ``cycle_s`` is the documented
    period, ``None`` for event-driven messages.
    """

    name: str
    length: int | None
    signals: tuple[LegacySignal, ...] = ()
    cycle_s: float | None = None
    source: str = ""


@dataclass(frozen=True, slots=True)
class FunctionPayloads:
    """Both directions of one function (``None``: nothing is sent that way)."""

    function: Function
    c2n: Payload | None
    n2c: Payload | None

    def direction(self, direction: Direction | int) -> Payload | None:
        return self.c2n if Direction(direction) is Direction.INITIATOR_TO_RESPONDER else self.n2c

    @property
    def variable(self) -> bool:
        return any(p is not None and p.length is None for p in (self.c2n, self.n2c))

    @property
    def largest(self) -> int:
        """Largest fixed payload in either direction (0 when none)."""
        return max((p.length or 0 for p in (self.c2n, self.n2c) if p is not None), default=0)


def _sig(name: str, start: int, length: int, *, big: bool = False, scale: float = 1.0, unit: str = "",
         comment: str = "", choices: tuple[tuple[int, str], ...] = ()) -> LegacySignal:  # fmt: skip
    return LegacySignal(name, start, length, "big_endian" if big else "little_endian", False, scale, 0.0, unit,
                        comment, choices)  # fmt: skip


def _shifted(base: int, by_bytes: int) -> tuple[LegacySignal, ...]:
    """The legacy message's signals moved ``by_bytes`` later (behind a sequence number)."""
    signals = message_by_base(base, load_catalog()).signals
    return tuple(replace(s, start_bit=s.start_bit + 8 * by_bytes) for s in signals)


def _legacy(base: int) -> tuple[str, int, tuple[LegacySignal, ...]]:
    msg = message_by_base(base, load_catalog())
    return msg.name, msg.dlc, msg.signals


_SEQ = _sig("Seq", 7, 16, big=True, comment="sequence number per module and class (15 bits used)")
_ACK = Payload(
    "ACK",
    ACK_BYTES,
    (
        _sig("Refused", 7, 1, big=True, choices=((0, "accepted"), (1, "refused"))),
        _sig("AckSeq", 6, 15, big=True, comment="sequence number of the acknowledged command"),
    ),
    source="acknowledgement: the command's sequence number, bit 15 = refused",
)
_HEARTBEAT = Payload(
    "HEARTBEAT", HEARTBEAT_BYTES, (_sig("Counter", 0, 8, comment="rolling counter"),), 1.0, "heartbeat 1 s"
)


def _telemetry(base: int, cycle_s: float, source: str) -> Payload:
    name, dlc, signals = _legacy(base)
    return Payload(name, dlc, signals, cycle_s, source)


def _command(base: int) -> Payload:
    name, dlc, _ = _legacy(base)
    return Payload(name, SEQ_BYTES + dlc, (_SEQ, *_shifted(base, SEQ_BYTES)), None, f"Seq then legacy {name}")


def _variable(name: str, source: str) -> Payload:
    return Payload(name, None, (), None, source)


_FIRMWARE = Payload(
    "FIRMWARE_BLOCK",
    None,
    (_SEQ, _sig("Offset", 23, 32, big=True, unit="B", comment="block offset in the image")),
    None,
    "Seq, offset (u32), block, CRC-32 of the block; the block size is the sender's choice",
)

# Pack-management commands (docs/lifecycle.md §5): a sequence number and one byte, 3 bytes, so
# that at the pairing tier each is one classic frame (3 + 5 = 8 bytes). The balancing byte is the
# app bus's 2-bit control the gateway forwards (docs/gateway.md); upstream defines no values for
# it, nor any content for an emergency shutdown, whose byte is carried raw.
_BALANCING = Payload(
    "CELL_BALANCING",
    SEQ_BYTES + 1,
    (_SEQ, _sig("CellBalanceCtrl", 16, 2, comment="balancing control as on the app bus (0x400/0x404)")),
    None,
    "Seq then the 1-byte balancing control (docs/gateway.md)",
)
_SHUTDOWN = Payload(
    "EMERGENCY_SHUTDOWN",
    SEQ_BYTES + 1,
    (_SEQ, _sig("ShutdownCode", 16, 8, comment="shutdown request code; upstream defines none")),
    None,
    "Seq then a 1-byte shutdown code: one classic frame at the pairing tier",
)

# Freshness resync (docs/can-frames.md §3): a receiver's 8-byte challenge in clear; the answer is
# the sender's full freshness value and its tag or signature under the tier key (FV 7 B + 4, 16 or
# 64 B), a protected unit that is not a regular payload, so it is described as variable.
_CHALLENGE = Payload(
    "RESYNC_CHALLENGE",
    8,
    (_sig("Challenge", 7, 64, big=True, comment="random resync challenge"),),
    None,
    "8-byte random challenge, in clear",
)

_TABLE: Final = {
    "RESYNC_REQUEST": (_CHALLENGE, _CHALLENGE),
    "RESYNC_RESTART": (_CHALLENGE, _CHALLENGE),
    "RESYNC_ANSWER": (_variable("RESYNC_ANSWER", "full FV and tag"), _variable("RESYNC_ANSWER", "full FV and tag")),
    # Binding tier: signed CBOR units, always multi-frame.
    "ANNOUNCE": (_variable("ANNOUNCE", "signed announce"), _variable("ANNOUNCE", "signed announce")),
    "WITNESS": (_variable("WITNESS", "witness statement"), _variable("WITNESS", "witness statement")),
    "VALIDATION": (_variable("VALIDATION", "validation message"), _variable("VALIDATION", "validation message")),
    "CERTIFICATE": (_variable("CERTIFICATE", "pairing certificate"), _variable("CERTIFICATE", "acknowledgement")),
    "BINDING_API": (_variable("BINDING_REQUEST", "binding API request"), _variable("BINDING_ANSWER", "answer")),
    # Routine monitoring: the legacy module-bus telemetry at its documented rates.
    "VOLTAGE": (None, _telemetry(0x503, 0.500, "PR: cell data 500 ms")),
    "CURRENT": (None, _telemetry(0x502, 0.100, "WF: module V/I 100 ms")),
    "TEMPERATURE": (None, _telemetry(0x504, 0.500, "WF: temperature 500 ms")),
    "STATUS": (None, _variable("STATUS", "status report")),
    "HEARTBEAT": (replace(_HEARTBEAT, source="keep-alive 1 s"), _HEARTBEAT),
    "LOG": (None, _variable("LOG", "log text")),
    # Critical operations: a sequence number, the legacy command, acknowledged by the module.
    "CHARGE_COMMAND": (_command(0x514), _ACK),
    "DISCHARGE_COMMAND": (_command(0x514), _ACK),
    "SAFETY_LIMITS": (_command(0x416), _ACK),
    "FIRMWARE_UPDATE": (_FIRMWARE, _ACK),
    "CONFIGURATION": (_variable("CONFIGURATION", "configuration record"), _ACK),
    "CRITICAL_TELEMETRY": (None, _variable("CRITICAL_TELEMETRY", "critical telemetry")),
    "EMERGENCY_SHUTDOWN": (_SHUTDOWN, _ACK),
    "CELL_BALANCING": (_BALANCING, _ACK),
}

#: Function code -> its payloads in both directions.
PAYLOADS: Final = MappingProxyType({code: FunctionPayloads(f, *_TABLE[f.name]) for code, f in FUNCTIONS.items()})


def payload_of(function: int | Function, direction: Direction | int) -> Payload | None:
    """The cleartext payload ``function`` carries in ``direction`` (``None``: nothing goes that way)."""
    code = function.code if isinstance(function, Function) else int(function)
    return PAYLOADS[code].direction(direction)


def transport_for(function: int | Function, tier: Tier, profile: BusProfile) -> Transport:
    """The transport every frame of (function, tier, profile) uses, in both directions.

    BINDING units never fit one frame (a 64-byte signature). Otherwise a connection (the two
    identifiers of one function at one tier for one node) runs ISO-TP as soon as either
    direction's payload is variable or too big for one frame: ISO-TP flow control travels on
    the reverse identifier, so both directions use the same framing.
    """
    entry = PAYLOADS[function.code if isinstance(function, Function) else int(function)]
    tier = Tier(tier)
    if tier is Tier.BINDING:
        return Transport.BROADCAST_FRAGMENTS if entry.function.name in BROADCAST_FUNCTIONS else Transport.ISOTP
    if entry.variable or entry.largest + frame_format(tier, profile).overhead > profile.data_field:
        return Transport.ISOTP
    return Transport.SINGLE_FRAME


@dataclass(frozen=True, slots=True)
class TelemetrySpec:
    """One periodic module message: legacy catalog name, class for the tier policy, period (s)."""

    legacy: str
    message_class: MessageClass
    period: float
    source: str


#: Module telemetry at the documented rates, in legacy catalog order (MODULE_STATUS_1, 2, 3).
TELEMETRY: Final = tuple(
    sorted(
        (
            TelemetrySpec(p.n2c.name, p.function.message_class, p.n2c.cycle_s, p.n2c.source)
            for p in PAYLOADS.values()
            if p.n2c is not None
            and p.n2c.length is not None
            and p.n2c.cycle_s is not None
            and p.function.name != "HEARTBEAT"
        ),
        key=lambda spec: spec.legacy,
    )
)
