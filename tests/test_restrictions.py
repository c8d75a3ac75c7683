"""A certificate's restrictions, enforced by the receiving end's channel; the escalation floor spares shutdown."""

from __future__ import annotations

import pytest
from helpers_binding import World

from modbatt.errors import ConfigError, Reason, VerificationError
from modbatt.model.pairing import Restrictions
from modbatt.model.policy import MessageClass
from modbatt.model.tier import Tier
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.protocol.pack_state import PackSecurity, PackState
from modbatt.protocol.restrictions import DATA_CLASSES, MANAGEMENT_CLASSES, OPERATION_CLASSES, RestrictionGate

C = MessageClass
LIMITS = Restrictions(("charge_command",), ("voltage_telemetry",), 5)


def _paired(restrictions: Restrictions | None = None, protocol: str = "seed"):
    w = World()
    record = w.bind().record
    cert = w.controller.issue_pairing(record.binding_id, restrictions=restrictions, profile=protocol)
    pair_entities(w.controller, w.pack, w.module, certificate=cert)
    pid = cert.metadata.pairing_id
    return w, w.pack.channel(pid), w.module.channel(pid)


def _deliver(end, pdu):
    return end.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame)


def _refused(end, pdu) -> Reason:
    with pytest.raises(VerificationError) as exc:
        _deliver(end, pdu)
    return exc.value.reason


def test_every_class_is_an_operation_a_data_type_or_the_protocols_own():
    assert set(MessageClass) == OPERATION_CLASSES | DATA_CLASSES | MANAGEMENT_CLASSES
    assert not OPERATION_CLASSES & DATA_CLASSES and not (OPERATION_CLASSES | DATA_CLASSES) & MANAGEMENT_CLASSES


def test_the_controller_refuses_restrictions_naming_no_class_of_their_kind():
    w = World()
    record = w.bind().record
    for bad in (Restrictions(("voltage_telemetry",)), Restrictions((), ("charge_command",)), Restrictions(("fly",))):
        with pytest.raises(ConfigError, match="restrictions"):
            w.controller.issue_pairing(record.binding_id, restrictions=bad)
    assert w.ledger.size == 1  # nothing issued


# Restrictions are checked after verification, whatever authenticated the unit (docs/profiles.md).
PROTOCOLS = ["seed", "efficient"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_operations_and_data_types_the_certificate_does_not_allow_are_refused_and_counted(protocol):
    _w, pack, module = _paired(LIMITS, protocol)
    assert pack.protocol.value == module.protocol.value == protocol
    assert _deliver(module, pack.send(C.CHARGE_COMMAND, b"\x01\x00\x03")).payload == b"\x01\x00\x03"
    assert _refused(module, pack.send(C.DISCHARGE_COMMAND, b"\x01\x00\x03")) is Reason.UNAUTHORIZED
    assert _refused(module, pack.send(C.FIRMWARE_UPDATE, b"\x00" * 12)) is Reason.UNAUTHORIZED
    # At the binding tier too (signed under seed, sealed under the binding MAC secret under efficient).
    assert _refused(module, pack.send(C.DISCHARGE_COMMAND, b"\x01\x00\x03", tier=Tier.BINDING)) is Reason.UNAUTHORIZED
    assert _deliver(pack, module.send(C.VOLTAGE_TELEMETRY, b"\x0c\x80")).payload == b"\x0c\x80"
    assert _refused(pack, module.send(C.CURRENT_TELEMETRY, b"\x00\x10")) is Reason.UNAUTHORIZED
    # Never restricted: the protocol's own messages and emergency shutdown (docs/lifecycle.md §4).
    assert _deliver(module, pack.send(C.EMERGENCY_SHUTDOWN, b"\x01")).payload == b"\x01"
    assert _deliver(module, pack.send(C.IDENTITY, b"who")).payload == b"who"
    assert module.rejects[Reason.UNAUTHORIZED] == 3 and pack.rejects[Reason.UNAUTHORIZED] == 1
    assert module.restrictions.counters() == {"operation": 3}
    assert pack.restrictions.counters() == {"data_type": 1}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_the_rate_limit_is_a_one_second_bucket_per_receiver_and_spares_shutdown(protocol):
    w, pack, module = _paired(LIMITS, protocol)
    burst = [pack.send(C.CHARGE_COMMAND, bytes([1, 0, i])) for i in range(7)]
    outcomes = [_try(module, pdu) for pdu in burst]
    assert outcomes == [None] * 5 + [Reason.RATE_LIMITED] * 2
    assert _deliver(module, pack.send(C.EMERGENCY_SHUTDOWN, b"\x01")).payload == b"\x01"  # over the rate: still in
    assert _refused(module, burst[5]) is Reason.REPLAY  # a refused frame spent its freshness value
    w.clock.advance(0.4)  # 0.4 s refill 2 messages
    assert [_try(module, pack.send(C.CHARGE_COMMAND, b"\x01\x00\x09")) for _ in range(3)] == [
        None, None, Reason.RATE_LIMITED,
    ]  # fmt: skip
    assert module.restrictions.counters() == {"rate": 3}
    # The other direction has its own bucket.
    assert _deliver(pack, module.send(C.VOLTAGE_TELEMETRY, b"\x0c\x80")).payload == b"\x0c\x80"


def _try(end, pdu) -> Reason | None:
    try:
        _deliver(end, pdu)
    except VerificationError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_forged_frames_do_not_spend_the_senders_rate(protocol):
    _w, pack, module = _paired(Restrictions((), (), 2), protocol)
    good = [pack.send(C.CHARGE_COMMAND, bytes([1, 0, i])) for i in range(2)]
    for pdu in good:
        forged = bytes([pdu.data[0] ^ 1]) + pdu.data[1:]
        assert _refused(module, type(pdu)(pdu.can_id, forged, *pdu[2:])) is Reason.BAD_MAC
    assert [_try(module, pdu) for pdu in good] == [None, None]


def test_a_gate_without_restrictions_admits_everything():
    gate = RestrictionGate()
    assert gate.unrestricted
    for cls in MessageClass:
        gate.check(cls, 0.0)
    assert not gate.rejections


def test_the_escalation_floor_raises_everything_but_emergency_shutdown():
    w, pack, _module = _paired()
    pack.escalate(Tier.BINDING)
    assert pack.tier_for(C.CHARGE_COMMAND) is Tier.BINDING
    assert pack.tier_for(C.EMERGENCY_SHUTDOWN) is Tier.PAIRING
    shutdown = pack.send(C.EMERGENCY_SHUTDOWN, b"\x01")
    assert shutdown.single_frame and w.module.channel(pack.pairing_id).receive(shutdown.can_id, shutdown.data)
    with pytest.raises(VerificationError) as exc:
        pack.send(C.CHARGE_COMMAND, b"\x01\x00\x03", tier=Tier.PAIRING)
    assert exc.value.reason is Reason.TIER_TOO_LOW
    escalated = PackSecurity(state=PackState.ESCALATED, binding_id="b", pairing_id=pack.pairing_id)
    escalated.allows(C.EMERGENCY_SHUTDOWN, Tier.PAIRING)  # the gate takes what the link sends
    with pytest.raises(VerificationError):
        escalated.allows(C.CHARGE_COMMAND, Tier.PAIRING)
