"""CAN identifier layouts as data, and the collision checker (modbatt.can.ids)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modbatt.can.ids import (
    J1939_LAYOUT,
    LAYOUTS,
    LEGACY_APP_LAYOUT,
    LEGACY_MODULE_LAYOUT,
    SEED_LAYOUT,
    CanIdFields,
    IdLayout,
    find_collisions,
)
from modbatt.errors import Reason, VerificationError
from modbatt.model.tier import Tier


def test_registry() -> None:
    assert set(LAYOUTS) == {"seed", "legacy-app", "legacy-module", "j1939"}
    assert LAYOUTS["seed"] is SEED_LAYOUT
    assert SEED_LAYOUT.security_bits == (17, 18, 19)


@pytest.mark.parametrize(
    ("tier", "bits"), [(Tier.NONE, 0), (Tier.EXCHANGE, 0b011), (Tier.PAIRING, 0b101), (Tier.BINDING, 0b111)]
)
def test_seed_flag_and_level_positions(tier: Tier, bits: int) -> None:
    can_id = SEED_LAYOUT.encode(CanIdFields(function=0x1FF, node=0xFF, priority=7, direction=1, tier=tier))
    assert (can_id >> 17) & 0b111 == bits  # b17 = flag, b18-19 = level
    fields = SEED_LAYOUT.decode(can_id)
    assert fields.tier is tier
    assert fields.encrypted is (tier is not Tier.NONE)


def test_seed_field_positions() -> None:
    can_id = SEED_LAYOUT.encode(CanIdFields(function=0x042, node=0x1F, priority=6, direction=1, tier=Tier.NONE))
    assert can_id == (6 << 26) | (1 << 20) | (0x042 << 8) | 0x1F


def _ids_with_bits(flag: int, level: int) -> int:
    return (3 << 26) | (level << 18) | (flag << 17) | (0x10 << 8) | 0x05


@pytest.mark.parametrize(("flag", "level"), [(0, 1), (0, 2), (0, 3), (1, 0)])
def test_seed_flag_level_disagreement_is_malformed(flag: int, level: int) -> None:
    with pytest.raises(VerificationError) as exc:
        SEED_LAYOUT.decode(_ids_with_bits(flag, level))
    assert exc.value.reason is Reason.MALFORMED


def test_seed_reserved_bits_are_malformed() -> None:
    with pytest.raises(VerificationError) as exc:
        SEED_LAYOUT.decode(1 << 23)
    assert exc.value.reason is Reason.MALFORMED


def test_j1939_level_field() -> None:
    can_id = J1939_LAYOUT.encode(CanIdFields(function=0x10, node=0x05, priority=6, tier=Tier.PAIRING))
    assert (can_id >> 17) & 0b111 == 0b010
    assert J1939_LAYOUT.decode(can_id) == CanIdFields(function=0x10, node=0x05, priority=6, tier=Tier.PAIRING)
    # The spec addendum's own example IDs (docs/can-frames.md §1) have bits 17-19 = 111: a reserved level.
    with pytest.raises(VerificationError) as exc:
        J1939_LAYOUT.decode(0x18FF1000 | 0x05)
    assert exc.value.reason is Reason.MALFORMED


def test_legacy_layouts() -> None:
    assert LEGACY_APP_LAYOUT.decode(0x410) == CanIdFields(function=0x10, node=0)
    assert LEGACY_APP_LAYOUT.decode(0x511) == CanIdFields(function=0x11, node=1)
    assert LEGACY_APP_LAYOUT.encode(CanIdFields(function=0x21, node=3)) == 0x721
    with pytest.raises(VerificationError):
        LEGACY_APP_LAYOUT.decode(0x220)  # diag frames are outside the 0x400 + pack*0x100 scheme
    assert LEGACY_MODULE_LAYOUT.decode((0x501 << 18) | 0x05) == CanIdFields(function=0x501, node=5)
    assert LEGACY_MODULE_LAYOUT.encode(CanIdFields(function=0x510, node=0xFF)) == (0x510 << 18) | 0xFF
    with pytest.raises(ValueError):
        LEGACY_MODULE_LAYOUT.encode(CanIdFields(function=0x501, node=5, tier=Tier.EXCHANGE))
    with pytest.raises(ValueError):
        SEED_LAYOUT.encode(CanIdFields(function=0x200))  # 9-bit function code


def test_layout_validation() -> None:
    from modbatt.can.ids import BitField

    with pytest.raises(ValueError):
        IdLayout("bad", 11, [BitField("node", ((0, 8),)), BitField("function", ((4, 4),))])
    with pytest.raises(ValueError):
        IdLayout("bad", 12, [])


_VALID = {
    "seed": dict(function=(0, 0x1FF), node=(0, 0xFF), priority=(0, 7), direction=(0, 1)),
    "legacy-app": dict(function=(0, 0xFF), node=(0, 3)),
    "legacy-module": dict(function=(0, 0x7FF), node=(0, 0xFF)),
    "j1939": dict(function=(0, (1 << 15) - 1), node=(0, 0xFF), priority=(0, 7)),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@given(data=st.data())
def test_round_trip_every_layout(name: str, data: st.DataObject) -> None:
    layout = LAYOUTS[name]
    values = {k: data.draw(st.integers(lo, hi), label=k) for k, (lo, hi) in _VALID[name].items()}
    tier = data.draw(st.sampled_from(list(Tier))) if layout.security_bits else None
    fields = CanIdFields(tier=tier, **values)
    can_id = layout.encode(fields)
    assert 0 <= can_id < (1 << layout.id_bits)
    assert layout.decode(can_id) == fields


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@given(can_id=st.integers(-(1 << 32), 1 << 32))
def test_decode_arbitrary_ids_gives_fields_or_typed_error(name: str, can_id: int) -> None:
    layout = LAYOUTS[name]
    try:
        fields = layout.decode(can_id)
    except VerificationError as exc:
        assert exc.reason is Reason.MALFORMED
    else:
        assert layout.encode(fields) == can_id  # whatever decodes is canonical


def test_collisions_module_bus_vs_seed() -> None:
    catalog = [
        ("MODULE_ANNOUNCEMENT", (0x500 << 18) | 0x01, True),  # bits 17-19 = 000
        ("MODULE_HARDWARE", (0x501 << 18) | 0x01, True),  # bit 18 set: reads as level 01 without flag
        ("MODULE_STATUS_1", (0x502 << 18) | 0x01, True),
        ("MODULE_STATUS_2", (0x503 << 18) | 0x01, True),
        ("VCU_COMMAND", 0x400, False),  # 11-bit: another identifier space
    ]
    found = find_collisions(SEED_LAYOUT, catalog)
    sec = {c.message: c for c in found if c.kind == "security-bits"}
    assert set(sec) == {"MODULE_HARDWARE", "MODULE_STATUS_1", "MODULE_STATUS_2"}
    assert sec["MODULE_HARDWARE"].bits == (18,)
    assert sec["MODULE_STATUS_2"].bits == (18, 19)
    assert "malformed" in sec["MODULE_HARDWARE"].detail
    aliases = [c for c in found if c.kind == "alias"]
    assert {(c.message, c.other) for c in aliases} >= {("MODULE_HARDWARE", "MODULE_ANNOUNCEMENT")}
    assert find_collisions(LEGACY_MODULE_LAYOUT, catalog) == []


def test_collisions_with_the_legacy_catalog() -> None:
    catalog = pytest.importorskip("modbatt.can.catalog")
    rows = list(catalog.catalog_id_rows(module_ids=(0x01,)))
    found = find_collisions(SEED_LAYOUT, rows)
    hit = {c.message: c for c in found if c.kind == "security-bits"}
    hardware = [c for name, c in hit.items() if name.startswith("MODULE_HARDWARE[")]
    assert hardware and hardware[0].bits == (18,)  # base 0x501 << 18 sets bit 18
    assert any(c.kind == "alias" for c in found)
    assert all(c.bits and set(c.bits) <= {17, 18, 19} for c in found if c.kind == "security-bits")
