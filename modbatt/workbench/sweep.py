"""``modbatt sweep PARAMS.yaml``: run a parameter grid through the package's functions.

A sweep file names an experiment, a grid (every combination is one point) and fixed values::

    experiment: frame_overhead
    grid:
      tier: [none, exchange, pairing, binding]
      bus: [classic, fd]
      profile: [seed, efficient]
      payload_bytes: [1, 8, 64, 512]
    fixed:
      nominal_bitrate: 500000

Points run in a local process pool, or on a dask.distributed cluster given a scheduler address;
papermill is not involved (a kernel start per point would dominate). Results land in one tidy
table: one row per point (or per row an experiment returns), parameters first, as CSV — or
Parquet when the output ends in ``.parquet`` and pyarrow is installed.

:data:`EXPERIMENTS` maps an experiment's name to a function whose keyword arguments are the
sweep's keys; :func:`experiment_keys` reads them from the signature, so a sweep file is checked
(unknown or missing keys) before any point runs, and errors name experiments and keys, never
the functions behind them.
"""

from __future__ import annotations

import inspect
import itertools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["EXPERIMENTS", "SweepSpec", "experiment_keys", "experiments", "load_sweep", "run_sweep", "write_table"]

MAX_POINTS = 100_000


def _frame_overhead(tier: str, bus: str, payload_bytes: int, nominal_bitrate: int = 1_000_000,
                    data_bitrate: int | None = None, profile: str = "seed") -> dict[str, Any]:  # fmt: skip
    """Wire cost of one message: frames, bus time, goodput (see :func:`modbatt.can.overhead.message_cost`).

    ``bus`` is a bus profile (classic, fd), ``profile`` the protocol profile (docs/profiles.md).
    """
    import dataclasses

    from ..can.overhead import message_cost
    from ..can.wiretime import PROFILES
    from ..model.profile import profile_named
    from ..model.tier import Tier

    try:
        base = PROFILES[bus]
        tier_value = Tier[tier.upper()]
    except KeyError:
        raise ConfigError(f"unknown tier {tier!r} or bus {bus!r}") from None
    protocol = profile_named(profile)
    changes: dict[str, Any] = {"nominal_bitrate": int(nominal_bitrate)}
    if base.fd:
        changes["data_bitrate"] = int(data_bitrate) if data_bitrate else base.data_bitrate
    row = message_cost(tier_value, dataclasses.replace(base, **changes), int(payload_bytes), protocol).as_row()
    del row["bus"], row["profile"]  # the point's own keys
    return row


def _pairing_cost(mode: str = "standard", max_uses: int = 1, seed: int | None = None,
                  profile: str = "seed") -> dict[str, Any]:  # fmt: skip
    """Certificate size and the time of one full in-process pairing under a protocol profile."""
    import time

    from ..model.pairing import ControllerMode
    from ..nodes.inmemory import InMemoryDeployment
    from ..nodes.pairing_flow import pair_entities

    d = InMemoryDeployment(seed=seed)
    record = d.bind(d.pack, d.modules[1]).record
    t0 = time.perf_counter()
    out = pair_entities(d.controller, d.pack, d.modules[1], record.binding_id, mode=ControllerMode(mode),
                        max_uses=int(max_uses), profile=profile)  # fmt: skip
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


def experiments() -> dict[str, Callable[..., Any]]:
    """Every registered experiment (including those of optional modules), by name."""
    _register_optional()
    return dict(sorted(EXPERIMENTS.items()))


def experiment_keys(name: str) -> dict[str, Any]:
    """The keys an experiment takes: ``{key: default}``, with :data:`REQUIRED` for keys without one."""
    found = experiments()
    if name not in found:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(found)}")
    params = inspect.signature(found[name]).parameters.values()
    return {p.name: REQUIRED if p.default is inspect.Parameter.empty else p.default for p in params}


def _check_profiles(experiment: str, values: list[Any]) -> None:
    """Protocol profiles (docs/profiles.md) are checked before anything runs: the implemented ones,
    and for the latency model's experiments the modelled ones too."""
    from ..model.profile import ProtocolProfile

    known = [p.value for p in ProtocolProfile]
    try:
        from ..sim.experiments import SWEEP_EXPERIMENTS
        from ..sim.transactions import PROTOCOLS

        if experiment in SWEEP_EXPERIMENTS and experiment != "pack_simulation":
            known += [name for name in PROTOCOLS if name not in known]
    except ImportError:
        pass
    for value in values:
        if value not in known:
            raise ConfigError(f"experiment {experiment}: unknown protocol profile {value!r}; known: {', '.join(known)}")


#: Marks a key without a default in :func:`experiment_keys`.
REQUIRED = object()


