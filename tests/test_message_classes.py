"""Cell balancing and emergency shutdown: tiers, function codes, and arbitration on the module bus."""

from __future__ import annotations

import itertools

import pytest

from modbatt.can.catalog import LegacyBus, load_catalog
from modbatt.can.dbc import build_secure_database
from modbatt.can.functions import EMERGENCY_PRIORITY, FUNCTIONS, function_for, message_class_of
from modbatt.can.ids import SEED_LAYOUT
from modbatt.can.wiretime import CLASSIC
from modbatt.errors import VerificationError
from modbatt.model.policy import CRITICAL_CLASSES, DEFAULT_POLICY, EncryptionPolicy, MessageClass
from modbatt.model.tier import Tier
from modbatt.sim import CanBusModel, EventLoop

ES = function_for(MessageClass.EMERGENCY_SHUTDOWN)
NODES = range(0x100)
DIRECTIONS = (0, 1)


def secured_ids(function, tiers=tuple(Tier)):
    """Every identifier ``function`` can take on the module bus: any node, direction and tier."""
    return [
        SEED_LAYOUT.encode(function.id_fields(node, direction, tier))
        for node, direction, tier in itertools.product(NODES, DIRECTIONS, tiers)
    ]


@pytest.mark.parametrize("cls", [MessageClass.CELL_BALANCING, MessageClass.EMERGENCY_SHUTDOWN])
def test_new_classes_are_critical_at_the_pairing_tier(cls):
    assert cls in CRITICAL_CLASSES
    assert DEFAULT_POLICY.minimum[cls] is Tier.PAIRING
    with pytest.raises(VerificationError, match="tier_too_low"):
        EncryptionPolicy({**DEFAULT_POLICY.minimum, cls: Tier.EXCHANGE})
    f = function_for(cls)
    assert 0x080 <= f.code <= 0x0BF and message_class_of(f.code) is cls  # the critical range


def test_priority_zero_belongs_to_emergency_shutdown_alone():
    assert [f.name for f in FUNCTIONS.values() if f.priority == EMERGENCY_PRIORITY] == ["EMERGENCY_SHUTDOWN"]
    assert ES.priority == EMERGENCY_PRIORITY


def test_emergency_shutdown_wins_arbitration_against_every_other_secured_frame():
    # Lower identifier wins CAN arbitration. Every emergency-shutdown identifier (any node, either
    # direction, any tier, so escalation cannot change the result) is below every identifier any
    # other function can take, for every node, direction and tier.
    worst_shutdown = max(secured_ids(ES))
    best_other = min(i for f in FUNCTIONS.values() if f is not ES for i in secured_ids(f))
    assert worst_shutdown < best_other
    # ... and below the legacy module-bus frames, for every module id.
    legacy = [m.frame_id(module_id=n) for m in load_catalog() if m.bus is LegacyBus.MODULE for n in NODES]
    assert worst_shutdown < min(legacy)


def test_arbitration_model_sends_the_shutdown_first_on_a_loaded_bus():
    loop = EventLoop()
    bus = CanBusModel(loop, CLASSIC)
    for f in FUNCTIONS.values():  # one frame of everything else is pending before the shutdown
        if f is not ES:
            for node, direction, tier in itertools.product((0x01, 0x1F), DIRECTIONS, Tier):
                bus.submit(SEED_LAYOUT.encode(f.id_fields(node, direction, tier)), 8, tag=f.name)
    # The least favourable shutdown: the highest node, node-to-controller, escalated to the binding tier.
    bus.submit(SEED_LAYOUT.encode(ES.id_fields(0xFF, 1, Tier.BINDING)), 8, tag=ES.name)
    loop.run()
    assert bus.log[0].tag == "EMERGENCY_SHUTDOWN"
    assert len(bus.log) == 1 + (len(FUNCTIONS) - 1) * 2 * 2 * len(Tier)


def test_secure_dbc_carries_the_new_functions():
    names = {m.name for m in build_secure_database().messages}
    assert any(n.startswith("EMERGENCY_SHUTDOWN") for n in names)
    assert any(n.startswith("CELL_BALANCING") for n in names)
