"""Wire time of CAN frames from the standard bit counts of ISO 11898-1 frames (docs/can-frames.md §4).

The virtual bus is instantaneous, so every latency or capacity figure comes from here.
Counts include the 3-bit intermission and, in the worst case, the maximum number of dynamic
stuff bits (Davis et al., Real-Time Systems 35, 2007; Linux ``can/length.h``):

* classic: ``H + 8n + 15`` stuffable bits (SOF … CRC; H = 39 for a 29-bit ID, 19 for 11-bit)
  plus 13 fixed (CRC delimiter, ACK slot, ACK delimiter, EOF 7, IFS 3); worst case adds
  ``⌊(H + 8n + 14)/4⌋`` stuff bits → 29-bit 8 B: 131 / 160 bits, 11-bit 8 B: 111 / 135.
* CAN FD: ``A + 13`` bits at the nominal rate (A = SOF … BRS = 36 / 17; 13 = CRC delimiter, ACK,
  ACK delimiter, EOF, IFS) and ``5 + 8n + C`` at the data rate (ESI + DLC, data, C = stuff count 4
  + CRC 17/21 + fixed stuff bits = 27 for n ≤ 16, 32 above); worst case adds
  ``⌊(A + 5 + 8n − 1)/4⌋`` dynamic stuff bits, ``⌊(A − 1)/4⌋`` of them in the nominal phase.
  64 B single rate: 598 / 736 bits (29-bit), 579 / 712 (11-bit).

Error frames, retransmissions and idle time are not modelled: these are upper bounds on what a
bus carries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Final

from can.util import dlc2len, len2dlc

__all__ = [
    "CLASSIC",
    "FD",
    "FD_PADDED_LENGTH",
    "PROFILES",
    "BusProfile",
    "FrameBits",
    "bus_load",
    "classic_frame_bits",
    "fd_frame_bits",
    "frame_bits",
    "frame_length",
    "frame_time",
    "frames_per_second",
    "isotp_frame_lengths",
    "message_time",
]

CLASSIC_MAX_DATA: Final = 8
FD_MAX_DATA: Final = 64
_CLASSIC_HEADER = {True: 39, False: 19}  # SOF … DLC, stuffable
_CLASSIC_FIXED_TAIL: Final = 13
_FD_ARBITRATION = {True: 36, False: 17}  # SOF … BRS
_FD_NOMINAL_TAIL: Final = 13
_FD_DATA_HEAD: Final = 5  # ESI + DLC
# Padded FD length per payload size, from python-can's DLC table (looked up per frame: hot path).
FD_PADDED_LENGTH: Final = tuple(dlc2len(len2dlc(n)) for n in range(FD_MAX_DATA + 1))


def frame_length(n: int, *, fd: bool) -> int:
    """Data field length actually sent for ``n`` payload bytes (FD rounds up to a valid DLC)."""
    if fd:
        if 0 <= n <= FD_MAX_DATA:
            return FD_PADDED_LENGTH[n]
    elif 0 <= n <= CLASSIC_MAX_DATA:
        return n
    raise ValueError(f"{n} bytes do not fit one {'FD' if fd else 'classic'} frame")


@dataclasses.dataclass(frozen=True, slots=True)
class BusProfile:
    """A bus: classic or FD, its data field size and bit rates.

    ``data_bitrate`` set (and different from the nominal rate) means FD with bit-rate switch.
    ``extended`` is the identifier format the profile's frames use (29-bit by default).
    """

    name: str
    fd: bool
    data_field: int
    nominal_bitrate: int = 1_000_000
    data_bitrate: int | None = None
    extended: bool = True

    def __post_init__(self) -> None:
        limit = FD_MAX_DATA if self.fd else CLASSIC_MAX_DATA
        if not 0 < self.data_field <= limit or (self.fd and frame_length(self.data_field, fd=True) != self.data_field):
            raise ValueError(f"data field {self.data_field} is not valid for {'FD' if self.fd else 'classic'}")
        if self.data_bitrate is not None and not self.fd:
            raise ValueError("bit-rate switch needs CAN FD")

    @property
    def brs(self) -> bool:
        return self.data_bitrate is not None and self.data_bitrate != self.nominal_bitrate


#: Classic CAN 2.0B at 1 Mbit/s (module MCUs speak only this).
CLASSIC: Final = BusProfile("classic", fd=False, data_field=CLASSIC_MAX_DATA)
#: CAN FD, 64-byte frames, 1 Mbit/s nominal and 5 Mbit/s data phase.
FD: Final = BusProfile("fd", fd=True, data_field=FD_MAX_DATA, data_bitrate=5_000_000)
PROFILES: Final[dict[str, BusProfile]] = {p.name: p for p in (CLASSIC, FD)}


@dataclasses.dataclass(frozen=True, slots=True)
class FrameBits:
    """Bits of one frame, split by phase (``data_*`` is 0 for classic frames)."""

    nominal_best: int
    nominal_worst: int
    data_best: int = 0
    data_worst: int = 0

    @property
    def best(self) -> int:
        return self.nominal_best + self.data_best

    @property
    def worst(self) -> int:
        return self.nominal_worst + self.data_worst


def classic_frame_bits(n: int, *, extended: bool = True) -> FrameBits:
    """Bits of a classic data frame with ``n`` data bytes."""
    n = frame_length(n, fd=False)
    stuffable = _CLASSIC_HEADER[extended] + 8 * n + 15
    best = stuffable + _CLASSIC_FIXED_TAIL
    return FrameBits(best, best + (stuffable - 1) // 4)


def fd_frame_bits(n: int, *, extended: bool = True) -> FrameBits:
    """Bits of a CAN FD frame carrying ``n`` bytes (padded to the next valid length)."""
    n = frame_length(n, fd=True)
    arb = _FD_ARBITRATION[extended]
    crc_part = 27 if n <= 16 else 32
    nominal = arb + _FD_NOMINAL_TAIL
    data = _FD_DATA_HEAD + 8 * n + crc_part
    stuff_total = (arb + _FD_DATA_HEAD + 8 * n - 1) // 4
    stuff_nominal = (arb - 1) // 4
    return FrameBits(nominal, nominal + stuff_nominal, data, data + stuff_total - stuff_nominal)


def frame_bits(profile: BusProfile, n: int) -> FrameBits:
    """Bits of one frame of ``n`` data bytes on ``profile``."""
    if profile.fd:
        return fd_frame_bits(n, extended=profile.extended)
    return classic_frame_bits(n, extended=profile.extended)


def frame_time(profile: BusProfile, n: int, *, worst: bool = True) -> float:
    """Seconds one frame of ``n`` data bytes occupies the bus."""
    bits = frame_bits(profile, n)
    nominal = bits.nominal_worst if worst else bits.nominal_best
    data = bits.data_worst if worst else bits.data_best
    data_rate = profile.data_bitrate if profile.brs and profile.data_bitrate else profile.nominal_bitrate
    return nominal / profile.nominal_bitrate + data / data_rate


def message_time(profile: BusProfile, frame_lengths: Iterable[int], *, worst: bool = True) -> float:
    """Seconds a message made of frames with these data lengths occupies the bus."""
    return sum(frame_time(profile, n, worst=worst) for n in frame_lengths)


def frames_per_second(profile: BusProfile, n: int, *, worst: bool = True) -> float:
    """Frames of ``n`` bytes a saturated bus carries per second."""
    return 1.0 / frame_time(profile, n, worst=worst)


def bus_load(profile: BusProfile, mix: Iterable[tuple[int, float]], *, worst: bool = True) -> float:
    """Fraction of bus time used by a traffic mix of ``(data_bytes, frames_per_second)``.

    Above 1.0 the bus cannot carry the mix at all; CAN arbitration then starves the
    lowest-priority IDs.
    """
    return sum(rate * frame_time(profile, n, worst=worst) for n, rate in mix)


def isotp_frame_lengths(n: int, profile: BusProfile, *, padded: bool = True) -> list[int]:
    """Data lengths of the frames ISO-TP (ISO 15765-2) uses for an ``n``-byte unit, flow control included.

    Classic: single frame up to 7 bytes (1-byte PCI); else first frame (2-byte PCI + 6), consecutive
    frames (1-byte PCI + 7) and one 3-byte flow-control frame from the receiver (block size 0).
    CAN FD: single frame up to 62 bytes (2-byte escape PCI above 7), first frame 62, consecutive
    frames 63, padded to valid FD lengths. ``padded`` (the default, as ``modbatt.can.fragment``
    configures can-isotp) pads every frame to at least 8 bytes, so a classic frame is always 8.
    For wire time only; the transport itself is can-isotp.
    """
    field = profile.data_field
    fd = profile.fd
    single_max = (field - 2) if fd and field > 8 else 7
    if n <= single_max:
        pci = 1 if n <= 7 else 2
        single = frame_length(n + pci, fd=fd)
        return [max(single, 8)] if padded else [single]
    first = field - 2
    cf = field - 1
    out = [field, 3]  # first frame, flow control
    rest = n - first
    while rest > 0:
        take = min(rest, cf)
        out.append(frame_length(take + 1, fd=fd))
        rest -= take
    return [max(length, 8) for length in out] if padded else out
