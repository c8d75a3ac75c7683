"""``modbatt run``: execute every notebook with papermill; figures, results and an HTML report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..workbench.runner import list_parameters, run_notebooks
from .bus_options import add_bus_arguments, bus_from_args

if TYPE_CHECKING:
    from ..transport.canbus import BusConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run every notebook headlessly: executed notebooks, figures, results and an HTML report",
        description="Executes the workbench notebooks with papermill (on the bus the bus options or python-can's "
        "configuration name, else each notebook on its own embedded virtual bus). "
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
    add_bus_arguments(
        p,
        title="bus for the notebooks that declare bus_interface (the bus rule, docs/buses.md §2; "
        "nothing configured: each notebook's own embedded virtual bus)",
    )
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


def _bus_parameters(bus: BusConfig, args: argparse.Namespace, given: dict[str, str]) -> dict[str, str]:
    """The notebook parameters that carry ``bus``; ConfigError if a bus notebook cannot take all of it.

    A notebook takes a bus as ``bus_interface``, ``bus_channel`` and ``bus_options`` (everything
    else: a udp_multicast port, bit rates, FD, faults; :meth:`BusConfig.options`) and hands them to
    :func:`modbatt.resolve_bus`. A notebook that declares ``bus_interface`` but not the others the
    bus needs is refused: given the group alone it would open python-can's default port, another bus.
    """
    clash = sorted(k for k in given if k.rpartition(".")[2].startswith("bus_"))
    if clash:
        raise ConfigError(f"give the bus either as bus options or as -p {clash[0]}=…, not both")
    values = {"bus_interface": bus.interface, "bus_channel": str(bus.channel)}
    if bus.options():
        values["bus_options"] = json.dumps(bus.options(), sort_keys=True, default=str)
    for name, specs in list_parameters(args.notebooks, args.only).items():
        if "bus_interface" not in specs:
            continue
        lacking = [key for key in values if key not in specs]
        if lacking:
            raise ConfigError(
                f"notebook {name} cannot take this bus ({bus.describe()}): it declares no {', '.join(lacking)} "
                f"parameter (leave it out with --only, or choose a bus it can take)"
            )
    return values


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
    bus = bus_from_args(args)
    if not bus.embedded:
        params.update(_bus_parameters(bus, args, params))
    progress = None if args.json else (lambda line: print(line, flush=True))
    if progress is not None:
        where = (
            "each notebook's own embedded virtual bus (nothing configured)"
            if bus.embedded
            else bus.describe(source=True)
        )
        progress(f"bus: {where}")
    report = run_notebooks(
        output=args.output, notebooks_dir=args.notebooks, only=args.only, parameters=params, progress=progress
    )
    if args.json:
        json.dump(report.to_json() | {"bus": bus.to_json()}, sys.stdout, indent=2)
        print()
    else:
        print(f"report: {report.report}")
        print(f"figures: {len(report.figures())} in {report.layout.figures}; results in {report.layout.results}")
    return 0 if report.ok else 1
