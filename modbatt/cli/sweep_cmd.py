"""``modbatt sweep PARAMS.yaml ...``: parameter grids through the package's functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError
from ..workbench.sweep import (
    REQUIRED,
    Progress,
    default_output,
    experiment_keys,
    experiments,
    load_sweep,
    run_sweep,
    write_table,
)
from ..workbench.terminal import escape, is_terminal
from .files import writable_directory


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run parameter grids (local process pool, or dask with --scheduler)",
        description="Each PARAMS.yaml names an experiment, a grid and fixed values; each becomes one tidy table "
        "(build/sweeps/NAME.csv unless --output says otherwise). --list names the experiments and their keys.",
    )
    p.add_argument("params", type=Path, nargs="*", metavar="PARAMS.yaml", help="YAML: experiment, grid, fixed")
    p.add_argument("--list", action="store_true", help="list the experiments and their keys, and exit")
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="table to write (.csv or .parquet) for one PARAMS file, or a folder for several "
        "(default build/sweeps/NAME.csv)",
    )
    p.add_argument(
        "--scheduler", default=None, metavar="ADDRESS", help="dask.distributed scheduler, e.g. tcp://host:8786"
    )
    p.add_argument("--workers", type=int, default=None, help="local processes (default: one per core)")
    p.add_argument("--preview", type=int, default=5, metavar="N", help="rows of each table shown at the end")
    p.set_defaults(handler=_run)


def _list() -> int:
    for name in experiments():
        keys = ", ".join(k if d is REQUIRED else f"{k}={d!r}" for k, d in experiment_keys(name).items())
        print(f"{name}: {keys}")
    return 0


def _outputs(args: argparse.Namespace) -> list[Path]:
    if args.output is None:
        return [default_output(p) for p in args.params]
    if len(args.params) == 1 and args.output.suffix in (".csv", ".parquet"):
        return [args.output]
    if args.output.suffix in (".csv", ".parquet"):
        raise ConfigError("several PARAMS files need --output to be a folder (one table each)")
    return [args.output / f"{p.stem}.csv" for p in args.params]


def _run(args: argparse.Namespace) -> int:
    if args.list:
        return _list()
    if not args.params:
        raise ConfigError("give one or more PARAMS.yaml files, or --list")
    specs = [load_sweep(p) for p in args.params]  # every file checked before any point runs
    outputs = _outputs(args)
    for out in {o.parent for o in outputs}:
        writable_directory(out, "output directory")
    live = is_terminal(sys.stderr)
    for path, spec, out in zip(args.params, specs, outputs, strict=True):
        where = args.scheduler or "a local process pool"
        print(f"sweep {path.name}: {spec.experiment}, {spec.size} points on {where}", flush=True)
        clock = Progress()

        def progress(done: int, total: int, clock: Progress = clock) -> None:
            # "# " marks a note on stderr (as the monitor's), so an error stays the one other line.
            if live:
                print(f"\r# {clock.line(done, total)}", end="", file=sys.stderr, flush=True)
            elif done == total or done % max(total // 10, 1) == 0:
                print(f"# {clock.line(done, total)}", file=sys.stderr, flush=True)

        frame = run_sweep(spec, scheduler=args.scheduler, workers=args.workers, progress=progress)
        if live:
            print(file=sys.stderr)
        write_table(frame, out)
        print(f"{len(frame)} rows x {len(frame.columns)} columns -> {out}")
        if args.preview > 0:
            for line in frame.head(args.preview).to_string(index=False, max_colwidth=24).splitlines():
                print(escape(line))
    return 0
