"""``modbatt sweep PARAMS.yaml``: run a parameter grid through the package's functions.

A sweep file names an experiment, a grid (every combination is one point) and fixed values::

    experiment: frame_overhead
    grid:
      tier: [none, exchange, pairing, binding]
      profile: [classic, fd]
      payload_bytes: [1, 8, 64, 512]
    fixed:
      nominal_bitrate: 500000

Points run in a local process pool, or on a dask.distributed cluster given a scheduler address;
papermill is not involved (a kernel start per point would dominate). Results land in one tidy
table: one row per point (or per row an experiment returns), parameters first, as CSV — or
Parquet when the output ends in ``.parquet`` and pyarrow is installed.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

__all__ = ["EXPERIMENTS", "SweepSpec", "load_sweep", "run_sweep", "write_table"]

MAX_POINTS = 100_000


def _frame_overhead(tier: str, profile: str, payload_bytes: int, nominal_bitrate: int = 1_000_000,
                    data_bitrate: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Wire cost of one message: frames, bus time, goodput (see :func:`modbatt.can.overhead.message_cost`)."""
    import dataclasses

    from ..can.overhead import message_cost
    from ..can.wiretime import PROFILES
    from ..model.tier import Tier

    try:
        base = PROFILES[profile]
        tier_value = Tier[tier.upper()]
    except KeyError:
        raise ConfigError(f"unknown tier {tier!r} or profile {profile!r}") from None
    changes: dict[str, Any] = {"nominal_bitrate": int(nominal_bitrate)}
    if base.fd:
        changes["data_bitrate"] = int(data_bitrate) if data_bitrate else base.data_bitrate
    return message_cost(tier_value, dataclasses.replace(base, **changes), int(payload_bytes)).as_row()


def _pairing_cost(mode: str = "standard", max_uses: int = 1, seed: int | None = None) -> dict[str, Any]:
    """Certificate size and the time of one full in-process pairing."""
    import time

    from ..model.pairing import ControllerMode
    from ..nodes.inmemory import InMemoryDeployment
    from ..nodes.pairing_flow import pair_entities

    d = InMemoryDeployment(seed=seed)
    record = d.bind(d.pack, d.modules[1]).record
    t0 = time.perf_counter()
    out = pair_entities(d.controller, d.pack, d.modules[1], record.binding_id, mode=ControllerMode(mode),
                        max_uses=int(max_uses))  # fmt: skip
    elapsed = time.perf_counter() - t0
    d.ledger.close()
    return {"certificate_bytes": len(out.certificate.encode()), "pairing_ms": round(elapsed * 1e3, 3)}


#: Experiment name -> function(**point) -> row or list of rows. Module-level so processes can pickle it.
EXPERIMENTS: dict[str, Callable[..., Mapping[str, Any] | Sequence[Mapping[str, Any]]]] = {
    "frame_overhead": _frame_overhead,
    "pairing_cost": _pairing_cost,
}


def _register_optional() -> None:
    # Experiments from higher layers register themselves when their modules exist.
    try:
        from ..sim.experiments import SWEEP_EXPERIMENTS

        EXPERIMENTS.update(SWEEP_EXPERIMENTS)
    except ImportError:
        pass


class SweepSpec:
    """A validated sweep file."""

    def __init__(self, experiment: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None):
        _register_optional()
        if experiment not in EXPERIMENTS:
            raise ConfigError(f"unknown experiment {experiment!r}; known: {', '.join(sorted(EXPERIMENTS))}")
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError("grid must map parameter names to lists of values")
        for name, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{name} must be a non-empty list")
        self.experiment = experiment
        self.grid = {str(k): list(v) for k, v in grid.items()}
        self.fixed = dict(fixed or {})
        overlap = set(self.grid) & set(self.fixed)
        if overlap:
            raise ConfigError(f"parameters both in grid and fixed: {sorted(overlap)}")
        if self.size > MAX_POINTS:
            raise ConfigError(f"{self.size} points exceed the limit of {MAX_POINTS}")

    @property
    def size(self) -> int:
        n = 1
        for values in self.grid.values():
            n *= len(values)
        return n

    def points(self) -> list[dict[str, Any]]:
        names = list(self.grid)
        return [
            {**self.fixed, **dict(zip(names, combo, strict=True))} for combo in itertools.product(*self.grid.values())
        ]


def load_sweep(path: Path) -> SweepSpec:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, Mapping) or set(data) - {"experiment", "grid", "fixed"} or "experiment" not in data:
        raise ConfigError(f"{path} must hold 'experiment', 'grid' and optionally 'fixed'")
    return SweepSpec(str(data["experiment"]), data.get("grid") or {}, data.get("fixed"))


def _run_point(experiment: str, point: dict[str, Any]) -> list[dict[str, Any]]:
    _register_optional()
    try:
        out = EXPERIMENTS[experiment](**point)
    except TypeError as exc:
        raise ConfigError(f"{experiment} does not take these parameters: {exc}") from None
    rows = [out] if isinstance(out, Mapping) else list(out)
    return [{**point, **row} for row in rows]


def run_sweep(
    spec: SweepSpec,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Run every point; returns a pandas DataFrame (one row per result row)."""
    import pandas as pd

    points = spec.points()
    rows: list[dict[str, Any]] = []
    if scheduler:
        from distributed import Client

        with Client(scheduler, timeout="20s") as client:
            futures = client.map(_run_point, [spec.experiment] * len(points), points, pure=False)
            for i, result in enumerate(client.gather(futures), 1):
                rows.extend(result)
                if progress:
                    progress(i, len(points))
    else:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for i, result in enumerate(pool.map(_run_point, [spec.experiment] * len(points), points, chunksize=8), 1):
                rows.extend(result)
                if progress and (i % 10 == 0 or i == len(points)):
                    progress(i, len(points))
    return pd.DataFrame(rows)


def write_table(frame: Any, path: Path) -> Path:
    """CSV, or Parquet for a ``.parquet`` path (needs pyarrow)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            frame.to_parquet(path, index=False)
        except ImportError:
            raise ConfigError("writing Parquet needs pyarrow (pip install pyarrow), or use a .csv output") from None
    else:
        frame.to_csv(path, index=False)
    return path
