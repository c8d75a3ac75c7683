"""``modbatt monitor`` and its core, on recorded logs and on a live virtual bus."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import can
import cantools.database
import pytest
from cantools.database.can import Message as DbMessage
from cantools.database.can import Signal
from cantools.database.conversion import BaseConversion

from modbatt.cli import main
from modbatt.errors import ConfigError, Reason, VerificationError
from modbatt.model.tier import Tier
from modbatt.transport.monitor import Monitor, run_monitor
from modbatt.transport.recording import read_log, write_log
from modbatt.workbench.monitor_view import LiveTableView, TraceView, format_frame

ids = pytest.importorskip("modbatt.can.ids")

T0 = 1_700_000_000.0
GOOD_ID = ids.SEED_LAYOUT.encode(ids.CanIdFields(function=0x12, node=0x05, priority=3, tier=Tier.PAIRING))
CLEAR_ID = ids.SEED_LAYOUT.encode(ids.CanIdFields(function=0x40, node=0x01, priority=6, direction=1))
MALFORMED_ID = 0x00020000  # flag=1 with level 00: malformed in the seed layout


def _frames() -> list[can.Message]:
    frames = []
    for i in range(10):
        frames.append(can.Message(timestamp=T0 + i * 0.010, arbitration_id=GOOD_ID, data=bytes([i, 0xA5, 0, 0])))
        frames.append(can.Message(timestamp=T0 + i * 0.010 + 0.001, arbitration_id=CLEAR_ID, data=bytes([7] * 8)))
    frames.append(can.Message(timestamp=T0 + 0.2, arbitration_id=MALFORMED_ID, data=b"\x01"))
    frames.append(can.Message(timestamp=T0 + 0.3, arbitration_id=0x411, is_extended_id=False, data=bytes(8)))
    frames.append(
        can.Message(timestamp=T0 + 0.4, arbitration_id=GOOD_ID, is_fd=True, bitrate_switch=True, data=bytes(range(24)))
    )
    frames.append(can.Message(timestamp=T0 + 0.5, is_error_frame=True, arbitration_id=0x20000004, dlc=8, data=bytes(8)))
    return frames


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "capture.blf"
    write_log(path, _frames())
    return path


def _frame_lines(text: str) -> list[str]:
    """Trace lines (they start with a timestamp), not the table or the summary."""
    return [line for line in text.splitlines() if re.match(r"\s*\d+\.\d{6}  ", line)]


def test_trace_of_a_recorded_log(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--log", str(capture), "--no-builtin-dbc", "--bitrate", "500000"]) == 0
    out = capsys.readouterr().out
    lines = _frame_lines(out)
    assert len(lines) == len(_frames())
    good = lines[0]
    assert f"{GOOD_ID:08X}" in good and "flag=1 pairing fn=0x12 node=0x05 prio=3" in good
    assert "[4]" in good and "00 A5 00 00" in good
    assert "flag=0 none fn=0x40(VOLTAGE) node=0x01" in lines[1]
    malformed = next(line for line in lines if f"{MALFORMED_ID:08X}" in line)
    assert "malformed: encryption flag disagrees" in malformed
    assert "11-bit ID (layout seed is 29-bit)" in next(line for line in lines if " 411 " in line)
    fd = next(line for line in lines if "[24]FB" in line)
    assert "flag=1 pairing" in fd
    assert any("ERROR FRAME 00000004  controller" in line for line in lines)  # class named, as candump -e
    summary = out.strip().splitlines()[-1]
    assert summary.startswith(f"{len(_frames())} frames in 0.500 s")
    assert "bus load" in summary and "of 500 kbit/s (worst-case" in summary
    assert "[unreliable: window 0.500 s < 1 s]" in summary  # a half-second capture says so
    assert "malformed IDs: 1; error frames: 1" in summary


def test_per_id_view(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--log", str(capture), "--per-id", "--no-builtin-dbc"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["ID", "count", "Δt", "ms", "rate/s"]
    rows = {line.split()[0]: line for line in out[1:-1] if line}
    good = rows[f"{GOOD_ID:08X}"]
    # 10 classic frames then one FD frame: count 11, last Δt 400 - 90 = 310 ms
    assert good.split()[1] == "11" and good.split()[2] == "310.000"
    clear = rows[f"{CLEAR_ID:08X}"].split()
    assert clear[1:4] == ["10", "10.000", "100.0"]  # 10 ms apart -> 100 frames/s
    assert "07 07 07" in rows[f"{CLEAR_ID:08X}"] and "*" not in rows[f"{CLEAR_ID:08X}"]  # no byte changed
    assert "00*" in good  # the last frame changed its first byte
    assert "malformed:" in rows[f"{MALFORMED_ID:08X}"]


def test_count_and_duration_on_a_log(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--log", str(capture), "--count", "3", "--no-builtin-dbc"]) == 0
    assert len(_frame_lines(capsys.readouterr().out)) == 3
    # duration uses the log's own timestamps: frames within 0.095 s of the first
    assert main(["monitor", "--log", str(capture), "--duration", "0.095", "--no-builtin-dbc"]) == 0
    assert len(_frame_lines(capsys.readouterr().out)) == 20


def test_filters(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--log", str(capture), "-f", f"{CLEAR_ID:X}", "--no-builtin-dbc"]) == 0
    lines = _frame_lines(capsys.readouterr().out)
    ids_seen = {line.split()[1] for line in lines}
    assert ids_seen == {f"{CLEAR_ID:08X}", "ERROR"} and len(lines) == 11  # error frames always pass
    # inverse filter on the function field (bits 8-16): everything but function 0x12
    spec = f"{0x12 << 8:X}~{0x1FF << 8:X}"
    assert main(["monitor", "--log", str(capture), "-f", spec, "--no-builtin-dbc"]) == 0
    lines = _frame_lines(capsys.readouterr().out)
    assert f"{GOOD_ID:08X}" not in "".join(lines) and len(lines) == len(_frames()) - 11
    assert main(["monitor", "--log", str(capture), "-f", "xyz"]) == 2
    assert "bad filter 'xyz'" in capsys.readouterr().err


def test_dbc_signals(capture: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = cantools.database.can.Database(
        messages=[
            DbMessage(
                frame_id=CLEAR_ID,
                name="CellSummary",
                length=8,
                is_extended_frame=True,
                signals=[
                    Signal("voltage", start=0, length=16, conversion=BaseConversion.factory(scale=0.001), unit="V"),
                    Signal("count", start=16, length=8),
                ],
            )
        ]
    )
    dbc = tmp_path / "extra.dbc"
    dbc.write_text(db.as_dbc_string())
    assert main(["monitor", "--log", str(capture), "--dbc", str(dbc), "--count", "2", "--no-builtin-dbc"]) == 0
    lines = _frame_lines(capsys.readouterr().out)
    assert "CellSummary: voltage=1.799 V, count=7" in lines[1]
    assert "CellSummary" not in lines[0]
    assert main(["monitor", "--log", str(capture), "--dbc", str(tmp_path / "none.dbc")]) == 2
    assert "no such database file" in capsys.readouterr().err


def test_live_virtual_bus_with_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    channel = f"mon-{uuid.uuid4().hex}"
    record = tmp_path / "live.asc"
    stop = threading.Event()

    def sender() -> None:
        with can.Bus(interface="virtual", channel=channel, ignore_config=True) as bus:
            i = 0
            deadline = time.monotonic() + 5.0
            while not stop.is_set() and time.monotonic() < deadline:
                bus.send(can.Message(arbitration_id=GOOD_ID, data=i.to_bytes(2, "big")))
                bus.send(can.Message(arbitration_id=MALFORMED_ID, data=b"\xee"))
                i += 1
                stop.wait(0.002)

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        code = main(
            [
                "monitor",
                "--interface",
                "virtual",
                "--channel",
                channel,
                "--count",
                "30",
                "--duration",
                "5",
                "--record",
                str(record),
                "--no-builtin-dbc",
            ]
        )
    finally:
        stop.set()
        thread.join(5)
    assert code == 0 and not thread.is_alive()
    captured = capsys.readouterr()
    lines = _frame_lines(captured.out)
    assert len(lines) == 30
    assert any("malformed:" in line for line in lines) and any("flag=1 pairing" in line for line in lines)
    assert "30 frames in" in captured.out.splitlines()[-1]
    assert "virtual" in captured.err.lower()
    recorded = list(read_log(record))
    assert len(recorded) == 30 and {m.arbitration_id for m in recorded} == {GOOD_ID, MALFORMED_ID}


def test_live_per_id_refreshes_and_stops_on_duration(capsys: pytest.CaptureFixture[str]) -> None:
    channel = f"mon-{uuid.uuid4().hex}"
    stop = threading.Event()

    def sender() -> None:
        with can.Bus(interface="virtual", channel=channel, ignore_config=True) as bus:
            while not stop.wait(0.005):
                bus.send(can.Message(arbitration_id=CLEAR_ID, data=b"\x01\x02"))

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        assert (
            main(
                [
                    "monitor",
                    "-i",
                    "virtual",
                    "-c",
                    channel,
                    "--per-id",
                    "--refresh",
                    "0.1",
                    "--duration",
                    "0.45",
                    "--no-builtin-dbc",
                ]
            )
            == 0
        )
    finally:
        stop.set()
        thread.join(5)
    assert time.monotonic() - started < 3.0
    out = capsys.readouterr().out
    tables = [line for line in out.splitlines() if line.startswith("ID ")]
    assert len(tables) >= 3  # refreshed during the run, plus the final table
    assert f"{CLEAR_ID:08X}" in out


def test_builtin_databases_match_any_node(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--log", str(capture), "--count", "2"]) == 0
    lines = _frame_lines(capsys.readouterr().out)
    # node 0x01, priority 6: the DBC holds node 0x01 at priority 5 -> matched by fields
    assert "| VOLTAGE" not in lines[0]  # GOOD_ID is function 0x12: in no database
    assert "| VOLTAGE_N2C_NONE: cellLoVolt=1.799 V, cellHiVolt=1.799 V" in lines[1]  # clear: physical values
    monitor = Monitor("seed", builtin_databases=True)
    other_node = ids.SEED_LAYOUT.encode(
        ids.CanIdFields(function=0x44, node=0x1F, priority=5, direction=1, tier=Tier.EXCHANGE)
    )
    report = monitor.observe(can.Message(arbitration_id=other_node, data=bytes(6)))
    assert report.message_name == "HEARTBEAT_N2C_EXCHANGE" and set(report.signals or {}) == {
        "Ciphertext",
        "FreshnessLow",
        "MAC",
    }
    legacy = monitor.observe(can.Message(arbitration_id=0x411, is_extended_id=False, data=bytes(8)))
    assert legacy.message_name == "MODULE_STATE"


HEARTBEAT_N2C = ids.SEED_LAYOUT.encode(
    ids.CanIdFields(function=0x44, node=0x05, priority=6, direction=1, tier=Tier.EXCHANGE)
)


class _FakeDecryptor:
    """A decryptor that 'knows' one node's key."""

    def __init__(self) -> None:
        self.calls = 0

    def decrypt(self, msg: can.Message, id_fields: Any) -> bytes | None:
        self.calls += 1
        if id_fields.node != 0x05:
            return None
        if bytes(msg.data[:1]) == b"\xff":
            raise VerificationError(Reason.BAD_MAC, "tag mismatch")
        return bytes(msg.data[:1])


