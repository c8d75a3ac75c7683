"""``modbatt run``: execute every notebook with papermill; figures, results and an HTML report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..workbench.runner import run_notebooks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run every notebook headlessly: executed notebooks, figures, results and an HTML report",
        description="Executes the workbench notebooks with papermill on the virtual CAN bus by default. "
        "Writes build/ (executed notebooks, report.html), figures/ (PNG and SVG) and data/results/ (JSON), "
        "or all of it under --output DIR.",
    )
    p.add_argument("--output", type=Path, default=None, help="write everything under DIR instead of the repo")
    p.add_argument("--notebooks", type=Path, default=None, help="notebooks folder (default: the repo's)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="run notebooks whose name contains NAME")
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="inject a parameter into every notebook (value parsed as JSON when it can be)")  # fmt: skip
    p.add_argument("--interface", default=None, help="python-can interface for bus notebooks (default virtual)")
    p.add_argument("--channel", default=None, help="python-can channel")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=_run)


def _parse(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"parameters are KEY=VALUE with a Python identifier as KEY, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _run(args: argparse.Namespace) -> int:
    params = _parse(args.parameter)
    if args.interface:
        params["bus_interface"] = args.interface
    if args.channel:
        params["bus_channel"] = args.channel
    progress = None if args.json else (lambda line: print(line, flush=True))
    report = run_notebooks(
        output=args.output, notebooks_dir=args.notebooks, only=args.only, parameters=params, progress=progress
    )
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        print(f"report: {report.report}")
        print(f"figures: {len(report.figures())} in {report.layout.figures}; results in {report.layout.results}")
    return 0 if report.ok else 1
