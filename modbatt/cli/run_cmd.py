"""``modbatt run``: execute every notebook with papermill; figures, results and an HTML report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..workbench.runner import list_parameters, run_notebooks


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
    p.add_argument("-p", "--parameter", action="append", default=[], metavar="[NAME.]KEY=VALUE",
                   help="set a declared parameter in every notebook that has it, or with NAME. in one notebook "
                        "(checked against its type before anything runs; see --list-params)")  # fmt: skip
    p.add_argument("--list-params", nargs="?", const="", default=None, metavar="NAME",
                   help="list each notebook's parameters (type, default, description) and exit")  # fmt: skip
    p.add_argument("--interface", default=None, help="python-can interface for bus notebooks (default virtual)")
    p.add_argument("--channel", default=None, help="python-can channel")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=_run)


def _parse(items: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` / ``NAME.KEY=VALUE`` items as text; the runner checks them against the notebooks."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, _, param = key.rpartition(".")
        if not sep or not param.isidentifier() or (name == "" and "." in key):
            raise ConfigError(f"parameters are KEY=VALUE or NAME.KEY=VALUE (KEY a Python identifier), got {item!r}")
        out[key] = value
    return out


def _list(args: argparse.Namespace) -> int:
    only = [args.list_params] if args.list_params else args.only
    for name, specs in list_parameters(args.notebooks, only).items():
        print(name)
        for spec in specs.values():
            print(f"  {spec.name:<16} {spec.type_name:<15} = {spec.default:<12} {spec.help}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.list_params is not None:
        return _list(args)
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
