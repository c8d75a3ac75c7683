"""The legacy ModBatt catalog: parsed at the compiled bit positions, with the firmware's ID rules."""

from __future__ import annotations

import csv
import hashlib
import re
from importlib import resources

import pytest

from modbatt.can import catalog
from modbatt.errors import ConfigError

#: SHA-256 of the catalog as compiled from the ModBatt repository (docs/can-fragmentation-and-dbc.md
#: §3.1); a change to the shipped file must be deliberate and update this pin.
CATALOG_SHA256 = "676a7ab490ed8d4be012622b7c531515f27d0b5a93837c56bb0b17c16045d515"


def _signal(base: int, name: str) -> catalog.LegacySignal:
    msg = catalog.message_by_base(base)
    matches = [s for s in (*msg.signals, *msg.dropped) if s.name == name]
    assert len(matches) == 1, (hex(base), name)
    return matches[0]


def test_package_data_is_the_reference_catalog() -> None:
    shipped = resources.files("modbatt").joinpath("data", catalog.CATALOG_RESOURCE).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == CATALOG_SHA256
    assert shipped.startswith(b"message_id_hex,message_name,dlc,signal_name,start_bit")


def test_catalog_shape() -> None:
    msgs = catalog.load_catalog()
    assert len(msgs) == 58
    assert len({m.base_id for m in msgs}) == len(msgs)
    assert len({m.name for m in msgs}) == len(msgs)
    assert sum(len(m.signals) for m in msgs) == 303
    # Messages with ID defines only are kept, without signals.
    assert catalog.message_by_base(0x406).signals == ()
    assert catalog.message_by_base(0x506).dlc == 0


@pytest.mark.parametrize(
    ("base", "name", "start", "length", "scale", "offset", "unit"),
    [
        (0x412, "module_current", 32, 16, 0.02, -655.36, "A"),  # header comment says 24-39
        (0x412, "module_voltage", 8, 16, 0.015, 0.0, "V"),
        (0x413, "module_low_cell_volt", 32, 16, 0.001, 0.0, "V"),  # comment: 24-39
        (0x413, "module_avg_cell_volt", 48, 16, 0.001, 0.0, "V"),  # comment: 40-55
        (0x414, "module_avg_cell_temp", 48, 16, 0.01, -55.35, "degC"),
        (0x416, "module_charge_end_voltage_limit", 48, 16, 0.015, 0.0, "V"),
        (0x404, "vcu_hv_bus_voltage", 32, 16, 0.015, 0.0, "V"),  # comment: 16-31
        (0x220, "BMS_Display_SOC", 43, 7, 1.0, 0.0, "%"),  # comment: 41-47
        (0x222, "BMS_Avg_Cell_Voltage", 32, 13, 0.001, 0.0, "V"),  # comment: 26-38
        (0x222, "BMS_Max_Cell_Temp", 54, 8, 1.0, -40.0, "degC"),  # comment: 48-55
        (0x502, "moduleMmc", 32, 16, 0.02, -655.36, "A"),  # the current, not the voltage
        (0x421, "bms_pack_current", 48, 16, 0.05, -1600.0, "A"),
    ],
)
def test_compiled_positions(
    base: int, name: str, start: int, length: int, scale: float, offset: float, unit: str
) -> None:
    sig = _signal(base, name)
    assert (sig.start_bit, sig.length, sig.unit) == (start, length, unit)
    assert sig.scale == pytest.approx(scale)
    assert sig.offset == pytest.approx(offset)
    assert sig.byte_order == "little_endian" and not sig.is_signed


def test_every_compiled_position_note_is_honoured() -> None:
    """Each "C bitfield rules ... put it at N" note in the CSV matches the parsed start bit."""
    text = resources.files("modbatt").joinpath("data", catalog.CATALOG_RESOURCE).read_text()
    noted = 0
    for row in csv.DictReader(text.splitlines()):
        m = re.search(r"put it at (\d+)", row["comment"])
        if m:
            noted += 1
            assert _signal(int(row["message_id_hex"], 16), row["signal_name"]).start_bit == int(m.group(1))
    assert noted >= 15


def test_no_transmitted_bitfield_straddles_a_32_bit_unit() -> None:
    """The compiler rule the catalog relies on: a <= 32-bit field never crosses bit 32."""
    for msg in catalog.load_catalog():
        for sig in msg.signals:
            if sig.length <= 32:
                assert sig.start_bit // 32 == (sig.end_bit - 1) // 32, (msg.name, sig.name)
            assert sig.end_bit <= max(msg.dlc, 1) * 8 or msg.dlc == 0, (msg.name, sig.name)


def test_fields_past_bit_63_are_dropped() -> None:
    dropped = {(m.base_id, s.name) for m in catalog.load_catalog() for s in m.dropped}
    assert dropped == {(0x220, "BMS_SOH"), (0x222, "BMS_Avg_Cell_Temp")}
    status = catalog.message_by_base(0x220)
    assert "BMS_SOH" not in {s.name for s in status.signals}
    assert "BMS_SOH@64/7" in status.comment


def test_choices_parsed_and_borrowed() -> None:
    assert dict(_signal(0x400, "vcu_contactor_ctrl").choices) == {0: "OFF", 1: "STDBY", 2: "PRCHG", 3: "ON"}
    # "enum 0-3 as 0x400" borrows 0x400's labels.
    assert dict(_signal(0x404, "module_contactor_ctrl").choices)[3] == "ON"
    assert dict(_signal(0x411, "module_state").choices)[2] == "PRCHG"
    # Contradictory comments (0x410 bms_status) give no labels rather than a guess.
    assert _signal(0x410, "bms_status").choices == ()


