"""Security overhead on the wire: what each tier costs a message of a given size on a profile.

Pure arithmetic over the frame formats (:mod:`.secured`) and the wire-time model
(:mod:`.wiretime`); used by the codec docs, the figures, the notebooks and ``modbatt sweep``.
"""

from __future__ import annotations

import dataclasses

from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from .secured import frame_format
from .wiretime import BusProfile, frame_length, frame_time, isotp_frame_lengths

__all__ = ["MessageCost", "message_cost"]


@dataclasses.dataclass(frozen=True, slots=True)
class MessageCost:
    """The wire cost of one message (all its frames, ISO-TP flow control included)."""

    tier: str
    bus: str  # bus profile (classic, fd)
    profile: str  # protocol profile of the pairing (only the binding tier depends on it)
    payload_bytes: int
    unit_bytes: int  # payload plus the tier's header/trailer
    frames: int
    wire_time_us_worst: float
    wire_time_us_best: float
    goodput_bytes_per_s: float  # payload bytes per second of bus time, worst case

    def as_row(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def message_cost(
    tier: Tier, profile: BusProfile, payload_bytes: int, protocol: ProtocolProfile = DEFAULT_PROFILE
) -> MessageCost:
    """Frames and bus time of one ``payload_bytes`` message at ``tier`` on bus ``profile``, under ``protocol``."""
    protocol = ProtocolProfile(protocol)
    fmt = frame_format(Tier(tier), profile, protocol)
    unit = payload_bytes + fmt.overhead
    lengths = [frame_length(unit, fd=profile.fd)] if unit <= profile.data_field else isotp_frame_lengths(unit, profile)
    worst = sum(frame_time(profile, n, worst=True) for n in lengths)
    best = sum(frame_time(profile, n, worst=False) for n in lengths)
    return MessageCost(
        tier=Tier(tier).label,
        bus=profile.name,
        profile=protocol.value,
        payload_bytes=payload_bytes,
        unit_bytes=unit,
        frames=len(lengths),
        wire_time_us_worst=round(worst * 1e6, 3),
        wire_time_us_best=round(best * 1e6, 3),
        goodput_bytes_per_s=round(payload_bytes / worst, 1) if payload_bytes else 0.0,
    )
