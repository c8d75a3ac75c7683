"""The pack security state machine: every (state, event) pair, every state x class x tier gate."""

from __future__ import annotations

import itertools

import pytest

from modbatt.errors import ProtocolError, Reason, VerificationError
from modbatt.model.policy import CRITICAL_CLASSES, DEFAULT_POLICY, MessageClass
from modbatt.model.tier import Tier
from modbatt.protocol.pack_state import (
    ENERGISABLE,
    GATES,
    TRANSITIONS,
    Action,
    PackEvent,
    PackSecurity,
    PackState,
    Step,
)

S, E, C = PackState, PackEvent, MessageClass
BID, PID, PID2 = "binding-1", "pairing-1", "pairing-2"
NOW = 1_800_000_000.0

# What each state accepts, written out independently of the module's table.
UNPAIRED = {C.IDENTITY, C.STATUS, C.HEARTBEAT, C.VALIDATION}
MANAGEMENT = {C.VALIDATION, C.CERTIFICATE, C.IDENTITY}
ROUTINE = {C.VOLTAGE_TELEMETRY, C.CURRENT_TELEMETRY, C.TEMPERATURE_TELEMETRY, C.STATUS, C.HEARTBEAT, C.LOG}
ACCEPTED = {
    S.FACTORY: UNPAIRED,
    S.BOUND: UNPAIRED | {C.CERTIFICATE},
    S.PAIRED: ROUTINE | MANAGEMENT | {C.CRITICAL_TELEMETRY, C.EMERGENCY_SHUTDOWN},
    S.ACTIVE: set(C) - {C.FIRMWARE_UPDATE},
    S.VALIDATED: set(C),
    S.ESCALATED: set(C) - {C.FIRMWARE_UPDATE},
    S.EXPIRED: MANAGEMENT | {C.EMERGENCY_SHUTDOWN},
    S.KEY_LOST: UNPAIRED,
    S.REVOKED: UNPAIRED,
}
UNPAIRED_MINIMUM = {C.IDENTITY: Tier.NONE, C.STATUS: Tier.NONE, C.HEARTBEAT: Tier.NONE, C.VALIDATION: Tier.BINDING,
                    C.CERTIFICATE: Tier.BINDING}  # fmt: skip


def machine_in(state: PackState) -> PackSecurity:
    """A machine in ``state`` holding the identifiers that state implies."""
    binding = None if state in (S.FACTORY, S.REVOKED) else BID
    pairing = PID if state in ENERGISABLE else None
    return PackSecurity(state=state, binding_id=binding, pairing_id=pairing, expires_at=NOW + 3600 if pairing else None)


IDS = {E.BOUND: {"binding_id": BID}, E.PAIRED: {"pairing_id": PID2}, E.RENEWED: {"pairing_id": PID2}}


def ids_for(event: PackEvent) -> dict[str, str]:
    return IDS.get(event, {})


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)), ids=lambda v: v.value)
def test_every_state_and_event_follows_the_table(state, event):
    m = machine_in(state)
    transition = TRANSITIONS.get((state, event))
    if transition is None:
        with pytest.raises(VerificationError) as err:
            m.handle(event, NOW, **ids_for(event))
        assert err.value.reason is Reason.WRONG_STATE
        assert m.state is state and m.rejections[Reason.WRONG_STATE] == 1 and m.history == []
        return
    step = m.handle(event, NOW, **ids_for(event))
    assert isinstance(step, Step)
    assert (step.source, step.event, step.target) == (state, event, transition.target)
    assert m.state is transition.target
    assert step.actions == transition.actions
    assert m.history == [step]


def test_main_chain_and_exits_match_the_documented_graph():
    edges = {(s.value, e.value, t.target.value) for (s, e), t in TRANSITIONS.items()}
    chain = [("factory", "bound", "bound"), ("bound", "paired", "paired"), ("paired", "confirmed", "active"),
             ("active", "validated", "validated")]  # fmt: skip
    assert set(chain) <= edges
    assert [s.number for s in S] == [0, 1, 2, 3, 4, None, None, None, None]
    # Every state is reachable from the factory state.
    seen, frontier = {S.FACTORY}, [S.FACTORY]
    while frontier:
        here = frontier.pop()
        for (s, _), t in TRANSITIONS.items():
            if s is here and t.target not in seen:
                seen.add(t.target)
                frontier.append(t.target)
    assert seen == set(S)