def test_decryptor_hook() -> None:
    decryptor = _FakeDecryptor()
    monitor = Monitor("seed", decryptor=decryptor)
    other = ids.SEED_LAYOUT.encode(
        ids.CanIdFields(function=0x44, node=0x06, priority=6, direction=1, tier=Tier.EXCHANGE)
    )
    frames = [
        can.Message(timestamp=T0, arbitration_id=HEARTBEAT_N2C, data=b"\x2a\x02\0\0\0\0"),
        can.Message(timestamp=T0 + 0.01, arbitration_id=HEARTBEAT_N2C, data=b"\xff\x02\0\0\0\0"),
        can.Message(timestamp=T0 + 0.02, arbitration_id=other, data=b"\x01\x02\0\0\0\0"),
        can.Message(timestamp=T0 + 0.03, arbitration_id=CLEAR_ID, data=b"\x01" * 8),  # not encrypted: not asked
        can.Message(timestamp=T0 + 0.04, arbitration_id=MALFORMED_ID, data=b"\x01"),  # malformed: not asked
    ]
    lines: list[str] = []
    summary = run_monitor(monitor, frames, TraceView(lines.append))
    assert decryptor.calls == 3
    assert lines[0].endswith("| unit 6 B: plain 2A | HEARTBEAT_N2C: Counter=42")  # through the cleartext view
    assert lines[1].endswith("| unit 6 B: decrypt failed: bad_mac: tag mismatch")
    assert lines[2].endswith("| unit 6 B: encrypted (no key)")
    assert "| unit" not in lines[3] and "|" not in lines[4]
    assert summary.frames == 5 and summary.malformed == 1
    with pytest.raises(ConfigError, match="decrypt"):
        Monitor(decryptor=object())  # type: ignore[arg-type]


