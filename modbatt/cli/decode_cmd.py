"""``modbatt decode LOG [--keystore STORE] [--output FILE]``: a capture decrypted and decoded offline.

Without ``--output`` it prints the physical values; ``--output FILE.csv`` or ``.parquet`` writes
them as a table, any log suffix (``.log``, ``.asc``, ``.blf`` …) a plaintext capture on the
cleartext-view identifiers that ``modbatt-plain.dbc`` describes. Logic: :mod:`modbatt.workbench.capture`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import EXIT_OK

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``decode`` to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "decode",
        help="decrypt and decode a recorded capture: physical values, or a plaintext log for CAN tools",
        description=(
            "Read a capture (.log .asc .blf .trc .csv .db .mf4), reassemble ISO-TP and broadcast fragments, "
            "decrypt each unit with an entity's key store and decode it through the cleartext-view DBC. "
            "Prints the physical values, or writes them (--output FILE.csv|.parquet), or writes the capture "
            "in clear on the cleartext-view IDs (--output FILE.log|.asc|.blf) for cantools and SavvyCAN."
        ),
    )
    parser.add_argument("log", type=Path, metavar="LOG", help="the recorded capture")
    parser.add_argument(
        "--keystore",
        metavar="STORE",
        help="an entity's key store (key file STORE.kek, or the passphrase in $MODBATT_PASSPHRASE)",
    )
    parser.add_argument("--output", "-o", type=Path, metavar="FILE", help="table (.csv, .parquet) or plaintext log")
    parser.add_argument("--limit", type=int, default=200, metavar="N", help="rows printed without --output")
    parser.set_defaults(handler=_decode)


def _decode(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..transport import recording
    from ..workbench.capture import TABLE_SUFFIXES, decode_capture, write_output
    from ..workbench.terminal import escape
    from .files import writable_directory
    from .monitor_cmd import decryptor_from_keystore

    recording.log_format(args.log, "read")
    if args.output is not None:
        if args.output.suffix.lower() not in TABLE_SUFFIXES:
            recording.log_format(args.output, "write")
        writable_directory(args.output.parent if str(args.output.parent) else Path("."), "output directory")
    if args.limit < 0:
        raise ConfigError("--limit must be 0 or more")
    decryptor = decryptor_from_keystore(args.keystore) if args.keystore else None
    capture = decode_capture(args.log, decryptor)
    note = f"# {capture.frames} frames, {len(capture.units)} units, {len(capture.decrypted)} readable" + "".join(
        f"; {n} {why}" for why, n in sorted(capture.problems.items())
    )
    if args.output is not None:
        path, count = write_output(capture, args.output)
        print(escape(note), file=sys.stderr)
        kind = "rows" if path.suffix.lower() in TABLE_SUFFIXES else "frames in clear"
        print(f"wrote {path} ({count} {kind})")
        return EXIT_OK
    rows = capture.rows()
    print(f"{'time':>17}  {'node':>4}  {'message':<22}  {'signal':<18}  value")
    for row in rows[: args.limit]:
        value = f"{row['value']:.6g}" if isinstance(row["value"], float) else row["value"]
        unit = f" {row['unit']}" if row["unit"] else ""
        head = f"{row['timestamp']:17.6f}  0x{row['node']:02X}  {row['message']:<22}"
        print(escape(f"{head}  {row['signal']:<18}  {value}{unit}"))
    if len(rows) > args.limit:
        print(f"… {len(rows) - args.limit} more rows (--limit, or --output FILE.csv)")
    print(escape(note), file=sys.stderr)
    return EXIT_OK
