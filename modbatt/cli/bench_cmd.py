"""``modbatt bench``: run the benchmarks and print their figures."""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from ..bench import AREAS, load_area
from ..errors import ConfigError
from ..model.profile import ProtocolProfile, profile_named


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed (crypto, binding, ledger, pairing, codec)")
    p.add_argument("areas", nargs="*", metavar="AREA", help=f"areas to run (default all): {', '.join(AREAS)}")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds")
    p.add_argument(
        "--profile",
        metavar="NAME",
        help="only this protocol profile in the areas that compare them (codec, pairing, validation); "
        f"default: all of {', '.join(p.value for p in ProtocolProfile)}",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    names = args.areas or list(AREAS)
    unknown = [n for n in names if n not in AREAS]
    if unknown:
        raise ConfigError(f"unknown benchmark area(s) {', '.join(unknown)}; choose from {', '.join(AREAS)}")
    modules = {n: load_area(n) for n in names}
    missing = [n for n, m in modules.items() if m is None]
    if missing and args.areas:
        raise ConfigError(f"benchmark area(s) not built yet: {', '.join(missing)}")
    profiles = (profile_named(args.profile),) if args.profile else tuple(ProtocolProfile)
    results = {}
    for name, module in modules.items():
        if module is None:
            continue
        if not args.json:
            print(f"== {name}: {module.DESCRIPTION}", flush=True)
        # Areas that compare protocol profiles take them (docs/profiles.md); the others do not depend on one.
        takes_profiles = "profiles" in inspect.signature(module.run).parameters
        rows = module.run(args.quick, profiles=profiles) if takes_profiles else module.run(args.quick)
        results[name] = rows
        if not args.json:
            for row in rows:
                print("   " + ", ".join(f"{k}={v}" for k, v in row.items()))
    if args.json:
        # `modbatt bench codec --json` prints the codec's list itself (a documented shape).
        out = results[names[0]] if len(names) == 1 else results
        json.dump(out, sys.stdout, indent=2)
        print()
    return 0
