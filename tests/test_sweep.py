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
    captured = capsys.readouterr()
    assert f"{len(table)}/{len(table)} points" in captured.err and "elapsed, ETA" in captured.err
    preview = captured.out.splitlines()
    assert preview[-6].split()[:3] == ["tier", "profile", "payload_bytes"] and len(preview[-5:]) == 5


def test_sweep_list_names_experiments_and_keys(capsys):
    assert main(["sweep", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    overhead = next(line for line in lines if line.startswith("frame_overhead: "))
    assert "tier, profile, payload_bytes, nominal_bitrate=1000000" in overhead
    assert any(line.startswith("pairing_cost: ") for line in lines)
    # The simulator's experiments register themselves (sweep._register_optional) and list the same way.
    design = next(line for line in lines if line.startswith("design_space: "))
    assert "protocol, bus, modules, platform='STM32WB55 / ATmega64M1', stuffing='worst', cpu_file=None" in design
    assert "_frame_overhead" not in "\n".join(lines)


def test_an_unknown_design_space_key_names_the_valid_ones(tmp_path, capsys):
    params = tmp_path / "typo.yaml"
    params.write_text("experiment: design_space\ngrid: {modules: [1]}\nfixed: {protocol: seed, bus: classic 500k, "
                      "platfrom: STM32WB55}\n")  # fmt: skip
    assert main(["sweep", str(params), "--output", str(tmp_path / "out.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'platfrom'" in err and "platform" in err and "cpu_file" in err
    assert not (tmp_path / "out.csv").exists()


def test_several_files_in_one_call_go_under_build_or_a_folder(tmp_path, capsys):
    small = tmp_path / "small.yaml"
    small.write_text(
        "experiment: frame_overhead\ngrid: {tier: [none, binding], profile: [classic]}\nfixed: {payload_bytes: 8}\n"
    )
    assert main(["sweep", str(small), str(SWEEP), "--output", str(tmp_path / "tables"), "--workers", "2"]) == 0
    assert len(pd.read_csv(tmp_path / "tables" / "small.csv")) == 2
    assert len(pd.read_csv(tmp_path / "tables" / "frame-overhead.csv")) == load_sweep(SWEEP).size
    assert main(["sweep", str(small), str(SWEEP), "--output", str(tmp_path / "one.csv")]) == 2
    from modbatt.workbench.paths import OutputLayout
    from modbatt.workbench.sweep import default_output

    assert default_output(SWEEP) == OutputLayout.default().build / "sweeps" / "frame-overhead.csv"


def test_unknown_keys_name_the_valid_ones_before_anything_runs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: frame_overhead\ngrid: {tier: [none], tpyo: [1]}\n")
    out = tmp_path / "never"
    assert main(["sweep", str(SWEEP), str(bad), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "modbatt sweep: error: experiment frame_overhead has no key 'tpyo'; "
        "its keys: tier, profile, payload_bytes, nominal_bitrate, data_bitrate"
    )
    assert not out.exists()  # the good file did not run either
    missing = tmp_path / "missing.yaml"
    missing.write_text("experiment: frame_overhead\ngrid: {tier: [none]}\n")
    assert main(["sweep", str(missing)]) == 2
    assert "needs profile, payload_bytes" in capsys.readouterr().err
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("experiment: frame_overhead\ngrid: {tier: [none], profile: [classic], payload_bytes: [x]}\n")
    assert main(["sweep", str(wrong), "--output", str(tmp_path / "w.csv"), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot run tier='none', profile='classic', payload_bytes='x'" in err and "_frame_overhead" not in err


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
