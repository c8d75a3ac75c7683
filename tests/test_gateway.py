"""The gateway core: routing rules as data, mapping, unknown-ID drop, and the state gate."""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from modbatt.can.catalog import build_legacy_database, message_by_base
from modbatt.errors import ConfigError, Reason
from modbatt.model.policy import DEFAULT_POLICY, MessageClass
from modbatt.model.tier import Tier
from modbatt.protocol.gateway import AppFrame, Gateway, ModuleMessage
from modbatt.protocol.pack_state import ENERGISABLE, PackEvent, PackSecurity, PackState
from modbatt.protocol.routes import ROUTES_RESOURCE, RouteError, load_routes, parse_routes

DB = build_legacy_database()
NOW = 1_800_000_000.0


def active(pairing: str = "p1") -> PackSecurity:
    m = PackSecurity(state=PackState.BOUND, binding_id="b")
    m.handle(PackEvent.PAIRED, NOW, pairing_id=pairing)
    m.handle(PackEvent.CONFIRMED, NOW)
    return m


def app_frame(name: str, **values: float) -> AppFrame:
    msg = DB.get_message_by_name(name)
    full = {s.name: 0 for s in msg.signals} | values
    return AppFrame(msg.frame_id, bytes(msg.encode(full)))


def decode(name: str, data: bytes) -> dict:
    return DB.get_message_by_name(name).decode(data, decode_choices=False)


@pytest.fixture
def gateway() -> Gateway:
    return Gateway({1: active(), 2: active()})


def test_shipped_routes_load_and_respect_the_policy():
    table = load_routes()
    assert {r.app_message for r in table.app_to_module} == {"VCU_COMMAND", "VCU_MODULE_COMMAND"}
    for rule in table.app_to_module:
        assert rule.tier >= DEFAULT_POLICY.minimum[rule.message_class]
    assert "VCU_WEB4_PACK_KEY_HALF" not in table.app_messages  # the clear key push never routes


def test_vcu_command_becomes_a_pairing_tier_command_for_every_module(gateway):
    sends = gateway.from_app(app_frame("VCU_COMMAND", vcu_contactor_ctrl=3, vcu_hv_bus_voltage=400.0))
    contactor = [s for s in sends if s.route == "pack-contactor"]
    assert [(s.node, s.message_class, s.tier) for s in contactor] == [
        (1, MessageClass.CHARGE_COMMAND, Tier.PAIRING), (2, MessageClass.CHARGE_COMMAND, Tier.PAIRING),
    ]  # fmt: skip
    for s in contactor:
        body = decode("MODULE_STATE_CHANGE", s.payload)
        assert body["moduleId"] == s.node and body["state"] == 3
        assert body["hvBusVoltage"] == pytest.approx(400.0, abs=0.015)
    balancing = [s for s in sends if s.route == "pack-balancing"]
    assert [(s.node, s.message_class, s.payload) for s in balancing] == [
        (1, MessageClass.CELL_BALANCING, b"\x00"), (2, MessageClass.CELL_BALANCING, b"\x00"),
    ]  # fmt: skip
    assert gateway.counts["forwarded"] == 4 and not gateway.rejections


def test_on_change_forwards_a_repeated_command_once_and_again_after_a_new_pairing(gateway):
    frame = app_frame("VCU_COMMAND", vcu_contactor_ctrl=3, vcu_hv_bus_voltage=400.0)
    assert len(gateway.from_app(frame)) == 4
    assert gateway.from_app(frame) == []  # the VCU repeats 0x400 every 250 ms
    assert gateway.counts["unchanged"] == 4
    changed = gateway.from_app(app_frame("VCU_COMMAND", vcu_contactor_ctrl=0, vcu_hv_bus_voltage=400.0))
    assert [s.route for s in changed] == ["pack-contactor", "pack-contactor"]
    gateway.security[2] = active("p2")  # module 2 re-paired (and was isolated on the way)
    resent = gateway.from_app(app_frame("VCU_COMMAND", vcu_contactor_ctrl=0, vcu_hv_bus_voltage=400.0))
    assert sorted((s.route, s.node) for s in resent) == [("pack-balancing", 2), ("pack-contactor", 2)]


