"""The design space: protocol profiles in the latency model, CPU profile files, the grid and its sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from modbatt.cli import main
from modbatt.errors import ConfigError
from modbatt.sim import BUSES, run_level
from modbatt.sim.cpu import (
    ATMEGA64M1,
    CORE_OPS,
    ECDH,
    ECDSA_SIGN,
    STM32WB55,
    STM32WB55_SW,
    cpu_profile_from_mapping,
    load_cpu_profile,
)
from modbatt.sim.design import answer_table, breakdown, design_point, design_space, resolve_platforms
from modbatt.sim.load import cpu_load, simulate_pack_load
from modbatt.sim.transactions import BUDGET_LEVELS, BUDGETS, PROTOCOLS, Compute, level_steps, offline_steps
from modbatt.workbench.sweep import SweepSpec, load_sweep, run_sweep

PLATFORMS = ["STM32WB55 / ATmega64M1", "STM32WB55-sw"]
KEYS = ["platform", "bus", "modules", "stuffing", "level"]


@pytest.fixture(scope="module")
def grid():
    return design_space(["seed", "efficient"], PLATFORMS, ["classic 250k", "FD 500k/2M"], [1, 31])


def test_grid_is_tidy_and_complete(grid):
    assert len(grid) == 2 * 2 * 2 * 2 * 4
    for col in ("protocol", "platform", "pack_cpu", "module_cpu", "bus", "modules", "level", "budget_ms",
                "latency_ms", "compute_ms", "wire_ms", "queue_ms", "latency_idle_ms", "bus_load", "pack_cpu_load",
                "module_cpu_load", "latency_ok", "sustainable", "met", "margin_ms"):  # fmt: skip
        assert col in grid.columns, col
    assert set(grid.level) == set(BUDGET_LEVELS)
    assert (grid.budget_ms == grid.level.map(lambda lv: BUDGETS[lv] * 1e3)).all()
    # The verdicts follow from the numbers.
    assert ((grid.latency_ms - (grid.compute_ms + grid.wire_ms + grid.queue_ms)).abs() < 1e-9).all()
    assert ((grid.budget_ms - grid.latency_ms - grid.margin_ms).abs() < 1e-9).all()
    assert (grid.latency_ok == (grid.latency_ms <= grid.budget_ms)).all()
    assert (grid.met == (grid.latency_ok & grid.sustainable)).all()
    assert (grid.latency_idle_ms <= grid.latency_ms + 1e-12).all()


def test_efficient_is_never_slower_than_seed(grid):
    seed = grid[grid.protocol == "seed"].set_index(KEYS)
    eff = grid[grid.protocol == "efficient"].set_index(KEYS).loc[seed.index]
    assert (eff.compute_ms <= seed.compute_ms + 1e-9).all()
    assert (eff.latency_idle_ms <= seed.latency_idle_ms + 1e-9).all()
    assert (eff.latency_ms <= seed.latency_ms + 1e-9).all()
    assert (eff.bus_load <= seed.bus_load).all() and (eff.bus_load < seed.bus_load).any()  # no signed commands
    assert (eff.met >= seed.met).all() and eff.met.sum() > seed.met.sum()


def test_module_side_p256_keeps_the_atmega_from_l3_and_l6_in_every_profile(grid):
    rows = grid[(grid.module_cpu == "ATmega64M1") & grid.level.isin(["L3 signed handshake", "L6 pairing validation"])]
    assert len(rows) and not rows.met.any()
    # What blocks it is one scalar multiplication (seconds), not the bus.
    assert (rows.module_compute_ms >= ATMEGA64M1.cost(ECDH) * 1e3).all()
    assert (rows.module_compute_ms > rows.budget_ms).all()


def test_load_grows_with_the_pack_and_queueing_with_it(grid):
    tel = grid[(grid.level == "L5 telemetry frame") & (grid.bus == "classic 250k")].set_index(
        ["protocol", "platform", "modules"])  # fmt: skip
    for proto in ("seed", "efficient"):
        for plat in PLATFORMS:
            small, big = tel.loc[(proto, plat, 1)], tel.loc[(proto, plat, 31)]
            assert big.bus_load > small.bus_load and big.queue_ms > small.queue_ms
    # 31 modules saturate 250 kbit/s under worst-case stuffing: nothing there is sustainable.
    assert not grid[(grid.bus == "classic 250k") & (grid.modules == 31)].sustainable.any()


def test_idle_latency_equals_the_event_simulation_alone_on_the_bus():
    (plat,) = resolve_platforms(["STM32WB55 / ATmega64M1"]).values()
    for proto in PROTOCOLS:
        for bus in ("classic 250k", "FD 1M/5M"):
            rows = {r["level"]: r for r in design_point(proto, plat, bus, 1)}
            for level in BUDGET_LEVELS:
                alone = run_level(level, plat, BUSES[bus], protocol=proto)
                assert rows[level]["latency_idle_ms"] == pytest.approx(alone["latency_ms"], rel=1e-9)


def test_profiles_differ_where_the_docs_say():
    classic = BUSES["classic 250k"]
    seed, eff = (level_steps("L5 command + ack", p, classic) for p in ("seed", "efficient"))
    assert sum(isinstance(s, Compute) and s.op == ECDSA_SIGN for s in seed) == 2  # command and ack signed
    assert not any(isinstance(s, Compute) and s.op in ("ecdsa_sign", "ecdsa_verify") for s in eff)
    l3 = level_steps("L3 signed handshake", "efficient", classic)
    assert not any(isinstance(s, Compute) and s.op == "keygen" for s in l3)  # precomputed ...
    assert {s.op for s in offline_steps("efficient")} >= {"keygen", "ecdh", "hkdf"}  # ... here instead
    assert sum(isinstance(s, Compute) and s.op == ECDSA_SIGN for s in level_steps("L6 pairing validation", "efficient",
                                                                                   classic)) == 2  # fmt: skip
    assert {s.op for s in level_steps("L3 signed handshake", "ed25519", classic) if isinstance(s, Compute)} >= {
        "ed25519_sign", "ed25519_verify", "x25519", "x25519_keygen"}  # fmt: skip


def test_cpu_load_flags_a_pack_that_cannot_sign_every_command():
    (pka,) = resolve_platforms(["STM32WB55"]).values()
    pack, _ = cpu_load("seed", pka, BUSES["classic 1M"], 31)
    assert pack > 1.0  # 31 signatures + 31 verifications per second on the PKA
    assert cpu_load("efficient", pka, BUSES["classic 1M"], 31)[0] < 0.05
    seed, eff = (simulate_pack_load(4, "FD 1M/5M", duration=1.0, protocol=p).summary for p in ("seed", "efficient"))
    assert seed["bus_load"] > eff["bus_load"]


def test_breakdown_rows_add_up_to_the_design_point():
    (plat,) = resolve_platforms(["STM32WB55-sw"]).values()
    point = {r["level"]: r for r in design_point("efficient", plat, "classic 500k", 16)}
    for level in BUDGET_LEVELS:
        rows = breakdown(level, "efficient", plat, "classic 500k", 16)
        total = sum(r["compute_ms"] + r["wire_ms"] + r["queue_ms"] for r in rows)
        assert total == pytest.approx(point[level]["latency_ms"], rel=1e-9)


def test_answer_table_ranks_configurations(grid):
    table = answer_table(grid, bus="FD 500k/2M", modules=31)
    assert table.protocol.iloc[0] == "efficient"
    assert table.total_met.is_monotonic_decreasing


# --- CPU profile files ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [STM32WB55, STM32WB55_SW, ATMEGA64M1], ids=lambda p: p.name)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_profile_files_round_trip(tmp_path, profile, suffix):
    path = tmp_path / f"chip{suffix}"
    data = profile.to_mapping()
    path.write_text(yaml.safe_dump(data, sort_keys=False) if suffix == ".yaml" else json.dumps(data))
    loaded = load_cpu_profile(path)
    assert loaded.to_mapping() == data
    for op, cost in profile.ops.items():
        assert loaded.cost(op, 100) == pytest.approx(cost.seconds(100), rel=1e-12)
        assert loaded.ops[op].source == cost.source and loaded.ops[op].published == cost.published


def _valid() -> dict:
    return ATMEGA64M1.to_mapping()


def _drop(key: str) -> dict:
    d = _valid()
    del d[key]
    return d


def _op(op: str, **change) -> dict:
    d = _valid()
    d["ops"][op] = {**d["ops"][op], **change}
    return d


def _without_op(op: str) -> dict:
    d = _valid()
    del d["ops"][op]
    return d


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (_drop("clock_hz"), "clock_hz"),
        ({**_valid(), "clock_hz": 0}, "clock_hz"),
        ({**_valid(), "clock_hz": "fast"}, "clock_hz"),
        ({**_valid(), "colour": "red"}, "colour"),
        (_without_op("aes_ccm"), "aes_ccm"),
        ({**_valid(), "ops": {**_valid()["ops"], "rsa_sign": {"cycles": 1, "source": "x"}}}, "rsa_sign"),
        (_op("ecdsa_sign", cycles=-5), "ops.ecdsa_sign.cycles"),
        (_op("ecdsa_sign", cycles=True), "ops.ecdsa_sign.cycles"),
        (_op("ecdsa_sign", source=""), "ops.ecdsa_sign.source"),
        (_op("aes_gcm", block=0), "ops.aes_gcm.block"),
        (_op("aes_gcm", published="yes"), "ops.aes_gcm.published"),
        (_op("aes_gcm", speed=3), "speed"),
        ([1, 2, 3], "mapping"),
    ],
)  # fmt: skip
def test_bad_profile_files_are_one_line_config_errors(tmp_path, content, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError) as err:
        load_cpu_profile(path)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "text"), [("x.yaml", "ops: [unclosed"), ("x.json", '{"name": "a", "name": "b"}'),
                                            ("x.txt", "name: a"), ("missing.yaml", None)])  # fmt: skip
def test_unreadable_profile_files_are_config_errors(tmp_path, name, text):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_cpu_profile(path)
    assert "\n" not in str(err.value)


def test_the_example_profile_file_is_the_atmega_at_16_mhz():
    example = load_cpu_profile(Path(__file__).resolve().parents[1] / "sweeps"
                               / "cpu-atmega64m1-16mhz.yaml")  # fmt: skip
    assert example.clock_hz == 2 * ATMEGA64M1.clock_hz
    for op, cost in ATMEGA64M1.ops.items():
        assert example.cost(op, 64) * 2 == pytest.approx(cost.seconds(64)) and example.ops[op].source == cost.source


def test_a_user_profile_runs_in_the_design_space(tmp_path):
    data = ATMEGA64M1.to_mapping()
    data.update(name="ATmega64M1@16MHz", clock_hz=16e6)  # the same cycle counts at twice the clock
    for op in ("ed25519_sign", "ed25519_verify", "x25519", "x25519_keygen"):
        del data["ops"][op]
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(data))
    table = design_space(None, ["STM32WB55-sw / ATmega64M1", "STM32WB55-sw / ATmega64M1@16MHz"], ["classic 500k"],
                         [1], cpu_files=[path])  # fmt: skip
    assert set(table.protocol) == set(PROTOCOLS)
    fast = table[table.module_cpu == "ATmega64M1@16MHz"]
    assert set(fast.protocol) == {"seed", "efficient"}  # no Ed25519 costs in the file: no ed25519 rows
    slow = table[(table.module_cpu == "ATmega64M1") & table.protocol.isin(["seed", "efficient"])]
    merged = slow.merge(fast, on=["protocol", "level"], suffixes=("_slow", "_fast"))
    assert list(merged.module_compute_ms_fast * 2) == pytest.approx(list(merged.module_compute_ms_slow))
    with pytest.raises(ConfigError, match="unknown platform"):
        resolve_platforms(["STM32WB55 / Z80"])
    assert cpu_profile_from_mapping(data).name == "ATmega64M1@16MHz"
    assert set(CORE_OPS) <= set(load_cpu_profile(path).ops)


# --- The sweep -------------------------------------------------------------------------------------


def test_design_space_sweep_file_covers_the_grid():
    spec = load_sweep(Path(__file__).resolve().parents[1] / "sweeps" / "design-space.yaml")
    assert spec.experiment == "design_space"
    assert spec.grid["modules"] == list(range(1, 32)) and set(spec.grid["profile"]) == set(PROTOCOLS)
    assert set(spec.grid["bus"]) == set(BUSES) and "HOST" in spec.grid["platform"]


def test_design_space_sweep_runs_in_a_process_pool():
    spec = SweepSpec("design_space", {"profile": ["seed", "efficient"], "modules": [1, 31],
                                      "platform": ["STM32WB55-sw / ATmega64M1"]}, {"bus": "classic 500k"})  # fmt: skip
    frame = run_sweep(spec, workers=2)
    assert len(frame) == spec.size * 4
    direct = design_space(["efficient"], ["STM32WB55-sw / ATmega64M1"], ["classic 500k"], [31])
    assert "protocol" not in frame.columns  # one column names the profile: the sweep key
    row = frame[(frame.profile == "efficient") & (frame.modules == 31)].set_index("level")
    assert row.loc[list(direct.level), "latency_ms"].tolist() == pytest.approx(direct.latency_ms.tolist())


def test_a_bad_cpu_file_in_a_sweep_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "chip.yaml"
    bad.write_text("name: x\nclock_hz: -1\nops: {}\n")
    params = tmp_path / "sweep.yaml"
    params.write_text(yaml.safe_dump({"experiment": "design_space", "grid": {"modules": [1]},
                                      "fixed": {"profile": "seed", "bus": "classic 500k", "platform": "x",
                                                "cpu_file": str(bad)}}))  # fmt: skip
    assert main(["sweep", str(params), "--output", str(tmp_path / "out.csv"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "clock_hz" in err[-1]
    assert not (tmp_path / "out.csv").exists()


def test_tables_are_pandas(grid):
    assert isinstance(grid, pd.DataFrame)
