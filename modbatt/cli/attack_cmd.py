"""``modbatt attack``: run the attack scenarios and print their classified outcomes.

``modbatt attack NAME [--json]`` runs one scenario, ``--list`` names them all, ``--all --json``
prints the outcome matrix ``{case: {"outcome", "reason", "counters"}}``. A scenario where the
protocol profile matters runs once per profile (cases ``name`` and ``name@efficient``);
``--profile`` runs it under one. Exit 0 when every scenario run was blocked, detected or a
documented limit; 1 if any attack succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..errors import ConfigError
from . import EXIT_FAILED, EXIT_OK

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``attack`` to the ``modbatt`` parser."""
    parser = subparsers.add_parser(
        "attack",
        help="run attack scenarios against the real components and classify the outcome",
        description=(
            "Run one attack scenario (or all) and print how it ended: blocked, detected, limit "
            "(a documented limit of the design) or succeeded. Exit 1 if any attack succeeded."
        ),
    )
    parser.add_argument("name", nargs="?", help="scenario to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and what each expects")
    parser.add_argument("--all", action="store_true", help="run every scenario")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--profile", metavar="NAME", default=None,
        help="protocol profile for the scenarios where it matters (default: each of theirs; docs/profiles.md)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None,
        help="reproducible keys from this seed (needs MODBATT_REPRODUCIBLE=1; docs and tests only)",
    )  # fmt: skip
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from .. import attacks  # imported here: `modbatt --help` must not build the scenario registry

    if args.list:
        rows = {}
        for key, spec, profile in attacks.cases(args.profile):  # family by family, as the matrix is printed
            rows[key] = {"family": spec.family, "profile": profile.value, "expected": list(spec.expected(profile)),
                         "summary": spec.summary}  # fmt: skip
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            width = max(map(len, rows))
            for name, row in rows.items():
                print(f"{name:{width}}  {row['family']:10}  {row['expected'][0]:8}  {row['summary']}")
        return EXIT_OK
    if args.all == bool(args.name):
        raise ConfigError("give a scenario NAME or --all (see `modbatt attack --list`)")
    if args.seed is not None and os.environ.get("MODBATT_REPRODUCIBLE") != "1":
        raise ConfigError("--seed needs MODBATT_REPRODUCIBLE=1 (reproducible keys are for docs and tests only)")
    if args.all:
        results = attacks.run_all(args.seed, profile=args.profile)
    else:
        spec = attacks.get(args.name)
        profile = args.profile or (args.name.partition("@")[2] or None)
        if args.profile and not spec.profile_aware:
            profile = None  # it does not depend on the profile: one case, as in --all --profile
        key = spec.case(profile) if profile is not None else args.name
        results = {key: attacks.run(args.name, args.seed, profile=profile)}
    if args.json:
        print(json.dumps(attacks.matrix(results), indent=2))
    else:
        width = max(map(len, results))
        for name, o in results.items():
            print(f"{name:{width}}  {o.outcome:9}  {o.reason}")
    return EXIT_OK if all(o.defended for o in results.values()) else EXIT_FAILED
