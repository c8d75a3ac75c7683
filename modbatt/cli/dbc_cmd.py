"""``modbatt dbc export DIR``: write the DBC files CAN tools load (SavvyCAN, CANalyzer, cantools)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import EXIT_OK
from .files import writable_directory

__all__ = ["register"]


def _int(text: str) -> int:
    """Accept 1, 0x01 or 0o1, as CAN people write IDs."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def register(subparsers: Any) -> None:
    """Add ``dbc`` and its ``export`` action to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "dbc",
        help="export DBC files: the secured protocol on the wire, its cleartext view, the legacy ModBatt buses",
        description="DBC files for SavvyCAN, CANalyzer and `cantools decode`.",
    )
    actions = parser.add_subparsers(dest="dbc_action", metavar="ACTION")
    actions.required = True
    export = actions.add_parser(
        "export",
        help="write DIR/modbatt.dbc, DIR/modbatt-plain.dbc and DIR/modbatt-legacy.dbc",
        description=(
            "Write DIR/modbatt.dbc (every frame of the secured protocol on the wire, modules 0x01-0x1F), "
            "DIR/modbatt-plain.dbc (the cleartext view: decrypted units with physical values) and "
            "DIR/modbatt-legacy.dbc (the legacy ModBatt catalog at its compiled bit positions). "
            "DIR is created if missing; files are replaced atomically."
        ),
    )
    export.add_argument("directory", metavar="DIR", type=Path, help="output directory")
    export.add_argument("--pack-id", type=_int, default=None, help="pack id of the app-bus IDs (default 0)")
    export.add_argument(
        "--module-id",
        type=_int,
        default=None,
        help="describe only this module node (default: secured files 0x01-0x1F, legacy file 0x01)",
    )
    export.add_argument(
        "--profile",
        choices=("classic", "fd"),
        default="classic",
        help="bus profile of the secured DBC: classic 8-byte or FD 64-byte frames (default classic)",
    )
    export.set_defaults(handler=_export)


def _export(args: argparse.Namespace) -> int:
    # Imported here so `modbatt --help` does not pay for cantools.
    from ..can import dbc
    from ..can.wiretime import PROFILES

    kwargs: dict[str, Any] = {"profile": PROFILES[args.profile]}
    if args.pack_id is not None:
        kwargs["pack_id"] = args.pack_id
    if args.module_id is not None:
        kwargs["module_id"] = args.module_id
    writable_directory(args.directory, "export directory")
    for item in dbc.export_dbc_files(args.directory, **kwargs):
        print(f"wrote {item.path} ({item.messages} messages, {item.signals} signals): {item.title}")
    return EXIT_OK
