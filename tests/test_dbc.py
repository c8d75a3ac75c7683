"""DBC export: both files load in cantools, decode real frames, and `cantools decode` reads candump."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import can
import cantools
import pytest

from modbatt.can import dbc, fragment, payloads
from modbatt.can.catalog import DBC_MODULE_ID
from modbatt.can.functions import function_named
from modbatt.can.ids import J1939_LAYOUT, LEGACY_MODULE_LAYOUT, SEED_LAYOUT, CanIdFields
from modbatt.can.secured import Direction, SecuredSender, TrafficKeys, derive_traffic_keys
from modbatt.can.wiretime import CLASSIC, FD
from modbatt.cli import main
from modbatt.crypto.freshness import FreshnessCounter, MemoryCounterStore
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import ConfigError
from modbatt.model.tier import Tier
from modbatt.sim.pack import PackSimulation
from modbatt.transport.canbus import BusConfig, open_bus
from modbatt.transport.isotp_link import IsoTpLink
from modbatt.transport.recording import open_writer

N2C = Direction.RESPONDER_TO_INITIATOR
C2N = Direction.INITIATOR_TO_RESPONDER


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dbc") / "new" / "dir"  # created by the command
    assert main(["dbc", "export", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def secure_db(exported: Path) -> cantools.database.can.Database:
    return cantools.database.load_file(exported / dbc.SECURE_DBC_NAME)


@pytest.fixture(scope="module")
def legacy_db(exported: Path) -> cantools.database.can.Database:
    return cantools.database.load_file(exported / dbc.LEGACY_DBC_NAME)


def _fields(name: str, direction: Direction) -> CanIdFields:
    return function_named(name).id_fields(DBC_MODULE_ID, int(direction))


def _sender(tier: Tier, direction: Direction, profile=CLASSIC) -> SecuredSender:  # type: ignore[no-untyped-def]
    if tier is Tier.NONE:
        keys = TrafficKeys.clear(direction)
    elif tier is Tier.BINDING:
        keys = TrafficKeys.binding(direction, signer=PrivateKey.generate())
    else:
        keys = derive_traffic_keys(bytes(range(32)), tier, direction)
    counter = FreshnessCounter(MemoryCounterStore(1000)) if tier is not Tier.NONE else None
    return SecuredSender(SEED_LAYOUT, profile, keys, counter)


# -- the command and the files ----------------------------------------------------------------------


def test_export_command_writes_the_three_files(exported: Path) -> None:
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted([dbc.LEGACY_DBC_NAME, dbc.PLAIN_DBC_NAME, dbc.SECURE_DBC_NAME])


def test_export_into_a_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["dbc", "export", str(blocker)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a directory" in err


def test_export_directory_check_uses_write_access(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same check as above, independent of the user's privileges: access() says no.
    from modbatt.cli import files

    monkeypatch.setattr(files.os, "access", lambda *_a, **_k: False)
    with pytest.raises(ConfigError, match=r"export directory .* is not writable"):
        files.writable_directory(tmp_path / "out", "export directory")
    assert not (tmp_path / "out").exists()


def test_export_options_choose_ids(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dbc", "export", str(tmp_path), "--pack-id", "1", "--module-id", "0x07", "--profile", "fd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("wrote ") for line in lines)
    assert str(tmp_path / dbc.SECURE_DBC_NAME) in lines[0] and "fd frames" in lines[0]
    assert str(tmp_path / dbc.PLAIN_DBC_NAME) in lines[1]
    assert str(tmp_path / dbc.LEGACY_DBC_NAME) in lines[2] and "module 0x07" in lines[2]
    legacy = cantools.database.load_file(tmp_path / dbc.LEGACY_DBC_NAME)
    assert legacy.get_message_by_name("MODULE_POWER").frame_id == 0x512
    assert legacy.get_message_by_name("MODULE_STATUS_1").frame_id == (0x502 << 18) | 0x07
    secure = cantools.database.load_file(tmp_path / dbc.SECURE_DBC_NAME)
    assert all(SEED_LAYOUT.decode(m.frame_id).node == 0x07 for m in secure.messages)
    assert all(m.is_fd and (m.length <= 8 or m.length in (12, 16, 20, 24, 32, 48, 64)) for m in secure.messages)
    plain = cantools.database.load_file(tmp_path / dbc.PLAIN_DBC_NAME)
    assert {SEED_LAYOUT.decode(m.frame_id).node for m in plain.messages} == {0x07}


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.dbc"
    target.write_text("old")
    db = dbc.build_secure_database(functions=[function_named("VOLTAGE")])  # small: the write is under test

    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        dbc.write_dbc(db, target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.dbc"]  # no temporary left behind
    monkeypatch.undo()
    dbc.write_dbc(db, target)
    assert target.read_bytes().startswith(b'VERSION "modbatt-secure-2')
    assert b"\r\n" in target.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["x.dbc"]


# -- legacy DBC --------------------------------------------------------------------------------------


def test_legacy_dbc_marks_29_bit_frames_extended(exported: Path, legacy_db: cantools.database.can.Database) -> None:
    text = (exported / dbc.LEGACY_DBC_NAME).read_text(encoding="cp1252")
    ids = {name: int(fid) for fid, name in re.findall(r"^BO_ (\d+) (\w+):", text, re.M)}
    assert ids["MODULE_STATUS_1"] == 0x8000_0000 | (0x502 << 18) | DBC_MODULE_ID  # DBC's extended marker
    assert ids["MODULE_POWER"] == 0x412
    for msg in legacy_db.messages:
        assert msg.is_extended_frame == (msg.frame_id > 0x7FF or msg.name.startswith(("VCU_WEB4", "BMS_WEB4")))


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("MODULE_POWER", {"module_id": 7, "module_voltage": 48.0, "module_current": -12.5}),
        (
            "MODULE_STATUS_1",
            {
                "moduleState": 2,
                "moduleStatus": 1,
                "moduleSoc": 80.5,
                "moduleSoh": 99.0,
                "cellCount": 16,
                "moduleMmc": 3.2,
                "moduleMmv": 52.5,
            },
        ),
        (
            "BMS_CELL_DATA",
            {
                "BMS_Min_Cell_Voltage": 3.1,
                "BMS_Max_Cell_Voltage": 3.4,
                "BMS_Avg_Cell_Voltage": 3.3,
                "BMS_Min_Cell_Temp": 20.0,
                "BMS_Max_Cell_Temp": 31.0,
            },
        ),
        ("VCU_TIME", {"vcu_time": 1_700_000_000}),
        ("MODULE_SET_TIME", {"time": 1_700_000_000, "rtcValid": 1}),
    ],
)
def test_legacy_round_trip(legacy_db: cantools.database.can.Database, name: str, values: dict[str, float]) -> None:
    msg = legacy_db.get_message_by_name(name)
    decoded = msg.decode(msg.encode(values))
    for key, value in values.items():
        assert decoded[key] == pytest.approx(value, abs=0.03)


def test_legacy_current_sits_at_bit_32(legacy_db: cantools.database.can.Database) -> None:
    data = legacy_db.encode_message("MODULE_POWER", {"module_id": 1, "module_voltage": 0, "module_current": 0})
    assert data[4:6] == (32768).to_bytes(2, "little")  # raw for 0 A = 655.36 / 0.02, in bytes 4-5


# -- secured DBC -------------------------------------------------------------------------------------


def test_secure_attributes_match_the_identifier(secure_db: cantools.database.can.Database) -> None:
    names = set()
    assert len({m.frame_id for m in secure_db.messages}) == len(secure_db.messages)
    for msg in secure_db.messages:
        fields = SEED_LAYOUT.decode(msg.frame_id)
        attrs = msg.dbc.attributes
        assert attrs["MB_EncFlag"].value == int(fields.encrypted)
        assert attrs["MB_Level"].value == int(fields.tier)
        assert attrs["MB_Function"].value == fields.function
        assert attrs["MB_Direction"].value == fields.direction
        assert attrs["MB_Node"].value == fields.node
        assert msg.is_extended_frame
        assert msg.name.endswith(f"{fields.tier.name}_{fields.node:02X}")
        names.add(msg.name)
    assert {SEED_LAYOUT.decode(m.frame_id).node for m in secure_db.messages} == set(range(0x01, 0x20))
    for expected in (
        "ANNOUNCE_N2C_BINDING_01",
        "VOLTAGE_N2C_EXCHANGE_1F",
        "VOLTAGE_N2C_NONE_05",
        "CHARGE_COMMAND_C2N_PAIRING_02",
        "CERTIFICATE_C2N_BINDING_01",
    ):
        assert expected in names
    # Critical commands never appear in clear or at the exchange tier: the policy forbids it.
    assert "CHARGE_COMMAND_C2N_NONE_01" not in names and "CHARGE_COMMAND_C2N_EXCHANGE_01" not in names
    # Telemetry goes one way: its clear (single-frame) identifier has no message the other way.
    assert "VOLTAGE_C2N_NONE_01" not in names and "VOLTAGE_C2N_EXCHANGE_01" in names  # ISO-TP flow control


def test_cycle_times_and_units_come_from_the_catalog(secure_db: cantools.database.can.Database) -> None:
    current = secure_db.get_message_by_name("CURRENT_N2C_EXCHANGE_03")
    assert current.cycle_time == 100 and current.dbc.attributes["GenMsgSendType"].value == 0  # Cyclic
    assert secure_db.get_message_by_name("HEARTBEAT_C2N_EXCHANGE_03").cycle_time == 1000
    assert secure_db.get_message_by_name("CHARGE_COMMAND_C2N_PAIRING_03").cycle_time is None  # on event
    clear = secure_db.get_message_by_name("CURRENT_N2C_NONE_03")
    units = {s.name: (s.unit, s.scale) for s in clear.signals}
    assert units["moduleMmc"] == ("A", 0.02) and units["moduleMmv"] == ("V", 0.015)


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("HEARTBEAT_N2C_EXCHANGE_01", {"Ciphertext": 0x12, "FreshnessLow": 7, "MAC": 0xDEADBEEF}),
        ("VOLTAGE_N2C_NONE_01", {"cellLoVolt": 3.6, "cellHiVolt": 3.7, "cellAvgVolt": 3.65}),
        (
            "ANNOUNCE_N2C_BINDING_01",
            {"FRAG_TransferId": 9, "FRAG_Index": 0, "FRAG_TotalLength": 300, "FRAG_FirstData": 1},
        ),
        ("ANNOUNCE_N2C_BINDING_01", {"FRAG_TransferId": 9, "FRAG_Index": 683, "FRAG_Data": 0xCAFE}),
        (
            "CERTIFICATE_N2C_BINDING_01",
            {"TP_PciType": 3, "TP_FC_FlowStatus": 0, "TP_FC_BlockSize": 0, "TP_FC_STmin": 0},
        ),
        ("CERTIFICATE_C2N_BINDING_01", {"TP_PciType": 1, "TP_FF_DL": 4095, "TP_FF_Data": 0xAABBCCDDEEFF}),
    ],
)
def test_secure_round_trip(secure_db: cantools.database.can.Database, name: str, values: dict[str, float]) -> None:
    msg = secure_db.get_message_by_name(name)
    decoded = msg.decode(msg.encode(values), decode_choices=False)
    assert decoded == pytest.approx(values)


def test_secure_database_on_the_j1939_layout() -> None:
    db = dbc.build_secure_database(layout=J1939_LAYOUT, functions=[function_named("VOLTAGE")])
    assert [m.name for m in db.messages] == ["VOLTAGE_NONE", "VOLTAGE_EXCHANGE", "VOLTAGE_PAIRING", "VOLTAGE_BINDING"]
    assert [J1939_LAYOUT.decode(m.frame_id).tier for m in db.messages] == list(Tier)
    with pytest.raises(ConfigError):
        dbc.build_secure_database(layout=LEGACY_MODULE_LAYOUT)


@pytest.mark.parametrize("profile", [CLASSIC, FD], ids=["classic", "fd"])
def test_every_single_frame_message_has_the_length_the_codec_sends(profile) -> None:  # type: ignore[no-untyped-def]
    """Each single-frame identifier: a unit of the catalog's length protects to exactly the DBC length,
    with freshness and tag where the DBC puts them."""
    db = dbc.build_secure_database(profile=profile)
    checked = 0
    for msg in db.messages:
        if msg.dbc.attributes["MB_Transport"].value != 0:  # not single_frame
            continue
        fields = SEED_LAYOUT.decode(msg.frame_id)
        direction = Direction(fields.direction)
        payload = payloads.payload_of(fields.function, direction)
        assert payload is not None and payload.length is not None
        tx = _sender(fields.tier, direction, profile)
        pdu = tx.protect(fields, bytes(range(1, payload.length + 1)))
        assert pdu.single_frame and pdu.can_id == msg.frame_id
        assert len(pdu.data) == msg.length, msg.name
        decoded = msg.decode(pdu.data, decode_choices=False, scaling=False)
        if fields.tier is Tier.NONE:
            assert decoded == msg.decode(bytes(range(1, payload.length + 1)).ljust(msg.length, b"\0"), scaling=False)
        elif profile.fd:
            assert decoded["Freshness"] == pdu.freshness
            assert decoded["MAC_1"] == int.from_bytes(pdu.data[8 + payload.length + 8 : 8 + payload.length + 16], "big")
        else:
            assert decoded["FreshnessLow"] == pdu.freshness & 0xFF
            assert decoded["MAC"] == int.from_bytes(pdu.data[-4:], "big")
        checked += 1
    assert checked >= 4


def test_binding_announce_fragments_decode(secure_db: cantools.database.can.Database) -> None:
    pdu = _sender(Tier.BINDING, N2C).protect(_fields("ANNOUNCE", N2C), b"access data + bound LCT" * 4)
    assert not pdu.single_frame
    msg = secure_db.get_message_by_frame_id(pdu.can_id)
    assert msg.name == "ANNOUNCE_N2C_BINDING_01"
    frames = fragment.Fragmenter(first_transfer_id=3).fragment(pdu.data)
    for index, frame in enumerate(frames):
        decoded = msg.decode(frame)
        assert decoded["FRAG_TransferId"] == 3 and decoded["FRAG_Index"] == index
        if index == 0:
            assert decoded["FRAG_TotalLength"] == len(pdu.data)
    r = fragment.Reassembler()
    (done,) = [m for f in frames for m in r.feed(pdu.can_id, f, 0.0)]
    assert done.payload == pdu.data


def test_certificate_isotp_frames_decode(secure_db: cantools.database.can.Database) -> None:
    tx_id = SEED_LAYOUT.encode(function_named("CERTIFICATE").id_fields(DBC_MODULE_ID, int(C2N), Tier.BINDING))
    rx_id = SEED_LAYOUT.encode(function_named("CERTIFICATE").id_fields(DBC_MODULE_ID, int(N2C), Tier.BINDING))
    channel = f"modbatt-dbc-{uuid.uuid4().hex}"
    buses = [can.Bus(interface="virtual", channel=channel) for _ in range(3)]
    try:
        with IsoTpLink(buses[0], tx_id, rx_id) as ctl, IsoTpLink(buses[1], rx_id, tx_id) as mod:
            ctl.send(bytes(range(100)))
            assert mod.recv(timeout=2.0) == bytes(range(100))
        seen = []
        while (frame := buses[2].recv(timeout=0.05)) is not None:
            seen.append(frame)
    finally:
        for b in buses:
            b.shutdown()
    kinds = [str(secure_db.decode_message(f.arbitration_id, bytes(f.data))["TP_PciType"]) for f in seen]
    assert kinds[0] == "FirstFrame" and kinds[1] == "FlowControl" and set(kinds[2:]) == {"ConsecutiveFrame"}
    assert secure_db.get_message_by_frame_id(seen[1].arbitration_id).name == "CERTIFICATE_N2C_BINDING_01"


# -- the cleartext view ---------------------------------------------------------------------------------


def test_plain_view_decodes_a_decrypted_unit(exported: Path) -> None:
    plain = cantools.database.load_file(exported / dbc.PLAIN_DBC_NAME)
    legacy = cantools.database.load_file(exported / dbc.LEGACY_DBC_NAME)
    body = legacy.encode_message("MODULE_STATUS_2", {"cellLoVolt": 3.61, "cellHiVolt": 3.72, "cellAvgVolt": 3.69})
    can_id = SEED_LAYOUT.encode(function_named("VOLTAGE").id_fields(0x05, int(N2C), Tier.NONE))
    msg = plain.get_message_by_frame_id(can_id)
    assert msg.name == "VOLTAGE_N2C_05" and not msg.is_fd and msg.cycle_time == 500
    assert plain.decode_message(can_id, body) == pytest.approx(
        {"cellLoVolt": 3.61, "cellHiVolt": 3.72, "cellAvgVolt": 3.69}
    )
    ack_id = SEED_LAYOUT.encode(function_named("SAFETY_LIMITS").id_fields(0x05, int(N2C), Tier.NONE))
    assert plain.decode_message(ack_id, (0x8003).to_bytes(2, "big")) == {"Refused": "refused", "AckSeq": 3}
    limits = plain.get_message_by_frame_id(ack_id & ~(1 << 20))  # the C2N command: 10 bytes, an FD frame
    assert limits.is_fd and limits.length == 12 and limits.signals[0].name == "Seq"


# -- `cantools decode` on candump output ---------------------------------------------------------------


def _candump(can_id: int, data: bytes, extended: bool) -> str:
    ident = f"{can_id:08X}" if extended else f"{can_id:03X}"
    return f"  vcan0  {ident}   [{len(data)}]  {' '.join(f'{b:02X}' for b in data)}"


def _cantools_decode(dbc_path: Path, lines: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cantools", "decode", "--single-line", str(dbc_path)],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def test_cantools_decode_cli(exported: Path) -> None:
    legacy_lines = [
        _candump(0x412, bytes([0x03, 0x10, 0x27, 0x00, 0x00, 0x83, 0x00, 0x00]), False),
        _candump((0x502 << 18) | DBC_MODULE_ID, bytes([0x31, 0xA1, 0xC8, 0x0C, 0x00, 0x80, 0x10, 0x0D]), True),
    ]
    out = _cantools_decode(exported / dbc.LEGACY_DBC_NAME, legacy_lines).splitlines()
    assert "MODULE_POWER(" in out[0] and "module_voltage: 150.0 V" in out[0] and "module_current: 15.36" in out[0]
    assert "MODULE_STATUS_1(" in out[1] and "moduleSoc: 80.5 %" in out[1] and "moduleMmc: 0.0 A" in out[1]

    pdu = _sender(Tier.EXCHANGE, N2C).protect(_fields("HEARTBEAT", N2C), b"\x2a")
    frames = fragment.Fragmenter().fragment(b"x" * 20)
    announce_id = SEED_LAYOUT.encode(function_named("ANNOUNCE").id_fields(DBC_MODULE_ID, int(N2C), Tier.BINDING))
    secure_lines = [_candump(pdu.can_id, pdu.data, True), _candump(announce_id, frames[0], True)]
    out = _cantools_decode(exported / dbc.SECURE_DBC_NAME, secure_lines).splitlines()
    assert "HEARTBEAT_N2C_EXCHANGE_01(" in out[0] and f"FreshnessLow: {pdu.freshness & 0xFF}," in out[0]
    assert "ANNOUNCE_N2C_BINDING_01(" in out[1] and "FRAG_TotalLength: 20 B" in out[1]


_DECODED = re.compile(r":: [A-Z0-9_]+\(")


def test_a_31_module_simulation_decodes_with_zero_errors(exported: Path, tmp_path: Path) -> None:
    """Every frame of a recorded 31-module pack simulation decodes with `cantools decode` in strict mode."""
    config = BusConfig(interface="virtual", channel=f"modbatt-dbc-sim-{uuid.uuid4().hex}")
    log = tmp_path / "pack.log"
    with PackSimulation(31, bus=config) as sim:
        tap = open_bus(config)  # python-can's virtual bus queues every frame for the tap, unbounded
        try:
            stats = sim.run(1.0)
            with open_writer(log) as recorder:
                while (msg := tap.recv(timeout=0.05)) is not None:
                    recorder.on_message_received(msg)
        finally:
            tap.shutdown()
    assert stats.ok, stats.to_dict()
    lines = log.read_text().splitlines()
    ids = {line.split()[2].split("#")[0] for line in lines}
    assert len(lines) > 1000 and len({SEED_LAYOUT.decode(int(i, 16)).node for i in ids}) == 31
    result = subprocess.run(
        [sys.executable, "-m", "cantools", "decode", "--single-line", str(exported / dbc.SECURE_DBC_NAME)],
        stdin=log.open(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    decoded = result.stdout.splitlines()
    errors = [line for line in decoded if not _DECODED.search(line)]
    assert len(decoded) == len(lines) and errors == [], errors[:5]
    kinds = {
        k
        for line in decoded
        for k in ("FirstFrame", "ConsecutiveFrame", "FlowControl", "SingleFrame", "MAC:")
        if k in line
    }
    assert kinds == {"FirstFrame", "ConsecutiveFrame", "FlowControl", "SingleFrame", "MAC:"}