class _PackKeys:
    """Decrypts what modules send with a simulated pack controller's links (its keys, fresh windows)."""

    def __init__(self, sim: Any) -> None:
        self.links = sim.pack.links

    def decrypt(self, msg: can.Message, id_fields: Any) -> bytes | None:
        link = self.links.get(id_fields.node)
        if link is None or id_fields.direction != 1:
            return None
        return link.receive(msg.arbitration_id, bytes(msg.data), reassembled=len(msg.data) > 8).payload


def test_monitor_reassembles_isotp_and_shows_physical_values() -> None:
    from modbatt.sim.pack import PackSimulation
    from modbatt.transport.canbus import BusConfig, open_bus

    config = BusConfig(interface="virtual", channel=f"mon-sim-{uuid.uuid4().hex}")
    with PackSimulation(2, bus=config, seed=7) as sim:
        tap = open_bus(config)
        try:
            sim.run(0.6)
            frames = []
            while (msg := tap.recv(timeout=0.05)) is not None:
                frames.append(msg)
        finally:
            tap.shutdown()
    # The same seed binds and pairs the same keys (reproducible mode): an observer holding the
    # pack's keys whose freshness windows have not seen the traffic yet.
    with PackSimulation(2, seed=7) as observer:
        monitor = Monitor("seed", decryptor=_PackKeys(observer), builtin_databases=True)
        reports = [monitor.observe(m) for m in frames]
    units = [u for r in reports for u in r.units]
    status = [u for u in units if u.plain_name == "CURRENT_N2C"]
    assert status and all(u.transport.value == "isotp" and len(u.data) == 13 for u in status)  # 8 B + FV + tag
    values = status[0].plain_signals or {}
    assert values["cellCount"] == 14 and 48.0 < values["moduleMmv"] < 56.0 and status[0].plain_units["moduleMmv"] == "V"
    line = format_frame(monitor, next(r for r in reports if status[0] in r.units))
    assert "(isotp): plain" in line and "| CURRENT_N2C: " in line and "moduleMmv=" in line and " V" in line
    first_frames = [r for r in reports if (r.signals or {}).get("TP_PciType") == "FirstFrame"]
    assert first_frames and all(not r.units for r in first_frames)  # a first frame completes nothing


