"""``modbatt sweep PARAMS.yaml``: a parameter grid through the package's functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..workbench.sweep import load_sweep, run_sweep, write_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a parameter grid (local process pool, or dask with --scheduler)")
    p.add_argument("params", type=Path, help="YAML: experiment, grid, fixed")
    p.add_argument(
        "--output", type=Path, default=None, help="table to write (.csv or .parquet); default next to PARAMS"
    )
    p.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="dask.distributed scheduler, e.g. tcp://host:8786"
    )
    p.add_argument("--workers", type=int, default=None, help="local processes (default: one per core)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    spec = load_sweep(args.params)
    out = args.output or args.params.with_suffix(".csv")
    print(f"sweep {spec.experiment}: {spec.size} points on {args.scheduler or 'a local process pool'}", flush=True)

    def progress(done: int, total: int) -> None:
        print(f"\r  {done}/{total}", end="", file=sys.stderr, flush=True)

    frame = run_sweep(spec, scheduler=args.scheduler, workers=args.workers, progress=progress)
    print(file=sys.stderr)
    write_table(frame, out)
    print(f"{len(frame)} rows x {len(frame.columns)} columns -> {out}")
    return 0
