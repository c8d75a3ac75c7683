"""Sweeps: a grid of at least 100 points, locally and on a local dask.distributed cluster."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from modbatt.can.overhead import message_cost
from modbatt.can.wiretime import CLASSIC
from modbatt.cli import main
from modbatt.errors import ConfigError
from modbatt.model.tier import Tier
from modbatt.workbench.sweep import SweepSpec, load_sweep, run_sweep

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "frame-overhead.yaml"


def _check(frame: pd.DataFrame, spec: SweepSpec) -> None:
    assert len(frame) == spec.size >= 100
    # Every point is there once, and each row equals a direct call of the package function.
    assert frame[["tier", "profile", "payload_bytes", "nominal_bitrate"]].drop_duplicates().shape[0] == spec.size
    row = frame[(frame.tier == "pairing") & (frame.profile == "classic") & (frame.payload_bytes == 8)
                & (frame.nominal_bitrate == 1_000_000)].iloc[0]  # fmt: skip
    direct = message_cost(Tier.PAIRING, CLASSIC, 8)
    assert row.frames == direct.frames and row.wire_time_us_worst == pytest.approx(direct.wire_time_us_worst)


def test_sweep_of_more_than_100_points_in_a_local_process_pool():
    spec = load_sweep(SWEEP)
    _check(run_sweep(spec, workers=2), spec)


def test_sweep_on_a_local_dask_cluster():
    distributed = pytest.importorskip("distributed")
    spec = load_sweep(SWEEP)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster:  # fmt: skip
        frame = run_sweep(spec, scheduler=cluster.scheduler_address)
    _check(frame, spec)


def test_sweep_cli_writes_a_tidy_csv(tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert main(["sweep", str(SWEEP), "--output", str(out), "--workers", "2"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:4]) == ["tier", "profile", "payload_bytes", "nominal_bitrate"]
    assert len(table) == load_sweep(SWEEP).size


@pytest.mark.parametrize(
    "text",
    ["experiment: nope\ngrid: {a: [1]}\n", "experiment: frame_overhead\ngrid: {tier: []}\n", "just text", "grid: {}\n",
     "experiment: frame_overhead\ngrid: {tier: [none]}\nfixed: {tier: none}\n"],
)  # fmt: skip
def test_bad_sweep_files_are_config_errors(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_sweep(path)