def test_leaving_the_energised_states_always_isolates_first():
    for (source, _), t in TRANSITIONS.items():
        leaves = source in ENERGISABLE and t.target not in ENERGISABLE
        assert (Action.ISOLATE in t.actions) == leaves, t
        if leaves:
            assert t.actions[0] is Action.ISOLATE
    # The only way into the energised states from outside is a completed pairing.
    entries = {(s, e) for (s, e), t in TRANSITIONS.items() if s not in ENERGISABLE and t.target in ENERGISABLE}
    assert entries == {(S.BOUND, E.PAIRED)}


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
def test_emergency_shutdown_is_accepted_exactly_where_the_pack_may_be_energised(state):
    m = machine_in(state)
    assert m.accepts_emergency_shutdown == (state in ENERGISABLE)
    for tier in Tier:
        if state in ENERGISABLE and tier >= Tier.PAIRING:
            m.allows(C.EMERGENCY_SHUTDOWN, tier)
        else:
            with pytest.raises(VerificationError) as err:
                m.allows(C.EMERGENCY_SHUTDOWN, tier)
            expected = Reason.TIER_TOO_LOW if state in ENERGISABLE else Reason.WRONG_STATE
            assert err.value.reason is expected


def expected_minimum(state: PackState, cls: MessageClass) -> Tier | None:
    if cls not in ACCEPTED[state]:
        return None
    if state not in ENERGISABLE:
        return UNPAIRED_MINIMUM[cls]
    if state is S.ESCALATED and cls is not C.EMERGENCY_SHUTDOWN:
        return Tier.BINDING
    return DEFAULT_POLICY.minimum[cls]


@pytest.mark.parametrize(("state", "cls"), list(itertools.product(S, C)), ids=lambda v: v.value)
def test_gate_for_every_state_and_class_at_every_tier(state, cls):
    m = machine_in(state)
    need = expected_minimum(state, cls)
    for tier in Tier:
        if need is not None and tier >= need:
            m.allows(cls, tier)
            continue
        with pytest.raises(VerificationError) as err:
            m.allows(cls, tier)
        assert err.value.reason is (Reason.WRONG_STATE if need is None else Reason.TIER_TOO_LOW)
    assert m.state is state  # traffic never moves the machine


def test_commands_wait_for_key_confirmation_and_firmware_for_validation():
    m = PackSecurity()
    m.handle(E.BOUND, NOW, binding_id=BID)
    m.handle(E.PAIRED, NOW, pairing_id=PID, expires_at=NOW + 60)
    for cls in CRITICAL_CLASSES - {C.CRITICAL_TELEMETRY, C.EMERGENCY_SHUTDOWN}:
        with pytest.raises(VerificationError, match="wrong_state"):
            m.allows(cls, Tier.PAIRING)
    m.handle(E.CONFIRMED, NOW, pairing_id=PID)
    m.allows(C.CHARGE_COMMAND, Tier.PAIRING)
    with pytest.raises(VerificationError, match="wrong_state"):
        m.allows(C.FIRMWARE_UPDATE, Tier.PAIRING)
    m.handle(E.VALIDATED, NOW, pairing_id=PID)
    m.allows(C.FIRMWARE_UPDATE, Tier.PAIRING)


def test_certificate_policy_applies_on_top_of_the_gate():
    clear_voltage = DEFAULT_POLICY.with_clear(C.VOLTAGE_TELEMETRY)
    m = PackSecurity(state=S.BOUND, binding_id=BID)
    m.handle(E.PAIRED, NOW, pairing_id=PID, policy=clear_voltage)
    m.allows(C.VOLTAGE_TELEMETRY, Tier.NONE)
    with pytest.raises(VerificationError, match="tier_too_low"):
        m.allows(C.CURRENT_TELEMETRY, Tier.NONE)
    m.handle(E.ANOMALY, NOW)  # escalation raises the floor above the certificate's policy
    with pytest.raises(VerificationError, match="tier_too_low"):
        m.allows(C.VOLTAGE_TELEMETRY, Tier.EXCHANGE)


