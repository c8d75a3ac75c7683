"""CAN identifier layouts as data (docs/can-frames.md §1), and a collision checker.

Five documents define the encryption bits of the 29-bit ID in incompatible ways
(the table of docs/can-frames.md §1), and the legacy module bus already uses bits 18-28 for its base ID. So a
layout is a value: named bit fields plus how (or whether) the layout signals the tier. The codec
takes a layout as input; nothing else in ``modbatt.can`` hard-codes a bit position.

Profiles (bit 0 = least significant bit of the identifier):

``seed`` (default, 29-bit)::

    28..26   25..21    20    19..18  17    16..8      7..0
    priority reserved  dir   level   flag  function   node
    (3)      (0)       (1)   (2)     (1)   (9)        (8)

  flag/level are the seed's: flag 1 = protected; level 00 none, 01 exchange, 10 pairing,
  11 binding. flag=0 with level≠00, or flag=1 with level=00, is malformed. ``node`` is the
  module address (0x00 broadcast, 0x01-0x1F modules, 0xFF unregistered); ``dir`` 0 = controller
  to node, 1 = node to controller, so both ends of one function never send the same ID (CAN
  arbitration needs one sender per ID). Priority sits on top like J1939 (0 = most urgent).
  Reserved bits must be zero (room for a later version).

``legacy-app`` (11-bit, VCU/app bus): ``0x400 + pack·0x100 + message``; no security fields.

``legacy-module`` (29-bit, module bus): ``(base << 18) | module_id``; bits 8-17 zero; no security
fields.

``j1939`` (the ModBatt spec addendum's layout, docs/can-frames.md §1): priority 26-28, a J1939-style
PGN in bits 8-25 and source address in 0-7, with bits 17-19 overlaid as a 3-bit level (b19..b17: 000
clear, 001 exchange, 010 pairing, 011 binding, 1xx reserved → malformed). ``function`` is the PGN
with bits 17-19 taken out (bits 8-16 then 20-25, 15 bits).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Iterable
from typing import Final

from ..errors import Reason, VerificationError
from ..model.access import MODULE_NODES, NODE_BROADCAST, NODE_UNREGISTERED
from ..model.tier import Tier

__all__ = [
    "EXTENDED_ID_BITS",
    "EXTENDED_ID_MAX",
    "J1939_LAYOUT",
    "LAYOUTS",
    "LEGACY_APP_LAYOUT",
    "LEGACY_MODULE_LAYOUT",
    "MODULE_NODES",
    "NODE_BROADCAST",
    "NODE_UNREGISTERED",
    "SEED_LAYOUT",
    "STANDARD_ID_BITS",
    "STANDARD_ID_MAX",
    "BitField",
    "CanIdFields",
    "Collision",
    "IdLayout",
    "TierSignal",
    "find_collisions",
    "id_fits",
]

#: Identifier widths (ISO 11898-1): base frames 11 bits, extended frames 29 bits.
STANDARD_ID_BITS: Final = 11
EXTENDED_ID_BITS: Final = 29
STANDARD_ID_MAX: Final = (1 << STANDARD_ID_BITS) - 1
EXTENDED_ID_MAX: Final = (1 << EXTENDED_ID_BITS) - 1
_DECODE_CACHE: Final = 4096  # distinct IDs remembered per layout; bounded against ID sprays


@dataclasses.dataclass(frozen=True, slots=True)
class BitField:
    """A named field made of one or more bit ranges, least significant range first.

    ``offset`` is added when decoding and subtracted when encoding (the legacy app bus stores
    ``pack + 4`` in bits 8-10).
    """

    name: str
    segments: tuple[tuple[int, int], ...]  # (lsb, width)
    offset: int = 0

    @property
    def width(self) -> int:
        return sum(w for _, w in self.segments)

    @property
    def bits(self) -> tuple[int, ...]:
        """Identifier bit positions the field occupies."""
        return tuple(b for lsb, w in self.segments for b in range(lsb, lsb + w))

    @property
    def mask(self) -> int:
        m = 0
        for b in self.bits:
            m |= 1 << b
        return m

    def insert(self, value: int) -> int:
        """The identifier bits for field value ``value``; ValueError when it does not fit."""
        raw = value - self.offset
        if not 0 <= raw < (1 << self.width):
            raise ValueError(f"{self.name}={value} does not fit {self.width} bits (offset {self.offset})")
        out = 0
        for lsb, w in self.segments:
            out |= (raw & ((1 << w) - 1)) << lsb
            raw >>= w
        return out

    def extract(self, can_id: int) -> int:
        value, shift = 0, 0
        for lsb, w in self.segments:
            value |= ((can_id >> lsb) & ((1 << w) - 1)) << shift
            shift += w
        return value + self.offset


class TierSignal(enum.Enum):
    """How a layout carries the tier in the identifier."""

    NONE = "none"  # not signalled: the tier comes from configuration
    FLAG_LEVEL = "flag+level"  # seed: 1-bit flag + 2-bit level, must agree
    LEVEL3 = "level3"  # the spec addendum's 3-bit level, 1xx reserved


@dataclasses.dataclass(frozen=True, slots=True)
class CanIdFields:
    """Decoded identifier. ``tier`` is None when the layout does not signal it."""

    function: int = 0
    node: int = 0
    priority: int = 0
    direction: int = 0
    tier: Tier | None = None

    @property
    def encrypted(self) -> bool:
        """True when the identifier marks the frame as protected (any tier above NONE)."""
        return self.tier is not None and self.tier is not Tier.NONE


_NAMED = ("function", "node", "priority", "direction")


class IdLayout:
    """An identifier layout: width, named fields, tier signalling. Immutable after creation."""

    __slots__ = (
        "_fields",
        "_flag",
        "_level",
        "_reserved_mask",
        "decode",
        "description",
        "encode",
        "fields",
        "id_bits",
        "name",
        "tier_signal",
    )

    def __init__(
        self,
        name: str,
        id_bits: int,
        fields: Iterable[BitField],
        *,
        tier_signal: TierSignal = TierSignal.NONE,
        description: str = "",
    ) -> None:
        if id_bits not in (STANDARD_ID_BITS, EXTENDED_ID_BITS):
            raise ValueError("a CAN identifier is 11 or 29 bits")
        self.name = name
        self.id_bits = id_bits
        self.fields: tuple[BitField, ...] = tuple(fields)
        self.tier_signal = tier_signal
        self.description = description
        by_name = {f.name: f for f in self.fields}
        if len(by_name) != len(self.fields):
            raise ValueError("duplicate field name")
        used = 0
        for f in self.fields:
            if f.mask & used or f.mask >> id_bits:
                raise ValueError(f"field {f.name} overlaps another field or leaves the identifier")
            used |= f.mask
        self._reserved_mask = ((1 << id_bits) - 1) & ~used
        self._fields = tuple((n, by_name[n]) for n in _NAMED if n in by_name)
        self._flag = by_name.get("flag")
        self._level = by_name.get("level")
        needs = {TierSignal.NONE: (), TierSignal.FLAG_LEVEL: ("flag", "level"), TierSignal.LEVEL3: ("level",)}
        for n in needs[tier_signal]:
            if n not in by_name:
                raise ValueError(f"tier signal {tier_signal.value} needs a '{n}' field")
        # IDs repeat on a bus, so memoise; bounded so an ID spray cannot grow memory.
        self.encode = functools.lru_cache(maxsize=_DECODE_CACHE)(self._encode)
        self.decode = functools.lru_cache(maxsize=_DECODE_CACHE)(self._decode)

    @property
    def security_bits(self) -> tuple[int, ...]:
        """Identifier bits that carry the flag/level (empty when the tier is not signalled)."""
        return tuple(sorted(b for f in (self._flag, self._level) if f is not None for b in f.bits))

    @property
    def security_mask(self) -> int:
        """Mask of :attr:`security_bits`."""
        mask = 0
        for b in self.security_bits:
            mask |= 1 << b
        return mask

    def tier_bits(self, tier: Tier) -> int:
        """The flag/level bits that signal ``tier`` (0 for layouts that do not signal it)."""
        if self.tier_signal is TierSignal.NONE:
            return 0
        return self.encode(CanIdFields(tier=tier)) & self.security_mask

    @property
    def reserved_mask(self) -> int:
        return self._reserved_mask

    def field_mask(self, name: str) -> int:
        """Identifier bits of the field ``name`` (``node``, ``function``, ``flag``, ``level``, …)."""
        for f in self.fields:
            if f.name == name:
                return f.mask
        raise KeyError(f"layout {self.name} has no field {name!r}")

    def with_field(self, can_id: int, name: str, value: int) -> int:
        """``can_id`` with field ``name`` replaced by ``value`` (no other bit changes, nothing checked)."""
        field = next(f for f in self.fields if f.name == name)
        return (can_id & ~field.mask) | field.insert(value)

    def _encode(self, fields: CanIdFields) -> int:
        """Identifier for ``fields``; ValueError for values that do not fit or a tier it cannot carry."""
        can_id = 0
        for name, f in self._fields:
            can_id |= f.insert(getattr(fields, name))
        tier = fields.tier
        if self.tier_signal is TierSignal.NONE:
            if tier not in (None, Tier.NONE):
                raise ValueError(f"layout {self.name} cannot signal tier {tier.name}")
            return can_id
        tier = Tier.NONE if tier is None else tier
        assert self._level is not None
        can_id |= self._level.insert(int(tier))
        if self._flag is not None:
            can_id |= self._flag.insert(int(tier is not Tier.NONE))
        return can_id

    def _decode(self, can_id: int) -> CanIdFields:
        """Fields of ``can_id``; VerificationError(MALFORMED) for anything the layout forbids."""
        if not isinstance(can_id, int) or not 0 <= can_id < (1 << self.id_bits):
            raise VerificationError(Reason.MALFORMED, f"identifier outside {self.id_bits} bits")
        if can_id & self._reserved_mask:
            raise VerificationError(Reason.MALFORMED, f"reserved identifier bits set in {can_id:#x}")
        values = {}
        for name, f in self._fields:
            v = f.extract(can_id)
            if v < 0:
                raise VerificationError(Reason.MALFORMED, f"{name} below its range in {can_id:#x}")
            values[name] = v
        tier: Tier | None = None
        if self.tier_signal is not TierSignal.NONE:
            assert self._level is not None
            level = self._level.extract(can_id)
            if level > int(Tier.BINDING):
                raise VerificationError(Reason.MALFORMED, f"reserved level {level:#05b}")
            tier = Tier(level)
            if self._flag is not None and self._flag.extract(can_id) != int(tier is not Tier.NONE):
                raise VerificationError(
                    Reason.MALFORMED, f"encryption flag disagrees with level {level:#04b} in {can_id:#x}"
                )
        return CanIdFields(tier=tier, **values)

    def __repr__(self) -> str:
        return f"IdLayout({self.name!r}, {self.id_bits}-bit)"


def id_fits(can_id: int, *, extended: bool) -> bool:
    """Whether ``can_id`` is an identifier of an extended (29-bit) or a base (11-bit) frame."""
    return 0 <= can_id <= (EXTENDED_ID_MAX if extended else STANDARD_ID_MAX)


def _f(name: str, *segments: tuple[int, int], offset: int = 0) -> BitField:
    return BitField(name, tuple(segments), offset)


SEED_LAYOUT: Final = IdLayout(
    "seed",
    29,
    [
        _f("node", (0, 8)),
        _f("function", (8, 9)),
        _f("flag", (17, 1)),
        _f("level", (18, 2)),
        _f("direction", (20, 1)),
        _f("priority", (26, 3)),
    ],
    tier_signal=TierSignal.FLAG_LEVEL,
    description="seed: flag bit 17, level bits 18-19; function 8-16, node 0-7, dir 20, priority 26-28",
)
LEGACY_APP_LAYOUT: Final = IdLayout(
    "legacy-app",
    11,
    [_f("function", (0, 8)), _f("node", (8, 3), offset=-4)],
    description="legacy VCU/app bus: 0x400 + pack*0x100 + message (node = pack id 0-3)",
)
LEGACY_MODULE_LAYOUT: Final = IdLayout(
    "legacy-module",
    29,
    [_f("node", (0, 8)), _f("function", (18, 11))],
    description="legacy module bus: (base << 18) | module_id",
)
J1939_LAYOUT: Final = IdLayout(
    "j1939",
    29,
    [
        _f("node", (0, 8)),
        _f("function", (8, 9), (20, 6)),
        _f("level", (17, 3)),
        _f("priority", (26, 3)),
    ],
    tier_signal=TierSignal.LEVEL3,
    description="spec addendum: J1939-style prio/PGN/SA with bits 17-19 as a 3-bit level",
)
LAYOUTS: Final[dict[str, IdLayout]] = {
    layout.name: layout for layout in (SEED_LAYOUT, LEGACY_APP_LAYOUT, LEGACY_MODULE_LAYOUT, J1939_LAYOUT)
}


@dataclasses.dataclass(frozen=True, slots=True)
class Collision:
    """One way a catalog identifier conflicts with a layout.

    ``kind``: ``security-bits`` (the message's ID has bits set where the layout carries
    flag/level, so a receiver misreads its tier or rejects it), ``reserved-bits`` (bits the layout
    requires zero), or ``alias`` (two messages whose IDs differ only in the security bits, so
    protecting one yields the other's ID).
    """

    kind: str
    message: str
    frame_id: int
    bits: tuple[int, ...]
    other: str | None = None
    detail: str = ""


def _bits_of(value: int) -> tuple[int, ...]:
    return tuple(b for b in range(value.bit_length()) if (value >> b) & 1)


def find_collisions(layout: IdLayout, catalog: Iterable[tuple[str, int, bool]]) -> list[Collision]:
    """Conflicts between ``layout`` and existing ``(name, frame_id, is_extended)`` messages.

    Only messages in the layout's identifier space (29-bit layouts vs extended frames, 11-bit vs
    standard) are compared: the IDE bit keeps the two spaces apart on the bus.
    """
    extended = layout.id_bits == 29
    sec_mask = layout.security_mask
    out: list[Collision] = []
    seen: dict[int, tuple[str, int]] = {}
    for name, frame_id, is_extended in catalog:
        if bool(is_extended) != extended:
            continue
        if frame_id & sec_mask:
            try:
                tier = layout.decode(frame_id).tier
                detail = f"decodes as tier {tier.name if tier is not None else None}"
            except VerificationError as exc:
                detail = f"decodes as {exc}"
            out.append(Collision("security-bits", name, frame_id, _bits_of(frame_id & sec_mask), None, detail))
        if frame_id & layout.reserved_mask:
            bits = _bits_of(frame_id & layout.reserved_mask)
            out.append(Collision("reserved-bits", name, frame_id, bits, None, "layout requires these bits zero"))
        if sec_mask:
            key = frame_id & ~sec_mask
            prev = seen.get(key)
            if prev is not None and prev[1] != frame_id:
                bits = _bits_of(prev[1] ^ frame_id)
                out.append(Collision("alias", name, frame_id, bits, prev[0], "IDs differ only in flag/level bits"))
            else:
                seen.setdefault(key, (name, frame_id))
    return out
