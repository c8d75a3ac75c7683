"""Selective encryption on a paired CAN link: tier policy, downgrade refusal, freshness across restarts."""

from __future__ import annotations

import pytest
from helpers_binding import World

from modbatt.can.ids import SEED_LAYOUT
from modbatt.crypto.freshness import FileCounterStore
from modbatt.errors import Reason, VerificationError
from modbatt.model.policy import CRITICAL_CLASSES, DEFAULT_POLICY, EncryptionPolicy, MessageClass
from modbatt.model.tier import Tier
from modbatt.nodes.link import SelectiveLink
from modbatt.nodes.pairing_flow import pair_entities


@pytest.fixture
def paired():
    w = World()
    record = w.bind().record
    outcome = pair_entities(w.controller, w.pack, w.module, record.binding_id)
    return w, record, outcome


def _link(w, node, record, outcome, **kw):
    state = node.binding(record.binding_id)
    secrets = node.pairing_secrets(outcome.certificate.metadata.pairing_id)
    return SelectiveLink(
        secrets=secrets, policy=kw.pop("policy", DEFAULT_POLICY), node=1,
        binding_key=state.private_key, partner_key=state.partner_key, **kw,
    )  # fmt: skip


def test_default_tiers_follow_the_seed(paired):
    w, record, outcome = paired
    pack, module = _link(w, w.pack, record, outcome), _link(w, w.module, record, outcome)
    expectations = {
        MessageClass.CHARGE_COMMAND: Tier.PAIRING,
        MessageClass.SAFETY_LIMITS: Tier.PAIRING,
        MessageClass.FIRMWARE_UPDATE: Tier.PAIRING,
        MessageClass.VOLTAGE_TELEMETRY: Tier.EXCHANGE,
        MessageClass.TEMPERATURE_TELEMETRY: Tier.EXCHANGE,
        MessageClass.HEARTBEAT: Tier.EXCHANGE,
    }
    for cls, tier in expectations.items():
        pdu = pack.send(cls, b"\x01")
        assert SEED_LAYOUT.decode(pdu.can_id).tier is tier
        got = module.receive(pdu.can_id, pdu.data)
        assert (got.message_class, got.tier, got.payload) == (cls, tier, b"\x01")


@pytest.mark.parametrize("cls", sorted(CRITICAL_CLASSES))
@pytest.mark.parametrize("tier", [Tier.NONE, Tier.EXCHANGE])
def test_sending_a_critical_class_below_the_pairing_tier_is_refused(paired, cls, tier):
    w, record, outcome = paired
    pack = _link(w, w.pack, record, outcome)
    with pytest.raises(VerificationError) as exc:
        pack.send(cls, b"\x01", tier=tier)
    assert exc.value.reason is Reason.TIER_TOO_LOW


def test_a_certificate_policy_cannot_lower_a_critical_class():
    with pytest.raises(VerificationError) as exc:
        EncryptionPolicy({**DEFAULT_POLICY.minimum, MessageClass.CHARGE_COMMAND: Tier.EXCHANGE})
    assert exc.value.reason is Reason.TIER_TOO_LOW


def test_routine_classes_may_go_in_clear_only_where_the_policy_allows(paired):
    w, record, outcome = paired
    with pytest.raises(VerificationError):
        _link(w, w.pack, record, outcome).send(MessageClass.HEARTBEAT, b"\x00", tier=Tier.NONE)
    relaxed = DEFAULT_POLICY.with_clear(MessageClass.HEARTBEAT)
    pack = _link(w, w.pack, record, outcome, policy=relaxed)
    module = _link(w, w.module, record, outcome, policy=relaxed)
    pdu = pack.send(MessageClass.HEARTBEAT, b"\x00", tier=Tier.NONE)
    assert module.receive(pdu.can_id, pdu.data).tier is Tier.NONE


def test_stripping_the_flag_bits_of_a_command_is_refused_before_decryption(paired):
    w, record, outcome = paired
    pack, module = _link(w, w.pack, record, outcome), _link(w, w.module, record, outcome)
    pdu = pack.send(MessageClass.DISCHARGE_COMMAND, b"\x02")
    stripped = pdu.can_id & ~SEED_LAYOUT.security_mask  # flag 0, level 00: "clear"
    with pytest.raises(VerificationError) as exc:
        module.receive(stripped, pdu.data)
    assert exc.value.reason is Reason.TIER_TOO_LOW
    lowered = (pdu.can_id & ~SEED_LAYOUT.security_mask) | SEED_LAYOUT.tier_bits(Tier.EXCHANGE)
    with pytest.raises(VerificationError) as exc:
        module.receive(lowered, pdu.data)
    assert exc.value.reason is Reason.TIER_TOO_LOW
    assert module.counters() == {"tier_too_low": 2}


def test_replayed_and_tampered_frames_are_counted_by_reason(paired):
    w, record, outcome = paired
    pack, module = _link(w, w.pack, record, outcome), _link(w, w.module, record, outcome)
    pdu = pack.send(MessageClass.CHARGE_COMMAND, b"\x03")
    module.receive(pdu.can_id, pdu.data)
    with pytest.raises(VerificationError) as exc:
        module.receive(pdu.can_id, pdu.data)
    assert exc.value.reason is Reason.REPLAY
    pdu2 = pack.send(MessageClass.CHARGE_COMMAND, b"\x04")
    tampered = bytes([pdu2.data[0] ^ 0x80]) + pdu2.data[1:]
    with pytest.raises(VerificationError) as exc:
        module.receive(pdu2.can_id, tampered)
    assert exc.value.reason is Reason.BAD_MAC
    assert module.receive(pdu2.can_id, pdu2.data).payload == b"\x04"  # the real frame still passes
    assert module.counters() == {"replay": 1, "bad_mac": 1}


def test_escalation_raises_the_tier_of_routine_traffic(paired):
    w, record, outcome = paired
    pack, module = _link(w, w.pack, record, outcome), _link(w, w.module, record, outcome)
    pack.escalate(Tier.PAIRING)
    pdu = pack.send(MessageClass.VOLTAGE_TELEMETRY, b"\x05")
    assert module.receive(pdu.can_id, pdu.data).tier is Tier.PAIRING
    with pytest.raises(VerificationError):
        pack.send(MessageClass.VOLTAGE_TELEMETRY, b"\x05", tier=Tier.EXCHANGE)


def test_binding_tier_messages_carry_a_signature(paired):
    w, record, outcome = paired
    pack, module = _link(w, w.pack, record, outcome), _link(w, w.module, record, outcome)
    pdu = pack.send(MessageClass.IDENTITY, b"announce")
    assert not pdu.single_frame  # a 64-byte signature needs the multi-frame transport
    got = module.receive(pdu.can_id, pdu.data, reassembled=True)
    assert (got.tier, got.payload) == (Tier.BINDING, b"announce")


def test_restart_never_reuses_a_nonce(paired, tmp_path):
    w, record, outcome = paired

    def stores(tier):
        return FileCounterStore(tmp_path / f"pack-{tier.label}.counter")

    seen = set()
    for _boot in range(3):
        pack = _link(w, w.pack, record, outcome, counter_stores=stores)
        for _ in range(5):
            pdu = pack.send(MessageClass.CHARGE_COMMAND, b"\x06")
            assert pdu.freshness not in seen  # the FV is the nonce's counter part
            seen.add(pdu.freshness)
    assert len(seen) == 15
    # Each restart resumed past the reservation persisted before the crash.
    assert sorted(seen)[5] > sorted(seen)[4] + 1