def test_module_command_reaches_only_the_named_module(gateway):
    sends = gateway.from_app(app_frame("VCU_MODULE_COMMAND", module_id=2, module_contactor_ctrl=1,
                                       module_cell_balance_ctrl=2))  # fmt: skip
    assert {(s.node, s.route) for s in sends} == {(2, "module-contactor"), (2, "module-balancing")}
    assert [s.payload for s in sends if s.route == "module-balancing"] == [b"\x02"]
    assert gateway.from_app(app_frame("VCU_MODULE_COMMAND", module_id=9, module_contactor_ctrl=1)) == []
    assert gateway.rejections[Reason.WRONG_PEER] == 2  # both rules name module 9


@pytest.mark.parametrize(
    "frame",
    [
        AppFrame(0x123, bytes(8)),  # not in the catalog
        AppFrame(message_by_base(0x410).frame_id(), bytes(8)),  # BMS_STATE: pack->VCU, never routed inwards
        AppFrame(message_by_base(0x407).frame_id(chunk=1), bytes(8), is_extended=True),  # clear key push
        AppFrame(0x400, bytes(8), is_extended=True),  # the right number in the wrong identifier space
        AppFrame(0x500, bytes(8)),  # VCU_COMMAND of pack 1 reaching the gateway of pack 0
    ],
    ids=["unknown", "outbound-message", "key-push", "extended-0x400", "other-pack"],
)
def test_unknown_app_ids_are_dropped_and_counted(gateway, frame):
    assert gateway.from_app(frame) == []
    assert gateway.rejections == {Reason.UNROUTABLE: 1}
    assert gateway.dropped[-1].ident == frame.arbitration_id and gateway.counts["forwarded"] == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 0x7FF), st.binary(max_size=8))
def test_no_identifier_outside_the_table_ever_crosses(can_id, data):
    gateway = Gateway({1: active()})
    known = {0x400, 0x401, 0x402, 0x403, 0x404, 0x405, 0x406}
    sends = gateway.from_app(AppFrame(can_id, data))
    if can_id not in known:
        assert sends == [] and gateway.rejections[Reason.UNROUTABLE] == 1


def test_local_and_malformed_frames_do_not_cross(gateway):
    assert gateway.from_app(app_frame("VCU_KEEP_ALIVE", module_id=1)) == []
    assert gateway.counts["local"] == 1
    assert gateway.from_app(AppFrame(0x400, bytes(3))) == []  # short frame
    assert gateway.rejections == {Reason.MALFORMED: 1}


def expected_gate(state: PackState) -> Reason | None:
    if state in (PackState.ACTIVE, PackState.VALIDATED):
        return None
    return Reason.TIER_TOO_LOW if state is PackState.ESCALATED else Reason.WRONG_STATE


@pytest.mark.parametrize("state", list(PackState), ids=lambda s: s.value)
def test_commands_cross_only_in_the_states_that_take_them(state):
    machine = PackSecurity(state=state, binding_id="b", pairing_id="p" if state in ENERGISABLE else None)
    gateway = Gateway({1: machine})
    sends = gateway.from_app(app_frame("VCU_COMMAND", vcu_contactor_ctrl=3, vcu_hv_bus_voltage=400.0))
    reason = expected_gate(state)
    if reason is None:
        assert len(sends) == 2 and not gateway.rejections
    else:
        assert sends == [] and gateway.rejections == {reason: 2}
        assert machine.rejections[reason] == 2  # the machine counts its own refusals too


def telemetry(node: int, state: PackState = PackState.ACTIVE, module_state: int = 3) -> tuple[Gateway, ModuleMessage]:
    machine = PackSecurity(state=state, binding_id="b", pairing_id="p" if state in ENERGISABLE else None)
    values = {"moduleState": module_state, "moduleStatus": 0, "moduleSoc": 81.5, "moduleSoh": 98.0, "cellCount": 14,
              "moduleMmc": -12.5, "moduleMmv": 51.9}  # fmt: skip
    body = DB.get_message_by_name("MODULE_STATUS_1").encode(values)
    return Gateway({node: machine}), ModuleMessage(node, MessageClass.CURRENT_TELEMETRY, Tier.EXCHANGE, bytes(body))


def test_module_telemetry_is_bridged_to_the_app_bus_in_clear():
    gateway, message = telemetry(3)
    frames = gateway.from_module(message)
    by_id = {f.arbitration_id: f for f in frames}
    state = decode("MODULE_STATE", by_id[0x411].data)
    assert state["module_id"] == 3 and state["module_soc"] == 81.5 and state["module_cell_count"] == 14
    power = decode("MODULE_POWER", by_id[0x412].data)
    assert power["module_voltage"] == pytest.approx(51.9, abs=0.015) and power["module_current"] == pytest.approx(-12.5)
    assert all(not f.is_extended for f in frames)


