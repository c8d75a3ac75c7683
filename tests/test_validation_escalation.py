"""Escalation: authenticated, rate-limited requests; the policy raises level and tier, then de-escalates."""

from __future__ import annotations

import dataclasses

import pytest
from helpers_validation import paired_world

from modbatt.attacks.escalations import escalation_world
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import KeyStoreError, Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.model.statements import read_statement
from modbatt.model.tier import Tier
from modbatt.nodes.audit import EventLog
from modbatt.nodes.validation import run_escalation_scenario
from modbatt.protocol.validation import (
    Announcer,
    AnnounceVerifier,
    BindingKeyRef,
    EscalationGate,
    EscalationPolicy,
    EscalationReason,
    EscalationRequest,
    SeenWindow,
    SignedEscalation,
    Urgency,
)

ANOMALY = EscalationRequest(5, EscalationReason.ANOMALY_DETECTED, Urgency.IMMEDIATE)


def _signed(p, request=ANOMALY, seq=0, key=None, now=None):
    return SignedEscalation.create(
        request, binding_id=p.ctx.binding_id, sender="module-01", receiver=p.pack["device_id"], seq=seq,
        now=now or p.now, key=key or p.module["binding_key"],
    )  # fmt: skip


def _gate(p, **kw):
    return EscalationGate({"module-01": p.pack["partner_key"]}, receiver=p.pack["device_id"], **kw)


def test_request_has_the_seed_shape_and_rejects_unknown_values():
    assert ANOMALY.to_dict() == {"target_level": 5, "reason": "anomaly_detected", "urgency": "immediate"}
    assert EscalationRequest.from_dict(ANOMALY.to_dict()) == ANOMALY
    with pytest.raises(VerificationError) as exc:
        EscalationRequest.from_dict({"target_level": 5, "reason": "boredom", "urgency": "immediate"})
    assert exc.value.reason is Reason.MALFORMED
    with pytest.raises(VerificationError):
        EscalationRequest(9, EscalationReason.AUDIT_REQUIRED)


def test_escalation_rides_in_an_announce_and_raises_level_and_link_tier():
    p = paired_world()
    link = p.world.pack.channel(p.ctx.pairing_id)  # the pack's own channel of the pairing
    policy = EscalationPolicy(listeners=[link.escalate])
    announce = Announcer(
        binding_id=p.ctx.binding_id, access_data=p.world.module.access_data, binding_key=p.module["binding_key"]
    ).announce(p.now, escalation=_signed(p))
    msg = AnnounceVerifier([BindingKeyRef(p.ctx.binding_id, "module-01", p.pack["partner_key"])]).receive(
        announce, p.now
    )
    event = policy.request(_gate(p).admit(msg.escalation, p.now), "module-01", p.now)
    assert event["event"] == "escalated" and event["required_level"] == 5 and event["tier_floor"] == "pairing"
    assert link.floor is Tier.PAIRING
    with pytest.raises(VerificationError) as exc:
        link.send(MessageClass.VOLTAGE_TELEMETRY, b"\x01", tier=Tier.EXCHANGE)
    assert exc.value.reason is Reason.TIER_TOO_LOW
    with pytest.raises(VerificationError) as exc:
        policy.check(4)
    assert exc.value.reason is Reason.WRONG_LEVEL
    policy.check(5)
    # de-escalation after the stated hold
    assert policy.tick(p.now + 299) == []
    (down,) = policy.tick(p.now + 300)
    assert down["event"] == "de-escalated" and policy.required_level == 1 and link.floor is Tier.NONE


def test_forged_replayed_stale_and_unknown_requests_are_refused():
    p = paired_world()
    gate = _gate(p)
    gate.admit(_signed(p, seq=0), p.now)
    with pytest.raises(VerificationError) as exc:
        gate.admit(_signed(p, seq=0), p.now)
    assert exc.value.reason is Reason.REPLAY
    with pytest.raises(VerificationError) as exc:
        gate.admit(_signed(p, seq=1, key=PrivateKey.generate()), p.now)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    with pytest.raises(VerificationError) as exc:
        gate.admit(_signed(p, seq=2, now=p.now - 3600), p.now)
    assert exc.value.reason is Reason.STALE
    stranger = SignedEscalation.create(
        ANOMALY, binding_id=p.ctx.binding_id, sender="mallory", receiver=p.pack["device_id"], seq=0, now=p.now,
        key=PrivateKey.generate(),
    )  # fmt: skip
    with pytest.raises(VerificationError) as exc:
        gate.admit(stranger, p.now)
    assert exc.value.reason is Reason.WRONG_PEER
    assert gate.rejections == {Reason.REPLAY: 1, Reason.BAD_SIGNATURE: 1, Reason.STALE: 1, Reason.WRONG_PEER: 1}