class _Tty:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.text += s
        return len(s)

    def flush(self) -> None:
        pass


def test_per_id_table_is_redrawn_in_place_on_a_terminal(capture: Path) -> None:
    tty = _Tty()
    monitor = Monitor("seed")
    run_monitor(monitor, read_log(capture), LiveTableView(tty), per_id=True)  # type: ignore[arg-type]
    assert tty.text.startswith("\x1b[2J\x1b[H") and "\x1b[K\n" in tty.text and "\x1b[J" in tty.text
    assert tty.text.count("rate/s") == 1  # one table, drawn over itself
    piped = _Tty()
    piped.isatty = lambda: False  # type: ignore[method-assign]
    run_monitor(Monitor("seed"), read_log(capture), LiveTableView(piped), per_id=True)  # type: ignore[arg-type]
    assert "\x1b" not in piped.text and piped.text.startswith("ID ")


def test_user_errors_are_one_line(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--log", str(capture), "--interface", "virtual"]) == 2
    assert main(["monitor", "--log", str(capture), "--layout", "nope"]) == 2
    assert main(["monitor", "--log", str(capture), "--record", "out.xyz"]) == 2
    assert main(["monitor", "--log", str(capture), "--count", "0"]) == 2
    assert main(["monitor", "--interface", "nosuchbus"]) == 2
    assert main(["monitor", "--interface", "udp_multicast", "--channel", "not-a-group"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("# ")]
    assert len(err) == 6 and all(line.startswith("modbatt monitor: error: ") for line in err), err
    assert "choose one of" in err[1] and "seed" in err[1]
    assert "not a multicast group address" in err[5]


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".trc", ".csv", ".db", ".mf4"])
def test_every_log_format_reads_and_records(tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]) -> None:
    if suffix == ".mf4":
        pytest.importorskip("asammdf", reason="python-can's .mf4 reader and writer need asammdf")
    frames = [m for m in _frames() if not m.is_error_frame and not m.is_fd]
    source = tmp_path / f"in{suffix}"
    write_log(source, frames)
    out = tmp_path / f"out{suffix}"
    assert main(["monitor", "--log", str(source), "--record", str(out), "--no-builtin-dbc"]) == 0
    assert len(_frame_lines(capsys.readouterr().out)) == len(frames)
    assert [m.arbitration_id for m in read_log(out)] == [m.arbitration_id for m in frames]


