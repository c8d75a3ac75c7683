"""``modbatt vectors export DIR`` / ``modbatt vectors check DIR``: the known-answer test vectors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..workbench.terminal import escape
from . import EXIT_FAILED, EXIT_OK

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``vectors`` and its ``export`` and ``check`` actions to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "vectors",
        help="known-answer test vectors (JSON, Wycheproof-style) of the wire formats and key schedule",
        description="Known-answer test vectors for implementers; schema and conventions in docs/vectors.md.",
    )
    actions = parser.add_subparsers(dest="vectors_action", metavar="ACTION")
    actions.required = True
    export = actions.add_parser(
        "export",
        help="write every vector file and the JSON Schema into DIR",
        description=(
            "Generate the vectors from the package (a seeded deployment, fixed keys) and write them into DIR, "
            "created if missing. The output is byte-identical on every run."
        ),
    )
    export.add_argument("directory", metavar="DIR", type=Path, help="output directory (the repository keeps vectors/)")
    export.set_defaults(handler=_export)
    check = actions.add_parser(
        "check",
        help="run the package against every case in DIR (exit 1 on any disagreement)",
        description="Check a directory of vectors against this package: every valid case reproduced byte for byte, "
        "every invalid case rejected for its stated reason.",
    )
    check.add_argument("directory", metavar="DIR", type=Path, help="directory of vector files")
    check.set_defaults(handler=_check)


def _export(args: argparse.Namespace) -> int:
    from ..workbench import vectors

    for path in vectors.export(args.directory):
        print(f"wrote {path}")
    return EXIT_OK


def _check(args: argparse.Namespace) -> int:
    from ..workbench import vectors

    try:
        counts = vectors.check(args.directory)
    except AssertionError as exc:
        # The disagreement quotes the vector file: escaped, one line.
        print(f"modbatt vectors: error: FAILED: {escape(exc)}", file=sys.stderr)
        return EXIT_FAILED
    for name, n in counts.items():
        print(f"{name}: {n} cases agree")
    return EXIT_OK