def test_rate_limit_per_sender_and_refill():
    p = paired_world()
    gate = _gate(p, burst=3, refill_s=60)
    for seq in range(3):
        gate.admit(_signed(p, seq=seq), p.now)
    with pytest.raises(VerificationError) as exc:
        gate.admit(_signed(p, seq=3), p.now)
    assert exc.value.reason is Reason.RATE_LIMITED
    # a rate-limited request is not burnt: the same one passes once a token is back
    gate.admit(_signed(p, seq=3), p.now + 60)
    assert gate.rejections[Reason.RATE_LIMITED] == 1


def test_deferred_requests_take_effect_later_and_never_lower_the_level():
    policy = EscalationPolicy()
    ev = policy.request(EscalationRequest(7, EscalationReason.AUDIT_REQUIRED, Urgency.DEFERRED), "m", 100.0)
    assert ev["event"] == "deferred" and policy.required_level == 1
    (applied,) = policy.tick(105.0)
    assert applied["event"] == "escalated" and policy.required_level == 7 and policy.tier_floor is Tier.NONE
    lower = policy.request(EscalationRequest(5, EscalationReason.ANOMALY_DETECTED), "m", 106.0)
    assert policy.required_level == 7 and policy.tier_floor is Tier.PAIRING and lower["event"] == "escalated"
    assert [e["event"] for e in policy.events] == ["deferred", "escalated", "escalated"]


def test_escalation_scenario_logs_every_event_and_records_them(tmp_path):
    p = paired_world()
    log = EventLog(tmp_path / "events.jsonl")
    events = run_escalation_scenario(
        p.world.controller, p.world.pack, p.world.module, p.ctx.binding_id, p.ctx.pairing_id, events=log,
        advance=p.advance,
    )  # fmt: skip
    kinds = [(e["event"], e.get("rejection")) for e in events]
    assert kinds[0] == ("escalated", None)
    assert ("rejected", "replay") in kinds and ("rejected", "bad_signature") in kinds
    assert ("rejected", "rate_limited") in kinds
    assert ("deferred", None) in kinds and kinds[-1] == ("de-escalated", None)
    effects = [e for e in log.events if e["kind"] == "escalation_effect"]
    assert {"outcome": "refused", "reason": "tier_too_low"}.items() <= effects[0].items()
    assert any(e.get("reason") == "wrong_level" for e in effects)
    assert any(e.get("level") == 7 and e["outcome"] == "ok" for e in effects)
    key = p.world.controller_key.public_key
    recorded = [read_statement(p.world.ledger.entry(i), key) for i in range(1, p.world.ledger.size)]
    assert [r["event"] for r in recorded if r["kind"] == "escalation"] == ["escalated", "escalated", "de-escalated"]
    assert (tmp_path / "events.jsonl").read_text().count("\n") == len(log.events)


def test_every_level_can_carry_an_authenticated_escalation():
    from test_validation_levels import _l3_parties, _l4_parties, _l5_parties, _l6, _witness_setup

    from modbatt.protocol.validation import BindingValidationSubject
    from modbatt.protocol.validation.binding_validation import BindingChallenge, EntityProof
    from modbatt.protocol.validation.pairing_validation import PairingValidation
    from modbatt.protocol.validation.witness import WitnessRequest

    p = paired_world()
    esc = [_signed(p, seq=i) for i in range(7)]
    carried = []
    # L1 is covered above; the module is the sender of each request (its binding key signs it).
    requester, _w = _witness_setup(p)
    req = requester.request(
        witness="module-01", witness_key=p.pack["partner_key"], event="e", details={}, now=p.now, escalation=esc[1]
    )
    carried.append(WitnessRequest.decode(req).escalation)
    ini3, res3 = _l3_parties(p)
    res3.on_hello(ini3.start(p.now, escalation=esc[2]), p.now)
    carried.append(res3.last_hello.escalation)
    ini4, res4 = _l4_parties(p)
    res4.on_challenge(ini4.start(p.now, escalation=esc[3]), p.now)
    carried.append(res4.last_challenge.escalation)
    sender, executor = _l5_parties(p)
    executor.on_command(sender.send(MessageClass.CHARGE_COMMAND, b"\x01", p.now, escalation=esc[4])[1], p.now)
    carried.append(executor.last_command.escalation)
    _authority, parties, challenge = _l6(p)
    carried.append(PairingValidation.decode(parties["pack-01"].sign(challenge(), p.now, escalation=esc[5])).escalation)
    subject = BindingValidationSubject(
        binding_id=p.ctx.binding_id, device_id="pack-01", binding_key=p.pack["binding_key"]
    )
    ch = BindingChallenge(
        p.ctx.binding_id, "pack-01", "module-01", "verification", bytes(16), int(p.now * 1000), int(p.now * 1000) + 9000
    )
    carried.append(EntityProof.decode(subject.prove(ch.encode(), p.now, escalation=esc[6])).escalation)
    gate = _gate(p, burst=10)
    assert [gate.admit(e, p.now) for e in carried] == [ANOMALY] * 6