def test_events_about_another_binding_or_pairing_change_nothing():
    m = machine_in(S.ACTIVE)
    for event, ids in ((E.PAIRING_REVOKED, {"pairing_id": "other"}), (E.BINDING_REVOKED, {"binding_id": "other"}),
                       (E.EXPIRED, {"pairing_id": "other"})):  # fmt: skip
        with pytest.raises(VerificationError) as err:
            m.handle(event, NOW, **ids)
        assert err.value.reason is Reason.WRONG_SESSION
    assert m.state is S.ACTIVE and m.rejections[Reason.WRONG_SESSION] == 3
    with pytest.raises(ProtocolError):
        PackSecurity().handle(E.BOUND, NOW)  # the caller must name the binding


def test_effects_name_what_is_left_behind():
    m = machine_in(S.ACTIVE)
    assert m.tick(NOW) is None
    step = m.tick(NOW + 3600)
    assert step is not None and step.target is S.EXPIRED and step.actions == (Action.REQUEST_PAIRING,)
    renewal = m.handle(E.PAIRED, NOW + 3601, pairing_id=PID2, expires_at=NOW + 7200)
    (erase,) = renewal.effects
    assert erase.action is Action.ERASE_PAIRING_SECRETS and erase.pairing_id == PID
    assert m.pairing_id == PID2
    lost = m.handle(E.KEY_LOSS, NOW + 3602)
    assert lost.actions == (Action.ISOLATE, Action.ERASE_PAIRING_SECRETS, Action.ANNOUNCE_KEY_LOSS)
    assert lost.effects[1].pairing_id == PID2
    assert (m.state, m.pairing_id, m.policy, m.binding_id) == (S.KEY_LOST, None, None, BID)
    revoked = m.handle(E.BINDING_REVOKED, NOW + 3603, binding_id=BID)
    assert revoked.effects[-1].binding_id == BID and m.binding_id is None


def test_life_cycle_walk_and_record_round_trip():
    m = PackSecurity()
    walk = [
        (E.BOUND, {"binding_id": BID}), (E.PAIRED, {"pairing_id": PID}), (E.CONFIRMED, {}), (E.VALIDATED, {}),
        (E.ANOMALY, {}), (E.VALIDATED, {}), (E.ATTESTATION_LAPSED, {}), (E.RENEWED, {"pairing_id": PID2}),
        (E.PAIRING_REVOKED, {"pairing_id": PID2}), (E.BINDING_REVOKED, {}), (E.BOUND, {"binding_id": "b2"}),
    ]  # fmt: skip
    for i, (event, ids) in enumerate(walk):
        m.handle(event, NOW + i, **ids)
        again = PackSecurity.from_record(m.to_record())
        assert again.to_record() == m.to_record()
    assert [s.target.value for s in m.history] == [
        "bound", "paired", "active", "validated", "escalated", "validated", "active", "active", "bound", "revoked",
        "bound",
    ]  # fmt: skip
    assert m.state is S.BOUND and m.binding_id == "b2"


def test_gates_cover_every_state_and_never_take_critical_classes_in_clear():
    assert set(GATES) == set(S)
    for state in S:
        m = machine_in(state)
        for cls in CRITICAL_CLASSES & set(GATES[state]):
            assert m.minimum_tier(cls) >= Tier.PAIRING


def test_state_diagram_is_drawn_from_the_transition_table():
    from modbatt.workbench.lifecycle_figures import state_diagram, state_diagram_figure

    g = state_diagram()
    assert {(u, d["event"], v) for u, v, d in g.edges(data=True)} == {
        (s.value, e.value, t.target.value) for (s, e), t in TRANSITIONS.items()
    }
    assert {n for n in g.nodes if g.nodes[n]["energisable"]} == {s.value for s in ENERGISABLE}
    fig = state_diagram_figure(g)
    assert fig.axes and fig.axes[0].texts  # drawn headless (Agg), with labels
