"""The encryption tiers of selective encryption (docs/seed.md §2.4, §4.1).

The integer values are the seed's 2-bit level codes carried in CAN ID bits 18-19.
"""

from __future__ import annotations

import enum

__all__ = ["Tier"]


class Tier(enum.IntEnum):
    """Which key protects a message: none, exchange key, pairing key or binding keys."""

    NONE = 0b00
    EXCHANGE = 0b01
    PAIRING = 0b10
    BINDING = 0b11

    @property
    def label(self) -> str:
        return self.name.lower()