@pytest.mark.parametrize(
    ("suffix", "content", "problem"),
    [
        (".log", b"this is not candump\n", "as a candump -L log"),
        (".log", bytes(range(256)), "not text"),
        (".asc", b"hello\nworld\n", "no 'date' header"),
        (".blf", b"garbage" * 20, "as a Vector BLF log"),
        (".trc", b"1) nonsense line\n", "as a PEAK TRC trace"),
        (".csv", b"a,b\n1,2\n", "as a python-can CSV log"),
        (".db", b"not sqlite", "as a python-can SQLite log"),
    ],
)
def test_garbage_log_is_one_line_naming_the_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, content: bytes, problem: str
) -> None:
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(content)
    assert main(["monitor", "--log", str(bad)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("# ")]
    assert len(err) == 1 and problem in err[0], err


@pytest.mark.parametrize("stamp", ["inf", "nan", "-5.0", "1e300"])
def test_non_finite_log_timestamps_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], stamp: str) -> None:
    log = tmp_path / "stamps.log"
    log.write_text(f"(1700000000.000000) vcan0 123#00\n({stamp}) vcan0 123#01\n")
    assert main(["monitor", "--log", str(log), "--per-id"]) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if not line.startswith("# ")]
    assert len(err) == 1 and "frame 2 has timestamp" in err[0] and "Traceback" not in captured.err


_EVIL_DBC = (
    'VERSION ""\nNS_ :\nBS_:\nBU_: X\n'
    "BO_ 2147483905 EvilMsg: 8 X\n"
    ' SG_ state : 0|8@1+ (1,0) [0|255] "\x1b[31mV" X\n'
    'BA_DEF_ BO_  "SystemMessageLongSymbol" STRING ;\n'
    'BA_DEF_DEF_  "SystemMessageLongSymbol" "";\n'
    'BA_ "SystemMessageLongSymbol" BO_ 2147483905 "Evil\x1b]0;pwned\x07\x1b[2J\x9b1mMsg";\n'
    'VAL_ 2147483905 state 1 "ledger OK\x0d\x1b[32m" 0 "zero" ;\n'
)