class SweepSpec:
    """A validated sweep file."""

    def __init__(self, experiment: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None):
        keys = experiment_keys(experiment)
        if not isinstance(grid, Mapping) or not grid:
            raise ConfigError("grid must map parameter names to lists of values")
        for name, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"grid.{name} must be a non-empty list")
        self.experiment = experiment
        self.grid = {str(k): list(v) for k, v in grid.items()}
        self.fixed = {str(k): v for k, v in (fixed or {}).items()}
        overlap = set(self.grid) & set(self.fixed)
        if overlap:
            raise ConfigError(f"parameters both in grid and fixed: {sorted(overlap)}")
        given = set(self.grid) | set(self.fixed)
        listed = ", ".join(keys)
        unknown = sorted(given - set(keys))
        if unknown:
            raise ConfigError(f"experiment {experiment} has no key {', '.join(map(repr, unknown))}; its keys: {listed}")
        profiles = [*self.grid.get("profile", []), *([self.fixed["profile"]] if "profile" in self.fixed else [])]
        _check_profiles(experiment, profiles)
        missing = [k for k, default in keys.items() if default is REQUIRED and k not in given]
        if missing:
            raise ConfigError(f"experiment {experiment} needs {', '.join(missing)} (grid or fixed); its keys: {listed}")
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
    """A sweep file, checked: ConfigError (one line naming the file) for anything else."""
    from ..encoding import MAX_TEXT_FILE_BYTES, strict_yaml_loads
    from ..errors import EncodingError

    try:
        with Path(path).open("rb") as fh:
            raw = fh.read(MAX_TEXT_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = strict_yaml_loads(raw)
    except EncodingError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(data, Mapping) or set(data) - {"experiment", "grid", "fixed"} or "experiment" not in data:
        raise ConfigError(f"{path} must hold 'experiment', 'grid' and optionally 'fixed'")
    if not isinstance(data["experiment"], str):
        raise ConfigError(f"{path}: 'experiment' names an experiment (a string)")
    fixed = data.get("fixed")
    if fixed is not None and not isinstance(fixed, Mapping):
        raise ConfigError(f"{path}: 'fixed' maps parameter names to values")
    return SweepSpec(data["experiment"], data.get("grid") or {}, fixed)


def _run_point(experiment: str, point: dict[str, Any]) -> list[dict[str, Any]]:
    _register_optional()
    try:
        out = EXPERIMENTS[experiment](**point)
    except (TypeError, ValueError) as exc:  # a value the experiment cannot use
        shown = ", ".join(f"{k}={v!r}" for k, v in point.items())
        # A TypeError's text names the Python function; a ValueError's says what is wrong with the value.
        why = "a value of the wrong type" if isinstance(exc, TypeError) else str(exc).splitlines()[0]
        raise ConfigError(f"experiment {experiment} cannot run {shown}: {why}") from None
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
        from distributed import Client, as_completed

        with Client(scheduler, timeout="20s") as client:
            futures = client.map(_run_point, [spec.experiment] * len(points), points, pure=False)
            done: dict[int, list[dict[str, Any]]] = {}
            index = {f.key: i for i, f in enumerate(futures)}
            for n, future in enumerate(as_completed(futures), 1):
                done[index[future.key]] = future.result()
                if progress:
                    progress(n, len(points))
            for i in range(len(points)):
                rows.extend(done[i])
    else:
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            for i, result in enumerate(pool.map(_run_point, [spec.experiment] * len(points), points, chunksize=8), 1):
                rows.extend(result)
                if progress:
                    progress(i, len(points))
    return pd.DataFrame(rows)


class Progress:
    """``done/total``, elapsed time and an ETA from the mean time per point so far."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start = clock()

    def line(self, done: int, total: int) -> str:
        elapsed = self._clock() - self._start
        eta = elapsed / done * (total - done) if done else float("nan")
        eta_text = f"{eta:.1f} s" if done else "-"
        return f"{done}/{total} points, {elapsed:.1f} s elapsed, ETA {eta_text}"


def default_output(params: Path) -> Path:
    """Where a sweep's table goes without ``--output``: ``build/sweeps/NAME.csv`` of the checkout."""
    from .paths import OutputLayout

    return OutputLayout.default().build / "sweeps" / f"{Path(params).stem}.csv"


def write_table(frame: Any, path: Path) -> Path:
    """CSV, or Parquet for a ``.parquet`` path (needs pyarrow)."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"a table is written as .csv or .parquet, not {path.suffix or 'no suffix'!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            frame.to_parquet(path, index=False)
        except ImportError:
            raise ConfigError("writing Parquet needs pyarrow (pip install pyarrow), or use a .csv output") from None
    else:
        frame.to_csv(path, index=False)
    return path
