"""Layer 2: typed protocol records with validation of untrusted input."""

from .access import AccessData, LctRef, PartyType, TransportProtocol
from .binding import (
    BindingAuthorization,
    BindingRecord,
    BoundEntity,
    RevocationRecord,
    format_timestamp,
    key_commitment,
    parse_timestamp,
)
from .tier import Tier

__all__ = [
    "AccessData",
    "BindingAuthorization",
    "BindingRecord",
    "BoundEntity",
    "LctRef",
    "PartyType",
    "RevocationRecord",
    "Tier",
    "TransportProtocol",
    "format_timestamp",
    "key_commitment",
    "parse_timestamp",
]
