"""Layer 3: CAN identifier layouts, secured frame formats, fragmentation, wire time, DBC.

Knows no protocol state: keys and freshness streams come in as arguments.
"""

from .ids import LAYOUTS, SEED_LAYOUT, CanIdFields, IdLayout, find_collisions
from .secured import SecuredReceiver, SecuredSender, TrafficKeys, derive_traffic_keys
from .wiretime import CLASSIC, FD, BusProfile

__all__ = [
    "CLASSIC",
    "FD",
    "LAYOUTS",
    "SEED_LAYOUT",
    "BusProfile",
    "CanIdFields",
    "IdLayout",
    "SecuredReceiver",
    "SecuredSender",
    "TrafficKeys",
    "derive_traffic_keys",
    "find_collisions",
]
