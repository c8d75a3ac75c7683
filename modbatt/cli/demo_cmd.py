"""``modbatt demo``: the main job on the embedded default."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..workbench.demo import run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="bind a pack controller and a battery module, provably, over a real HTTP API",
        description="An auth controller binds a pack controller and a battery module over their HTTP "
        "binding APIs (uvicorn on 127.0.0.1), records the binding in the ledger and proves it.",
    )
    p.add_argument("--state", type=Path, default=None, help="state directory (default: a new temporary one)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the narrative")
    p.add_argument(
        "--in-process", action="store_true", help="call the entities in-process instead of over HTTP"
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    progress = None if args.json else (lambda line: print(f"  - {line}"))
    if not args.json:
        print("modbatt demo: binding a pack controller and a battery module")
    result = run_demo(args.state, transport="in-process" if args.in_process else "http", progress=progress)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        print()
        return 0
    print()
    print("binding record (seed shape):")
    print(json.dumps(result.binding_record, indent=2))
    print()
    print(f"ledger: {result.ledger_path}  (check it: modbatt ledger verify {result.ledger_path})")
    return 0
