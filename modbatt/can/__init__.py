"""Layer 3: CAN identifier layouts, secured frame formats, fragmentation, wire time, DBC.

Knows no protocol state: keys and freshness streams come in as arguments.
"""

from .catalog import build_legacy_database, catalog_id_rows, load_catalog
from .dbc import build_secure_database, export_dbc_files
from .fragment import Fragmenter, Reassembler, ReassemblyLimits
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
    "Fragmenter",
    "IdLayout",
    "Reassembler",
    "ReassemblyLimits",
    "SecuredReceiver",
    "SecuredSender",
    "TrafficKeys",
    "build_legacy_database",
    "build_secure_database",
    "catalog_id_rows",
    "derive_traffic_keys",
    "export_dbc_files",
    "find_collisions",
    "load_catalog",
]
