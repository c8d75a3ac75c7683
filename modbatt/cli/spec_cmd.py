"""``modbatt spec build [--output DIR]``: the specification as one HTML page and a PDF."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import EXIT_OK

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``spec`` and its ``build`` action to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "spec",
        help="build the protocol specification (HTML and PDF) from docs/, the package and the notebooks",
        description="The Modbatt protocol specification as a product; see docs/spec/conventions.md.",
    )
    actions = parser.add_subparsers(dest="spec_action", metavar="ACTION")
    actions.required = True
    build = actions.add_parser(
        "build",
        help="build DIR/html/index.html and DIR/modbatt-spec-VERSION.pdf (default DIR: build/spec)",
        description=(
            "Generate the normative tables from the package, then build one HTML page with Sphinx "
            "(warnings are errors, internal references checked) and print it to PDF with WeasyPrint. "
            "Uses the executed notebooks of the last `modbatt run` (build/notebooks) when present, else the "
            "committed notebooks with their stored outputs."
        ),
    )
    build.add_argument("--output", metavar="DIR", type=Path, default=None, help="output directory")
    build.add_argument("--no-pdf", action="store_true", help="build the HTML page only")
    build.set_defaults(handler=_build)


def _build(args: argparse.Namespace) -> int:
    from ..workbench.spec import build_spec

    result = build_spec(args.output, pdf=not args.no_pdf)
    print(f"html: {result.html}")
    if result.pdf is not None:
        print(f"pdf:  {result.pdf} ({result.pdf_pages} pages, {result.pdf.stat().st_size // 1024} KiB)")
    print(f"notebooks from {result.notebooks_from}; {result.figures} figures")
    return EXIT_OK
