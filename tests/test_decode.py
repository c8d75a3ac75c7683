"""`modbatt decode`: a secured capture decrypted offline with a key store, exported for CAN tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cantools
import pytest
from helpers_capture import VOLTS, record_secured_capture

from modbatt.can import dbc
from modbatt.cli import main
from modbatt.transport.recording import read_log, write_log


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A module's voltage telemetry (ISO-TP) and heartbeats (single frames) as recorded on a bus."""
    state = tmp_path_factory.mktemp("decode-state")
    recorded = record_secured_capture(state)
    log = state / "capture.blf"
    write_log(log, recorded.frames)
    return log, recorded.keystore


def test_decode_prints_physical_values(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, store = capture
    assert main(["decode", str(log), "--keystore", str(store)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    volts = [line for line in lines if "cellLoVolt" in line]
    assert len(volts) == len(VOLTS) and "3.601 V" in volts[0] and "VOLTAGE_N2C" in volts[0]
    assert sum("Counter" in line for line in lines) == len(VOLTS)
    # the voltages and heartbeats, plus the restart resync's challenges (in clear)
    challenges = sum("RESYNC_RE" in line for line in lines)
    assert challenges == 3 and f"{len(VOLTS) * 2 + challenges} readable" in captured.err


def test_decode_without_keys_reads_nothing(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    log, _ = capture
    assert main(["decode", str(log)]) == 0
    captured = capsys.readouterr()
    assert "cellLoVolt" not in captured.out and "3 readable" in captured.err and "encrypted" in captured.err


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_decode_writes_a_table(capture: tuple[Path, Path], tmp_path: Path, suffix: str) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="pandas writes Parquet through pyarrow")
    import pandas as pd

    log, store = capture
    out = tmp_path / f"values{suffix}"
    assert main(["decode", str(log), "--keystore", str(store), "--output", str(out)]) == 0
    table = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
    lo = table[table.signal == "cellLoVolt"]
    assert list(lo.value.round(3)) == [round(v[0], 3) for v in VOLTS] and set(lo.unit) == {"V"}
    assert set(table.columns) >= {"timestamp", "node", "message", "signal", "value", "unit"}


def test_decrypted_capture_plots_in_cantools(capture: tuple[Path, Path], tmp_path: Path) -> None:
    log, store = capture
    plain = tmp_path / "plain.log"
    assert main(["decode", str(log), "--keystore", str(store), "--output", str(plain)]) == 0
    assert main(["dbc", "export", str(tmp_path), "--module-id", "0x01"]) == 0
    frames = list(read_log(plain))
    assert len(frames) == 2 * len(VOLTS)
    # strict decode of every plaintext frame with the cleartext-view DBC
    decoded = subprocess.run(
        [sys.executable, "-m", "cantools", "decode", "--single-line", str(tmp_path / dbc.PLAIN_DBC_NAME)],
        stdin=plain.open(), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert all(":: VOLTAGE_N2C_01(" in line or ":: HEARTBEAT_N2C_01(" in line for line in decoded.stdout.splitlines())
    png = tmp_path / "volts.png"
    result = subprocess.run(
        [sys.executable, "-m", "cantools", "plot", str(tmp_path / dbc.PLAIN_DBC_NAME), "*cellLoVolt", "*cellHiVolt",
         "-o", str(png)],
        stdin=plain.open(), capture_output=True, text=True, timeout=120, env={**os.environ, "MPLBACKEND": "Agg"},
    )  # fmt: skip
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
    assert png.stat().st_size > 5000 and png.read_bytes().startswith(b"\x89PNG")


def test_decode_output_in_asc_and_blf(capture: tuple[Path, Path], tmp_path: Path) -> None:
    log, store = capture
    plain_db = cantools.database.load_string(dbc.build_plain_database().as_dbc_string())
    for suffix in (".asc", ".blf"):
        out = tmp_path / f"plain{suffix}"
        assert main(["decode", str(log), "--keystore", str(store), "--output", str(out)]) == 0
        first = next(m for m in read_log(out) if m.dlc == 8)
        assert plain_db.decode_message(first.arbitration_id, bytes(first.data))["cellLoVolt"] == pytest.approx(3.601)


def test_decode_errors_are_one_line(
    capture: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, _ = capture
    assert main(["decode", str(tmp_path / "absent.log")]) == 2
    assert main(["decode", str(log), "--output", str(tmp_path / "x.xyz")]) == 2
    assert main(["decode", str(log), "--output", str(tmp_path / "blocker" / "x.csv")]) == 0  # folder is created
    (tmp_path / "file").write_text("")
    assert main(["decode", str(log), "--output", str(tmp_path / "file" / "x.csv")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("# ")]
    assert len(err) == 3 and all(line.startswith("modbatt decode: error: ") for line in err), err
    assert "not a directory" in err[2]
