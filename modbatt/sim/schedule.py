"""The pack's traffic as data: who sends what, at which rate, how big, over which transport.

One table for both simulators: :mod:`modbatt.sim.pack` sends exactly this on a python-can bus,
and :func:`modbatt.sim.load.simulate_pack_load` puts the same units on the simulated bus, so the
load figures describe the traffic the pack simulator really produces.

Rates (the ModBatt project's documents, dp-web4/modbatt-CAN; none of them is a measured figure of
the real pack):

==========================  =====================  ==========  ===================================
legacy message (catalog)    message class          period      source
==========================  =====================  ==========  ===================================
MODULE_STATUS_1 (0x502)     current_telemetry      100 ms      WF "module V/I 100 ms"
MODULE_STATUS_2 (0x503)     voltage_telemetry      500 ms      PR "cell data 500 ms"
MODULE_STATUS_3 (0x504)     temperature_telemetry  500 ms      WF "temperature 500 ms"
(none: 1-byte counter)      heartbeat, module→pack 1 s         WF "heartbeat 1 s"
(none: 1-byte counter)      heartbeat, pack→module 1 s         PR "keep-alive 1 s"
MODULE_STATE_CHANGE (0x514) charge/discharge cmd   1 s         no documented rate: a test load
MODULE_LIMITS (0x416)       safety_limits          5 s         no documented rate: a test load
(none: block + CRC-32)      firmware_update        0.5 s/pack  no documented rate: a test load
==========================  =====================  ==========  ===================================

The legacy module bus has no heartbeat message and no limits command, so the heartbeat is a
1-byte counter and the limits reuse the app-bus MODULE_LIMITS layout (id, discharge, charge,
end voltage). Every critical command starts with a 2-byte sequence number (per module and
class) so acknowledgements can be matched and losses or reordering detected; an ack is that
sequence number (bit 15 set = refused), sent back at the command's own class and tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..can.functions import function_for
from ..can.payloads import (
    ACK_BYTES,
    FIRMWARE_CHECK,
    FIRMWARE_HEADER,
    HEARTBEAT_BYTES,
    LEGACY_TELEMETRY_BYTES,
    LIMITS_BYTES,
    NACK_FLAG,
    SEQ_BYTES,
    SEQ_MASK,
    STATE_CHANGE_BYTES,
    TELEMETRY,
    TelemetrySpec,
    Transport,
    transport_for,
)
from ..can.secured import frame_format
from ..can.wiretime import BusProfile, frame_length, isotp_frame_lengths
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy, MessageClass
from ..model.tier import Tier
from ..transport.faultbus import FaultSpec

__all__ = [
    "ACK_BYTES",
    "COMMAND_CLASSES",
    "FIRMWARE_BLOCKS",
    "FIRMWARE_GIVE_UP",
    "HEARTBEAT_BYTES",
    "NACK_FLAG",
    "SEQ_BYTES",
    "SEQ_MASK",
    "TELEMETRY",
    "TelemetrySpec",
    "TrafficPlan",
    "firmware_block_for",
    "frames_for_unit",
    "sized_plan",
    "uses_isotp",
]

#: Critical operations the pack sends, each acknowledged by the module.
COMMAND_CLASSES: Final = (
    MessageClass.CHARGE_COMMAND,
    MessageClass.DISCHARGE_COMMAND,
    MessageClass.SAFETY_LIMITS,
    MessageClass.FIRMWARE_UPDATE,
)


@dataclass(frozen=True, slots=True)
class TrafficPlan:
    """Periods and sizes of one simulated pack (defaults: the documented rates above)."""

    heartbeat_period: float = 1.0
    keepalive_period: float = 1.0
    command_period: float = 1.0
    limits_period: float = 5.0
    firmware_period: float = 0.5
    firmware_block: int = 256
    policy: EncryptionPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        for name in ("heartbeat_period", "keepalive_period", "command_period", "limits_period", "firmware_period"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not 1 <= self.firmware_block <= 2048:
            raise ValueError("firmware_block must be 1-2048 bytes")

    def payload_sizes(self, message_class: MessageClass) -> tuple[int, int]:
        """Largest payload (pack→module, module→pack) this plan sends for a class."""
        cls = MessageClass(message_class)
        if cls in {t.message_class for t in TELEMETRY}:
            return 0, LEGACY_TELEMETRY_BYTES
        if cls is MessageClass.HEARTBEAT:
            return HEARTBEAT_BYTES, HEARTBEAT_BYTES
        if cls in (MessageClass.CHARGE_COMMAND, MessageClass.DISCHARGE_COMMAND):
            return SEQ_BYTES + STATE_CHANGE_BYTES, ACK_BYTES
        if cls is MessageClass.SAFETY_LIMITS:
            return SEQ_BYTES + LIMITS_BYTES, ACK_BYTES
        if cls is MessageClass.FIRMWARE_UPDATE:
            return SEQ_BYTES + FIRMWARE_HEADER + self.firmware_block + FIRMWARE_CHECK, ACK_BYTES
        return 0, 0

    def tier(self, message_class: MessageClass) -> Tier:
        return self.policy.tier_for(message_class)


def uses_isotp(plan: TrafficPlan, message_class: MessageClass, profile: BusProfile, tier: Tier | None = None) -> bool:
    """Whether a class's connection runs ISO-TP (both directions) or one secured frame per unit.

    A connection is the pair of identifiers (controller→node, node→controller) of one function at
    one tier for one module. ISO-TP flow control travels on the reverse identifier, so both
    directions must use the same framing: ISO-TP as soon as any unit in either direction is
    larger than one frame. The receiver derives the same answer from the identifier alone.
    The rule is the payload catalog's (:func:`modbatt.can.payloads.transport_for`), so the DBC
    describes exactly these frames.
    """
    tier = plan.tier(message_class) if tier is None else tier
    return transport_for(function_for(message_class), tier, profile) is not Transport.SINGLE_FRAME


#: The chance a firmware block may be given up with, at most, on a lossy bus (docs/delivery.md §3).
FIRMWARE_GIVE_UP: Final = 1e-6
#: Firmware block sizes to choose from, largest (the default on a clean bus) first.
FIRMWARE_BLOCKS: Final = (256, 128, 64, 32, 16, 8)


def firmware_block_for(
    profile: BusProfile, loss: float, tries: int, *, policy: EncryptionPolicy = DEFAULT_POLICY,
    give_up: float = FIRMWARE_GIVE_UP,
) -> int:  # fmt: skip
    """The largest block of :data:`FIRMWARE_BLOCKS` that ``tries`` tries deliver except with
    probability ``give_up`` when the bus loses a fraction ``loss`` of frames.

    ISO-TP has no retransmission of its own: a try succeeds only if every frame of the secured
    unit, the receiver's flow control and the one-frame acknowledgement arrive, with probability
    ``q = (1 - loss) ** (frames + 1)``; all ``tries`` fail with ``(1 - q) ** tries``
    (docs/delivery.md §3). The smallest block if none is good enough.
    """
    if not 0.0 <= loss < 1.0 or tries < 1:
        raise ValueError("loss must be in [0, 1) and tries at least 1")
    overhead = frame_format(policy.tier_for(MessageClass.FIRMWARE_UPDATE), profile).overhead
    for block in FIRMWARE_BLOCKS:
        unit = SEQ_BYTES + FIRMWARE_HEADER + block + FIRMWARE_CHECK + overhead
        arrives = (1.0 - loss) ** (len(frames_for_unit(unit, profile, isotp=True)) + 1)
        if (1.0 - arrives) ** tries <= give_up:
            return block
    return FIRMWARE_BLOCKS[-1]


def sized_plan(profile: BusProfile, faults: FaultSpec | None, tries: int) -> TrafficPlan:
    """The default plan, its firmware blocks sized for the bus's configured faults (:func:`firmware_block_for`)."""
    loss = faults.frame_loss if faults is not None else 0.0
    return TrafficPlan(firmware_block=firmware_block_for(profile, loss, tries))


def frames_for_unit(unit_bytes: int, profile: BusProfile, isotp: bool) -> list[int]:
    """Data lengths of the frames one unit takes (ISO-TP includes the receiver's flow control at index 1).

    ISO-TP frames are as can-isotp sends them with :func:`modbatt.can.fragment.isotp_params`:
    on classic CAN ``tx_padding`` pads every frame, flow control included, to 8 bytes (checked
    against can-isotp 2.0.7 on a virtual bus); on FD to the next valid length, flow control 3
    bytes. :func:`~modbatt.can.wiretime.isotp_frame_lengths` counts unpadded classic frames.
    """
    if not isotp:
        return [frame_length(unit_bytes, fd=profile.fd)]
    lengths = isotp_frame_lengths(unit_bytes, profile)
    return lengths if profile.fd else [profile.data_field] * len(lengths)