def test_terminal_escapes_from_a_crafted_dbc_are_shown_not_obeyed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.dbc"
    evil.write_bytes(_EVIL_DBC.encode("latin-1"))
    log = tmp_path / "one.log"
    log.write_text("(1700000000.000000) vcan0 00000101#0100000000000000\n(1700000000.5) vcan0 00000101#02\n")
    assert main(["monitor", "--log", str(log), "--dbc", str(evil), "--layout", "legacy-module"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\r" not in out
    assert "Evil\\x1b]0;pwned\\x07\\x1b[2J\u203a1mMsg" in out  # shown as text (0x9b reads as "›" in cp1252)
    assert "state=ledger OK\\x0a\\x1b[32m" in out
    assert main(["monitor", "--log", str(log), "--dbc", str(evil), "--per-id", "--layout", "legacy-module"]) == 0
    assert "\x1b" not in capsys.readouterr().out
    broken = tmp_path / "broken.dbc"
    broken.write_bytes(b'VERSION ""\nBO_ 1 Evil\x1b]0;pwned\x07: 8 X\n')
    assert main(["monitor", "--log", str(log), "--dbc", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b" in err and len(err.strip().splitlines()) == 1


def test_monitor_into_head_exits_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    log = tmp_path / "long.log"
    log.write_text("".join(f"({T0 + i / 1000:.6f}) vcan0 123#{i % 256:02X}\n" for i in range(20000)))
    pipeline = subprocess.run(
        f"{sys.executable} -m modbatt.cli monitor --log {log} --no-builtin-dbc | head -n 3",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert len(pipeline.stdout.splitlines()) == 3
    assert "Traceback" not in pipeline.stderr and "error" not in pipeline.stderr.lower(), pipeline.stderr
    status = subprocess.run(
        f"set -o pipefail; {sys.executable} -m modbatt.cli monitor --log {log} --no-builtin-dbc | head -n 1 >/dev/null",
        shell=True,
        capture_output=True,
        timeout=120,
        executable="/bin/bash",
    )
    assert status.returncode == 0, status.stderr


def test_a_udp_multicast_recording_names_its_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from modbatt.sim.multiprocess import multicast_available
    from modbatt.transport.canbus import BusConfig, open_bus

    ok, why = multicast_available()
    if not ok:
        pytest.skip(why)
    import random

    group = f"239.74.{random.randrange(1, 255)}.{random.randrange(1, 255)}"  # the monitor uses the default port
    record = tmp_path / "udp.log"
    stop = threading.Event()

    def sender() -> None:
        with open_bus(BusConfig(interface="udp_multicast", channel=group)) as bus:
            while not stop.wait(0.01):
                bus.send(can.Message(arbitration_id=HEARTBEAT_N2C, data=bytes(6)))

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    try:
        code = main(["monitor", "-i", "udp_multicast", "-c", group, "--count", "3", "--duration", "10",
                     "--record", str(record), "--no-builtin-dbc"])  # fmt: skip
    finally:
        stop.set()
        thread.join(5)
    assert code == 0
    lines = record.read_text().splitlines()
    assert len(lines) == 3 and all(line.split()[1] == group for line in lines), lines  # not python-can's "vcan0"


def test_broadcast_fragments_are_reassembled_into_one_unit() -> None:
    from modbatt.can import fragment
    from modbatt.can.functions import function_named

    announce = ids.SEED_LAYOUT.encode(function_named("ANNOUNCE").id_fields(0x07, 1, Tier.BINDING))
    unit = bytes(range(200))
    frames = fragment.Fragmenter(first_transfer_id=2).fragment(unit)
    monitor = Monitor("seed", builtin_databases=True)
    reports = [monitor.observe(can.Message(timestamp=T0 + i / 100, arbitration_id=announce, data=f))
               for i, f in enumerate(frames)]  # fmt: skip
    done = [u for r in reports for u in r.units]
    assert len(frames) > 30 and len(done) == 1 and done[0].data == unit
    assert done[0].transport.value == "broadcast_fragments" and reports[-1].units == done
    assert done[0].decrypt_note == "encrypted"  # a binding-tier unit, and no key store given
    assert reports[0].signals["FRAG_TotalLength"] == len(unit)  # the DBC reads the header the same way


def test_unusable_timestamps_from_a_bus_are_counted_not_fatal() -> None:
    monitor = Monitor("seed")
    for i, stamp in enumerate([T0, float("inf"), float("nan"), -1.0, T0 + 1.5]):
        monitor.observe(can.Message(timestamp=stamp, arbitration_id=HEARTBEAT_N2C, data=bytes([i] * 6)))
    summary = monitor.summary()
    assert summary.frames == 5 and summary.bad_timestamps == 3 and summary.duration == pytest.approx(1.5)
    assert summary.load_reliable  # 1.5 s of usable time
