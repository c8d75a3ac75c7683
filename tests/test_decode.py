"""`modbatt decode`: a secured capture decrypted offline with a key store, exported for CAN tools."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import can
import cantools
import pytest

from modbatt.can import dbc
from modbatt.can.secured import SecuredPdu
from modbatt.cli import main
from modbatt.crypto.keystore import KeyStore
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel import PairedChannel
from modbatt.nodes.entity import EntityNode
from modbatt.transport.isotp_link import IsoTpLink
from modbatt.transport.recording import read_log, write_log
from modbatt.workbench.demo import MODULE_ID, PACK_ID, run_demo

T0 = 1_800_000_000.0
VOLTS = [(3.601 + i * 0.01, 3.702 + i * 0.01, 3.650 + i * 0.01) for i in range(5)]


def _link(store: KeyStore) -> PairedChannel:
    """The module's end of its paired link, from nothing but its key store (through the channel owner)."""
    node = EntityNode(store)
    ((pairing_id, _binding_id),) = node.pairings_held()
    return node.channel(pairing_id)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A module's voltage telemetry (ISO-TP) and heartbeats (single frames) as recorded on a bus."""
    state = tmp_path_factory.mktemp("decode-state")
    run_demo(state, transport="in-process")
    module_store = state / "entities" / f"{MODULE_ID}.keystore"
    pack_store = state / "entities" / f"{PACK_ID}.keystore"
    link = _link(KeyStore.open(module_store, key_file=module_store.with_suffix(".kek")))
    pack = _link(KeyStore.open(pack_store, key_file=pack_store.with_suffix(".kek")))
    legacy = cantools.database.load_string(dbc.build_legacy_database().as_dbc_string())
    channel = f"decode-{uuid.uuid4().hex}"
    buses = [can.Bus(interface="virtual", channel=channel) for _ in range(3)]

    def carry(pdu: SecuredPdu, to: PairedChannel) -> None:
        """One unit on the recorded bus (ISO-TP when it needs several frames), then to its receiver."""
        if pdu.single_frame:
            buses[0].send(can.Message(arbitration_id=pdu.can_id, data=pdu.data, is_extended_id=True))
        else:
            reverse = pdu.can_id ^ (1 << 20)
            with IsoTpLink(buses[0], pdu.can_id, reverse) as tx, IsoTpLink(buses[1], reverse, pdu.can_id) as rx:
                tx.send(pdu.data)
                assert rx.recv(timeout=2.0) == pdu.data
        to.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)

    try:
        # Both ends were restored from disk: their restart resync is on the wire too, and the
        # decoder must follow it (the module's counters resumed past a reservation bound).
        for _ in range(4):
            for src, dst in ((link, pack), (pack, link)):
                for pdu in src.frames_to_send():
                    carry(pdu, dst)
        assert link.synced and pack.synced
        for i, (lo, hi, avg) in enumerate(VOLTS):
            body = legacy.encode_message("MODULE_STATUS_2", {"cellLoVolt": lo, "cellHiVolt": hi, "cellAvgVolt": avg})
            pdu = link.send(MessageClass.VOLTAGE_TELEMETRY, body)
            reverse = pdu.can_id & ~(1 << 20)
            with (
                IsoTpLink(buses[0], pdu.can_id, reverse) as tx,
                IsoTpLink(buses[1], reverse, pdu.can_id) as rx,
            ):
                tx.send(pdu.data)
                assert rx.recv(timeout=2.0) == pdu.data
            beat = link.send(MessageClass.HEARTBEAT, bytes([i]))
            buses[0].send(can.Message(arbitration_id=beat.can_id, data=beat.data, is_extended_id=True))
        seen = []
        while (frame := buses[2].recv(timeout=0.05)) is not None:
            seen.append(frame)
    finally:
        for b in buses:
            b.shutdown()
        link.close()
        pack.close()
    for i, frame in enumerate(seen):
        frame.timestamp = T0 + i * 0.01
    log = state / "capture.blf"
    write_log(log, seen)
    return log, state / "entities" / f"{PACK_ID}.keystore"


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
