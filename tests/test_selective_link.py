"""Selective encryption on a paired CAN link: tier policy, downgrade refusal, freshness across restarts.

Every link end here is the entity's own channel (``EntityNode.channel``), as in a deployment.
"""

from __future__ import annotations

import pytest
from helpers_binding import World

from modbatt.can.ids import SEED_LAYOUT
from modbatt.crypto.keystore import KeyStore
from modbatt.errors import Reason, VerificationError
from modbatt.model.policy import CRITICAL_CLASSES, DEFAULT_POLICY, EncryptionPolicy, MessageClass
from modbatt.model.tier import Tier
from modbatt.nodes.channel import pump
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.pairing_flow import pair_entities


@pytest.fixture
def paired():
    w = World()
    record = w.bind().record
    outcome = pair_entities(w.controller, w.pack, w.module, record.binding_id)
    return w, record, outcome


def _link(w, node, record, outcome):
    return node.channel(outcome.certificate.metadata.pairing_id)


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
    # The policy travels in the certificate: a pairing issued with the relaxed one.
    outcome = pair_entities(w.controller, w.pack, w.module, record.binding_id, policy=relaxed)
    pack = _link(w, w.pack, record, outcome)
    module = _link(w, w.module, record, outcome)
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


def test_restart_never_reuses_a_nonce(tmp_path):
    """Pack on a key store on disk: its channel's counters are files beside it and survive restarts."""
    w = World()
    path = tmp_path / "pack.keystore"
    key_file = KeyStore.generate_key_file(tmp_path / "pack.kek")
    disk = KeyStore.create(path, key_file=key_file, reproducible=True)
    with disk.transaction():
        for name in w.pack.keystore.key_names():
            disk.put_private_key(name, w.pack.keystore.private_key(name))
        for name in w.pack.keystore.record_names():
            disk.put_record(name, w.pack.keystore.record(name))
    w.pack = EntityNode(disk, clock=w.clock, rng=w.rng)  # freshness: files beside the store
    w.client.nodes[w.pack.access_data.endpoint] = w.pack
    record = w.bind().record
    pid = pair_entities(w.controller, w.pack, w.module, record.binding_id).certificate.metadata.pairing_id
    module = w.module.channel(pid)
    seen = set()
    for _boot in range(3):
        pack = w.pack.channel(pid)
        pump(pack, module)  # after a restart: resync both ways
        for _ in range(5):
            pdu = pack.send(MessageClass.CHARGE_COMMAND, b"\x06")
            assert pdu.freshness not in seen  # the FV is the nonce's counter part
            seen.add(pdu.freshness)
            assert module.receive(pdu.can_id, pdu.data).payload == b"\x06"
        pack.close()  # a restart: the next node object opens the same files
        w.pack = EntityNode(KeyStore.open(path, key_file=key_file), clock=w.clock, rng=w.rng)
    assert len(seen) == 15
    # Each restart resumed past the reservation persisted before it.
    assert sorted(seen)[5] > sorted(seen)[4] + 1
    assert sorted((tmp_path / "pack.freshness" / pid).iterdir())  # the counters are files on disk