def test_frame_id_rules() -> None:
    assert catalog.frame_id(0x502, module_id=0x05) == (0x502 << 18) | 0x05
    assert catalog.frame_id(0x500, module_id=0xFF) == 0x1400_00FF  # unregistered module announces
    assert catalog.frame_id(0x412, pack_id=2) == 0x612
    assert catalog.frame_id(0x220, pack_id=5) == 0x720
    assert catalog.frame_id(0x407, pack_id=3, chunk=1) == 0x407 | 0x100 | 3
    # The utility's defect, reproduced: chunk 4 of 0x407 reuses chunk 0's ID (bit 10 already set).
    assert catalog.frame_id(0x407, chunk=4) == catalog.frame_id(0x407, chunk=0)
    with pytest.raises(ConfigError):
        catalog.frame_id(0x412, pack_id=4)  # 0x812 is not an 11-bit ID
    with pytest.raises(ConfigError):
        catalog.frame_id(0x502, module_id=0x100)
    with pytest.raises(ConfigError):
        catalog.frame_id(0x408, chunk=8)


def test_bus_and_frame_format() -> None:
    for msg in catalog.load_catalog():
        if 0x500 <= msg.base_id <= 0x5FF:
            assert msg.bus is catalog.LegacyBus.MODULE and msg.is_extended
        else:
            assert msg.bus is catalog.LegacyBus.APP
            assert msg.is_extended == (msg.base_id in catalog.KEY_CHUNK_BASES)
    assert catalog.message_by_base(0x502).sender == catalog.NODE_MODULE
    assert catalog.message_by_base(0x514).sender == catalog.NODE_PACK


def test_database_uses_pack_0_module_1_and_marks_extended() -> None:
    db = catalog.build_legacy_database()
    assert db.get_message_by_name("MODULE_POWER").frame_id == 0x412
    status = db.get_message_by_name("MODULE_STATUS_1")
    assert status.frame_id == (0x502 << 18) | catalog.DBC_MODULE_ID and status.is_extended_frame
    assert not db.get_message_by_name("BMS_STATE").is_extended_frame
    assert db.get_message_by_name("VCU_WEB4_PACK_KEY_HALF").is_extended_frame
    other = catalog.build_legacy_database(pack_id=1, module_id=0x07)
    assert other.get_message_by_name("MODULE_POWER").frame_id == 0x512
    assert other.get_message_by_name("MODULE_STATUS_1").frame_id == (0x502 << 18) | 0x07


def test_database_decodes_the_compiled_layout() -> None:
    db = catalog.build_legacy_database()
    # 0x412 from a real frame: id 3, 150.0 V (10000 * 0.015), current raw 0x8300 at bit 32.
    data = bytes([0x03, 0x10, 0x27, 0x00, 0x00, 0x83, 0x00, 0x00])
    decoded = db.decode_message(0x412, data)
    assert decoded["module_id"] == 3
    assert decoded["module_voltage"] == pytest.approx(150.0)
    assert decoded["module_current"] == pytest.approx(0x8300 * 0.02 - 655.36)
    assert str(db.decode_message(0x400, bytes(8))["vcu_contactor_ctrl"]) == "OFF"


def test_names_fit_tool_limits() -> None:
    """CANalyzer and many DBC tools cap identifiers at 32 characters."""
    ident = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,31}$")
    for msg in catalog.load_catalog():
        assert ident.match(msg.name), msg.name
        for sig in msg.signals:
            assert ident.match(sig.name), sig.name


def test_collision_rows() -> None:
    rows = list(catalog.catalog_id_rows())
    assert len(rows) == len(catalog.load_catalog())
    assert len({name for name, _, _ in rows}) == len(rows)
    assert ("MODULE_STATUS_1[module=0x01]", (0x502 << 18) | 1, True) in rows
    assert ("MODULE_POWER[pack=0]", 0x412, False) in rows
    every_module = list(catalog.catalog_id_rows(module_ids=range(0x100), key_chunks=range(8)))
    modules = [r for r in every_module if r[0].startswith("MODULE_STATUS_1[")]
    assert len(modules) == 256 and all(ext for _, _, ext in modules)
    # Same-format IDs within one bus must be unique apart from the known key-chunk defect.
    seen: dict[tuple[int, bool], str] = {}
    clashes = []
    for name, fid, ext in every_module:
        if (fid, ext) in seen:
            clashes.append((seen[(fid, ext)], name))
        seen.setdefault((fid, ext), name)
    assert clashes and all("WEB4" in a and "WEB4" in b for a, b in clashes)


def test_catalog_feeds_the_collision_checker() -> None:
    """docs/can-frames.md §1: the module bus's base IDs in bits 18-28 collide with the seed's flag/level bits."""
    ids = pytest.importorskip("modbatt.can.ids")
    rows = list(catalog.catalog_id_rows(module_ids=range(0x20)))
    found = ids.find_collisions(ids.SEED_LAYOUT, rows)
    flagged = {c.message.split("[")[0] for c in found if c.kind == "security-bits"}
    assert {"MODULE_HARDWARE", "MODULE_STATUS_1", "MODULE_STATUS_2"} <= flagged  # 0x501/0x502/0x503 << 18
    assert "MODULE_ANNOUNCEMENT" not in flagged and "MODULE_STATUS_3" not in flagged  # 0x500, 0x504: bits 18-19 clear
    # Each legacy layout describes its own bus without complaint.
    module_rows = [r for r in rows if "[module=" in r[0]]
    app_rows = [r for r in rows if not r[2]]
    assert ids.find_collisions(ids.LEGACY_MODULE_LAYOUT, module_rows) == []
    assert ids.find_collisions(ids.LEGACY_APP_LAYOUT, app_rows) == []