def test_bridge_drops_what_the_app_signal_cannot_carry_and_what_the_state_refuses():
    gateway, message = telemetry(3, module_state=5)  # 4 bits on the module bus, 2 on the app bus
    frames = gateway.from_module(message)
    assert [f.arbitration_id for f in frames] == [0x412]
    assert gateway.rejections == {Reason.MALFORMED: 1} and gateway.dropped[-1].route == "module-state"
    refused, message = telemetry(3, state=PackState.BOUND)  # before pairing nothing crosses
    assert refused.from_module(message) == [] and refused.rejections == {Reason.WRONG_STATE: 1}
    stranger, message = telemetry(3)
    assert stranger.from_module(ModuleMessage(4, message.message_class, message.tier, message.payload)) == []
    assert stranger.rejections == {Reason.WRONG_PEER: 1}
    quiet, _ = telemetry(3)
    assert quiet.from_module(ModuleMessage(3, MessageClass.HEARTBEAT, Tier.EXCHANGE, b"\x01")) == []
    assert quiet.counts["not_bridged"] == 1 and not quiet.rejections


def test_pack_id_moves_every_app_identifier():
    gateway = Gateway({1: active()}, pack_id=1)
    assert gateway.from_app(AppFrame(0x400, bytes(8))) == []  # pack 0's identifier
    assert len(gateway.from_app(AppFrame(0x500, bytes(8)))) == 2
    _, message = telemetry(1)
    frames = Gateway({1: active()}, pack_id=1).from_module(message)
    assert sorted(f.arbitration_id for f in frames) == [0x511, 0x512]


def shipped() -> dict:
    import importlib.resources

    return yaml.safe_load(importlib.resources.files("modbatt").joinpath("data", ROUTES_RESOURCE).read_text())


def mutate(path: str, value):
    doc = copy.deepcopy(shipped())
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("version", 2, "version: must be 1"),
        ("app_to_module.0.app_message", "NO_SUCH", "is not a message of the legacy catalog"),
        ("app_to_module.0.app_message", "MODULE_STATUS_1", "travels on the module bus"),
        ("app_to_module.0.app_message", "VCU_WEB4_PACK_KEY_HALF", "only 11-bit app messages route"),
        ("app_to_module.0.body.module_message", "VCU_TIME", "travels on the app bus"),
        ("app_to_module.0.body.signals.state", "no_signal", "'no_signal' is not a signal of VCU_COMMAND"),
        ("app_to_module.0.body.signals.nope", 1, "'nope' is not a signal of MODULE_STATE_CHANGE"),
        ("app_to_module.0.body.signals.state", [1], "must be a signal name, $node or a number"),
        ("app_to_module.0.tier", "exchange", "charge_command needs at least the pairing tier"),
        ("app_to_module.0.tier", "top", "must be none, exchange, pairing or binding"),
        ("app_to_module.0.message_class", "teleport", "unknown message class"),
        ("app_to_module.0.admin", True, "unknown field(s) ['admin']"),
        ("app_to_module.0.to", KeyError, "missing field(s) ['to']"),
        ("app_to_module.0.to", {"signal": "module_id"}, "'module_id' is not a signal of VCU_COMMAND"),
        ("app_to_module.0.on_change", "yes", "must be true or false"),
        ("app_to_module.1.body.bytes", ["vcu_hv_bus_voltage"], "unsigned unscaled field of at most one byte"),
        ("app_to_module.1.name", "pack-contactor", "duplicate rule name(s) ['pack-contactor']"),
        ("app_local.0", "VCU_COMMAND", "are also routed"),
        ("module_to_app.0.app_message", "MODULE_STATUS_2", "travels on the module bus"),
        ("module_to_app", "everything", "must be a list"),
    ],
)
def test_bad_routing_tables_are_refused_with_a_typed_error(path, value, message):
    with pytest.raises(RouteError) as err:
        parse_routes(mutate(path, value))
    assert isinstance(err.value, ConfigError) and message in str(err.value)


def test_unreadable_routing_files_are_refused(tmp_path):
    with pytest.raises(RouteError, match="cannot read"):
        load_routes(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [1\n")
    with pytest.raises(RouteError, match="not valid YAML"):
        load_routes(bad)
    good = tmp_path / "routes.yaml"
    good.write_text(yaml.safe_dump(shipped()))
    assert load_routes(good) == load_routes()