# --------------------------------------------------------------------------- receiver and restarts


def test_the_receiver_is_signed_and_checked():
    p = paired_world()
    esc = _signed(p, seq=0)
    other = EscalationGate({"module-01": p.pack["partner_key"]}, receiver="standby-pack")
    with pytest.raises(VerificationError) as exc:  # same key, another gate: the body names the pack
        other.admit(esc, p.now)
    assert exc.value.reason is Reason.WRONG_PEER
    readdressed = dataclasses.replace(esc, receiver="standby-pack")  # the signature no longer covers it
    with pytest.raises(VerificationError) as exc:
        other.admit(readdressed, p.now)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    assert SignedEscalation.from_cbor(esc.to_cbor()) == esc
    with pytest.raises(VerificationError) as exc:
        SignedEscalation.from_cbor({k: v for k, v in esc.to_cbor().items() if k != "receiver"})
    assert exc.value.reason is Reason.MALFORMED


def test_the_gate_takes_persisted_windows_in_and_reports_changes_out():
    p = paired_world()
    gate = _gate(p)
    for seq in (0, 1, 5):
        gate.admit(_signed(p, seq=seq), p.now)
    (window,) = gate.drain_seen()
    assert (window.binding_id, window.sender, window.highest) == (p.ctx.binding_id, "module-01", 5)
    assert gate.drain_seen() == []  # nothing changed since
    assert SeenWindow.from_record(window.to_record()) == window
    restarted = _gate(p, seen=[window])
    for seq in (0, 1, 5):
        with pytest.raises(VerificationError) as exc:
            restarted.admit(_signed(p, seq=seq), p.now + 1)
        assert exc.value.reason is Reason.REPLAY
    restarted.admit(_signed(p, seq=3), p.now + 1)  # never seen: still inside the window, accepted
    with pytest.raises(VerificationError) as exc:
        SeenWindow.from_record({"binding_id": "b", "sender": "s", "highest": 5, "bitmap": -1})
    assert exc.value.reason is Reason.MALFORMED


def test_a_replayed_escalation_is_refused_after_the_receiver_restarts():
    with escalation_world() as w:
        assert w.first["event"] == "escalated"
        restarted = w.restart_pack()
        event = restarted.receive(w.recorded, w.world.deployment.clock() + 1)
        assert event["event"] == "rejected" and event["rejection"] == "replay"
        assert restarted.policy.required_level == 1  # the replay changed nothing
        # A new request from the module (next seq) is still accepted after the restart.
        state = w.world.module.binding(w.binding_id)
        r = w.recorded
        fresh = SignedEscalation.create(
            r.request, binding_id=r.binding_id, sender=r.sender, receiver=r.receiver, seq=2,
            now=w.world.deployment.clock(), key=state.private_key,
        )  # fmt: skip
        assert restarted.receive(fresh, w.world.deployment.clock())["event"] == "escalated"


def test_an_unpersistable_escalation_is_not_acted_on():
    with escalation_world() as w:
        state = w.world.module.binding(w.binding_id)
        receiver = w.receiver

        class Broken:
            def __getattr__(self, name):
                return getattr(w.world.pack.keystore, name)

            def transaction(self):
                raise KeyStoreError("disk full")

        w.world.pack._store = Broken()
        esc = SignedEscalation.create(
            ANOMALY, binding_id=w.binding_id, sender=w.recorded.sender, receiver=w.recorded.receiver, seq=7,
            now=w.world.deployment.clock(), key=state.private_key,
        )  # fmt: skip
        before = len(receiver.policy.events)
        with pytest.raises(KeyStoreError):
            receiver.receive(esc, w.world.deployment.clock())
        assert len(receiver.policy.events) == before  # not acted on


def test_one_escalation_delivered_at_once_on_many_threads_is_acted_on_once():
    import threading

    with escalation_world() as w:
        state = w.world.module.binding(w.binding_id)
        r = w.recorded
        esc = SignedEscalation.create(
            r.request, binding_id=r.binding_id, sender=r.sender, receiver=r.receiver, seq=9,
            now=w.world.deployment.clock(), key=state.private_key,
        )  # fmt: skip
        start, events = threading.Barrier(6), []

        def deliver():
            start.wait(10)
            events.append(w.receiver.receive(esc, w.world.deployment.clock())["event"])

        threads = [threading.Thread(target=deliver) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert sorted(events) == ["extended"] + ["rejected"] * 5
        assert w.receiver.gate.rejections == {Reason.REPLAY: 5}
