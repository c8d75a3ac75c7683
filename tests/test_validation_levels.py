"""Validation levels 1-7: each success path, and every bad-input class rejected with its Reason.

Bad-input classes per level: replayed, forged, wrong-session, expired-session, wrong-level.
Each rejection must be counted in the receiving machine's ``rejections`` Counter.
"""

from __future__ import annotations

import dataclasses

import pytest
from helpers_validation import paired_world

from modbatt.crypto import labels
from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import canonical_dumps, strict_loads
from modbatt.errors import Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.model.statements import read_statement
from modbatt.nodes.validation import run_all_levels
from modbatt.protocol.validation import (
    Announcer,
    AnnounceVerifier,
    BindingKeyRef,
    BindingValidationAuthority,
    BindingValidationSubject,
    BindingValidationVerifier,
    CommandExecutor,
    CommandSender,
    LctAttestor,
    PairedHandshakeInitiator,
    PairedHandshakeResponder,
    PairingValidationAuthority,
    SignedHandshakeInitiator,
    SignedHandshakeResponder,
    WitnessRequester,
    WitnessService,
    lct_id_for_key,
)


def _reject(fn, *args) -> Reason:
    with pytest.raises(VerificationError) as exc:
        fn(*args)
    return exc.value.reason


def _tamper(data: bytes, **changes) -> bytes:
    """Re-encode a message with fields changed (signature left as it was: a forgery)."""
    value = strict_loads(data)
    value.update(changes)
    return canonical_dumps(value)


# ------------------------------------------------------------------ all levels together


def test_run_all_levels_reports_ok_for_every_level_and_records_l2_l6_l7():
    p = paired_world()
    out = run_all_levels(p.world.controller, p.world.pack, p.world.module, p.ctx.binding_id, p.ctx.pairing_id)
    assert set(out) == {str(n) for n in range(1, 8)}
    assert all(level["outcome"] == "ok" for level in out.values()), out
    assert all(level["can_frames"] >= level["messages"] for level in out.values())
    key = p.world.controller_key.public_key
    for n in ("2", "6", "7"):
        body = read_statement(p.world.ledger.entry(out[n]["ledger_index"]), key)
        assert body["kind"] == "validation" and body["level"] == int(n)
    assert out["7"]["lct_id"] == "lct:web4:test" and out["7"]["proof_hashes"] >= 1


# ------------------------------------------------------------------ L1 announce


def _announce_setup(p):
    m = p.module
    announcer = Announcer(
        binding_id=p.ctx.binding_id, access_data=p.world.module.access_data, binding_key=m["binding_key"]
    )
    verifier = AnnounceVerifier([BindingKeyRef(p.ctx.binding_id, m["device_id"], p.pack["partner_key"])])
    return announcer, verifier


def test_l1_announce_carries_access_data_and_rejects_bad_input():
    p = paired_world()
    announcer, verifier = _announce_setup(p)
    data = announcer.announce(p.now)
    msg = verifier.receive(data, p.now)
    assert msg.access_data == p.world.module.access_data and msg.sender == "module-01"
    # replayed
    assert _reject(verifier.receive, data, p.now) is Reason.REPLAY
    # forged: access data changed under the old signature
    forged = _tamper(
        announcer.announce(p.now), access_data={**msg.access_data.to_dict(), "endpoint": "can://can0/0x02"}
    )
    assert _reject(verifier.receive, forged, p.now) is Reason.BAD_SIGNATURE
    # signed by a key nobody bound
    stranger = Announcer(binding_id=p.ctx.binding_id, access_data=msg.access_data, binding_key=PrivateKey.generate())
    assert _reject(verifier.receive, stranger.announce(p.now), p.now) is Reason.UNKNOWN_BINDING
    # wrong session: the right key, another binding id
    other = Announcer(binding_id="other-binding", access_data=msg.access_data, binding_key=p.module["binding_key"])
    assert _reject(verifier.receive, other.announce(p.now), p.now) is Reason.WRONG_SESSION
    # expired: an old (never seen) announce re-broadcast later
    late = announcer.announce(p.now)
    assert _reject(verifier.receive, late, p.now + 60) is Reason.EXPIRED
    # wrong level: a level-3 hello presented as an announce
    hello = _l3_parties(p)[0].start(p.now)
    assert _reject(verifier.receive, hello, p.now) is Reason.WRONG_LEVEL
    assert verifier.rejections == {
        Reason.REPLAY: 1, Reason.BAD_SIGNATURE: 1, Reason.UNKNOWN_BINDING: 1, Reason.WRONG_SESSION: 1,
        Reason.EXPIRED: 1, Reason.WRONG_LEVEL: 1,
    }  # fmt: skip


# ------------------------------------------------------------------ L2 witness


def _witness_setup(p):
    requester = WitnessRequester(
        binding_id=p.ctx.binding_id, device_id="pack-01", binding_key=p.pack["binding_key"], rng=p.world.rng
    )
    witness = WitnessService(
        witness_id="module-01",
        signing_key=p.module["binding_key"],
        requesters={(p.ctx.binding_id, "pack-01"): p.module["partner_key"]},
    )
    return requester, witness


def _ask(p, requester):
    return requester.request(
        witness="module-01", witness_key=p.pack["partner_key"], event="state_change", details={"s": 1}, now=p.now
    )


def test_l2_witness_success_produces_a_record_with_both_signatures():
    p = paired_world()
    requester, witness = _witness_setup(p)
    req = _ask(p, requester)
    event = requester.on_ack(witness.on_request(req, p.now), p.now)
    record = event.to_record()
    assert record["entity_signature"] == event.request.sig and len(record["witness_signature"]) == 64
    assert record["witness"] == "module-01" and record["level"] == 2
    event.verify(p.module["partner_key"], p.pack["partner_key"])
    with pytest.raises(VerificationError) as exc:
        event.verify(p.pack["partner_key"], p.pack["partner_key"])
    assert exc.value.reason is Reason.BAD_SIGNATURE


def test_l2_witness_bad_input():
    p = paired_world()
    requester, witness = _witness_setup(p)
    req = _ask(p, requester)
    ack = witness.on_request(req, p.now)
    assert _reject(witness.on_request, req, p.now) is Reason.REPLAY  # replayed request
    forged = _tamper(_ask(p, requester), event="firmware_update")
    assert _reject(witness.on_request, forged, p.now) is Reason.BAD_SIGNATURE
    old = _ask(p, requester)
    assert _reject(witness.on_request, old, p.now + 30) is Reason.EXPIRED
    assert _reject(witness.on_request, _l3_parties(p)[0].start(p.now), p.now) is Reason.WRONG_LEVEL
    # requester side
    requester.on_ack(ack, p.now)
    assert _reject(requester.on_ack, ack, p.now) is Reason.REPLAY  # replayed ack
    requester2, witness2 = _witness_setup(p)
    assert _reject(requester2.on_ack, ack, p.now) is Reason.WRONG_SESSION  # ack for someone else's request
    late = witness2.on_request(_ask(p, requester2), p.now)
    assert _reject(requester2.on_ack, late, p.now + 10) is Reason.TIMEOUT
    req3 = _ask(p, requester2)
    ack3 = witness2.on_request(req3, p.now)
    forged_ack = _tamper(ack3, ts_ms=strict_loads(ack3)["ts_ms"] + 1)
    assert _reject(requester2.on_ack, forged_ack, p.now) is Reason.BAD_SIGNATURE
    assert witness.rejections[Reason.REPLAY] == 1 and requester.rejections[Reason.REPLAY] == 1


# ------------------------------------------------------------------ L3 signed handshake


def _l3_parties(p):
    ini = SignedHandshakeInitiator(
        binding_id=p.ctx.binding_id, device_id="pack-01", binding_key=p.pack["binding_key"], partner_id="module-01",
        partner_key=p.pack["partner_key"], rng=p.world.rng,
    )  # fmt: skip
    res = SignedHandshakeResponder(
        binding_id=p.ctx.binding_id, device_id="module-01", binding_key=p.module["binding_key"], partner_id="pack-01",
        partner_key=p.module["partner_key"], rng=p.world.rng,
    )  # fmt: skip
    return ini, res


def _l3_session(p, **kw):
    ini, res = _l3_parties(p)
    hello = ini.start(p.now, **kw)
    finish = ini.on_reply(res.on_hello(hello, p.now), p.now)
    return ini, res, hello, finish, res.on_finish(finish, p.now)


def test_l3_session_keys_agree_and_single_use_is_enforced():
    p = paired_world()
    ini, _res, _h, _f, session = _l3_session(p, single_use=True)
    assert session.open(ini.session.seal(b"hi", p.now), p.now) == b"hi"
    assert ini.session.open(session.seal(b"ho", p.now), p.now) == b"ho"
    assert _reject(ini.session.seal, b"again", p.now) is Reason.EXHAUSTED


def test_l3_bad_input():
    p = paired_world()
    ini, res, hello, finish, session = _l3_session(p, ttl_s=30)
    assert _reject(res.on_hello, hello, p.now) is Reason.REPLAY  # replayed hello
    assert _reject(res.on_finish, finish, p.now) is Reason.REPLAY  # replayed finish
    ini2, res2 = _l3_parties(p)
    forged = _tamper(ini2.start(p.now), ttl_s=300)
    assert _reject(res2.on_hello, forged, p.now) is Reason.BAD_SIGNATURE
    # wrong session: a finish for a handshake the responder is not running
    assert _reject(res2.on_finish, finish, p.now) is Reason.WRONG_SESSION
    # session data from another session
    ini3, _r3, _h3, _f3, _other = _l3_session(p)
    assert _reject(session.open, ini3.session.seal(b"x", p.now), p.now) is Reason.WRONG_SESSION
    # expired session
    data = ini.session.seal(b"late", p.now)
    assert _reject(session.open, data, p.now + 31) is Reason.EXPIRED
    # replayed session data
    fresh = ini.session.seal(b"once", p.now)
    session.open(fresh, p.now)
    assert _reject(session.open, fresh, p.now) is Reason.REPLAY
    # stale hello (clock far off) and handshake timeout
    ini4, res4 = _l3_parties(p)
    assert _reject(res4.on_hello, ini4.start(p.now - 600), p.now) is Reason.STALE
    ini5, res5 = _l3_parties(p)
    fin5 = ini5.on_reply(res5.on_hello(ini5.start(p.now), p.now), p.now)
    assert _reject(res5.on_finish, fin5, p.now + 11) is Reason.TIMEOUT
    # an invalid ephemeral point, correctly signed by the partner
    ini6, res6 = _l3_parties(p)
    bad = strict_loads(ini6.start(p.now))
    bad["ephemeral"] = b"\x02" + b"\x00" * 31 + b"\x07"
    del bad["sig"]
    resigned = canonical_dumps({**bad, "sig": p.pack["binding_key"].sign(labels.SIG_HANDSHAKE, canonical_dumps(bad))})
    assert _reject(res6.on_hello, resigned, p.now) is Reason.INVALID_POINT
    # wrong level: an L4 challenge at the L3 responder
    l4 = _l4_parties(p)[0].start(p.now)
    assert _reject(res.on_hello, l4, p.now) is Reason.WRONG_LEVEL
    assert res.rejections[Reason.REPLAY] == 2 and session.rejections[Reason.EXPIRED] == 1


# ------------------------------------------------------------------ L4 paired handshake


def _l4_parties(p):
    ini = PairedHandshakeInitiator(
        secrets=p.pack["secrets"], device_id="pack-01", partner_id="module-01", rng=p.world.rng
    )
    res = PairedHandshakeResponder(
        secrets=p.module["secrets"], device_id="module-01", partner_id="pack-01", rng=p.world.rng
    )
    return ini, res


def test_l4_re_establishes_sessions_with_fresh_keys():
    p = paired_world()
    ini, res = _l4_parties(p)
    sessions = []
    for _ in range(2):
        confirm = ini.on_response(res.on_challenge(ini.start(p.now), p.now), p.now)
        sessions.append((ini.session, res.on_confirm(confirm, p.now)))
    (a1, b1), (a2, b2) = sessions
    assert b1.open(a1.seal(b"x", p.now), p.now) == b"x" and b2.open(a2.seal(b"y", p.now), p.now) == b"y"
    assert a1._send_key != a2._send_key  # fresh keys per session
    assert _reject(b2.open, a1.seal(b"z", p.now), p.now) is Reason.WRONG_SESSION


def test_l4_bad_input():
    p = paired_world()
    ini, res = _l4_parties(p)
    challenge = ini.start(p.now)
    response = res.on_challenge(challenge, p.now)
    assert _reject(res.on_challenge, challenge, p.now) is Reason.REPLAY
    forged = _tamper(ini.start(p.now), ttl_s=1)
    assert _reject(res.on_challenge, forged, p.now) is Reason.BAD_MAC
    idle = PairedHandshakeInitiator(secrets=p.pack["secrets"], device_id="pack-01", partner_id="module-01")
    assert _reject(idle.on_response, response, p.now) is Reason.WRONG_SESSION
    ini2, res2 = _l4_parties(p)
    confirm = ini2.on_response(res2.on_challenge(ini2.start(p.now), p.now), p.now)
    assert _reject(res2.on_confirm, confirm, p.now + 11) is Reason.TIMEOUT
    ini3, res3 = _l4_parties(p)
    session = res3.on_confirm(ini3.on_response(res3.on_challenge(ini3.start(p.now), p.now), p.now), p.now)
    assert _reject(session.open, ini3.session.seal(b"late", p.now), p.now + 301) is Reason.EXPIRED
    assert _reject(res.on_challenge, _l3_parties(p)[0].start(p.now), p.now) is Reason.WRONG_LEVEL
    assert res.rejections[Reason.REPLAY] == 1 and res.rejections[Reason.BAD_MAC] == 1


# ------------------------------------------------------------------ L5 paired command


def _l5_parties(p, **kw):
    common = {"expires_at": p.now + 3600}
    sender = CommandSender(
        secrets=p.pack["secrets"], device_id="pack-01", partner_id="module-01", binding_key=p.pack["binding_key"],
        partner_key=p.pack["partner_key"], rng=p.world.rng, **common, **kw,
    )  # fmt: skip
    executor = CommandExecutor(
        secrets=p.module["secrets"], device_id="module-01", partner_id="pack-01", binding_key=p.module["binding_key"],
        partner_key=p.module["partner_key"], **common,
    )  # fmt: skip
    return sender, executor


def test_l5_command_acknowledged_and_retransmission_executes_once():
    p = paired_world()
    sender, executor = _l5_parties(p)
    _cid, cmd = sender.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", p.now)
    executor.on_command(cmd, p.now)  # the ack is lost
    (retry,) = sender.tick(p.now + 0.3)
    outcome = sender.on_ack(executor.on_command(retry, p.now + 0.3), p.now + 0.3)
    assert outcome.status == "ok" and outcome.attempts == 2
    assert executor.executed == [(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")]


def test_l5_unacknowledged_commands_are_retried_then_reported_failed():
    p = paired_world()
    sender, _executor = _l5_parties(p, max_retries=2, retry_s=0.25)
    cid, _ = sender.send(MessageClass.SAFETY_LIMITS, b"\x10", p.now)
    sent = [sender.tick(p.now + 0.25 * i) for i in range(1, 5)]
    assert [len(s) for s in sent] == [1, 1, 0, 0]
    assert sender.failed and sender.failed[0].command_id == cid and sender.failed[0].reason is Reason.TIMEOUT
    assert sender.outcomes[cid].status == "failed" and sender.rejections[Reason.TIMEOUT] == 1


def test_l5_bad_input():
    p = paired_world()
    sender, executor = _l5_parties(p)
    _, cmd = sender.send(MessageClass.CHARGE_COMMAND, b"\x01", p.now)
    ack = executor.on_command(cmd, p.now)
    assert _reject(executor.on_command, cmd, p.now) is Reason.REPLAY
    sender.on_ack(ack, p.now)
    assert _reject(sender.on_ack, ack, p.now) is Reason.REPLAY  # duplicate ack
    _, cmd2 = sender.send(MessageClass.DISCHARGE_COMMAND, b"\x02", p.now)
    assert _reject(executor.on_command, _tamper(cmd2, message_class="charge_command"), p.now) is Reason.BAD_SIGNATURE
    # a forged ack (the pack's own key cannot stand in for the module's)
    forged_ack = _tamper(executor.on_command(cmd2, p.now), status="refused")
    assert _reject(sender.on_ack, forged_ack, p.now) is Reason.BAD_SIGNATURE
    # wrong session: an ack for a command never sent
    sender2, _ = _l5_parties(p)
    assert _reject(sender2.on_ack, ack, p.now) is Reason.WRONG_SESSION
    _, cmd3 = sender.send(MessageClass.CHARGE_COMMAND, b"\x03", p.now)
    assert _reject(executor.on_command, cmd3, p.now + 3) is Reason.EXPIRED  # delayed command
    expired_exec = CommandExecutor(
        secrets=p.module["secrets"], device_id="module-01", partner_id="pack-01",
        binding_key=p.module["binding_key"], partner_key=p.module["partner_key"], expires_at=p.now - 1,
    )  # fmt: skip
    _, cmd4 = sender.send(MessageClass.CHARGE_COMMAND, b"\x04", p.now)
    assert _reject(expired_exec.on_command, cmd4, p.now) is Reason.EXPIRED  # pairing expired
    assert _reject(executor.on_command, _l4_parties(p)[0].start(p.now), p.now) is Reason.WRONG_LEVEL
    assert _reject(sender.send, MessageClass.VOLTAGE_TELEMETRY, b"\x00", p.now) is Reason.WRONG_LEVEL
    assert executor.rejections[Reason.REPLAY] == 1 and len(executor.executed) == 2


# ------------------------------------------------------------------ L6 pairing validation


def _l6(p):
    authority, parties = p.ctx.pairing_validation()  # wired as the level runs them

    def challenge(event="modification", changes=None):
        return p.ctx.pairing_validation_challenge(authority, event, changes or {"max_messages_per_s": 50})

    return authority, parties, challenge


def test_l6_all_three_sign_and_the_receipt_closes_it():
    p = paired_world()
    authority, parties, challenge = _l6(p)
    ch = challenge()
    done = parties["module-01"].countersign(parties["pack-01"].sign(ch, p.now), p.now)
    fields = authority.finalize(done, p.now)
    assert fields["event"] == "modification" and set(fields["entity_signatures"]) == {"pack-01", "module-01"}
    index = p.ctx.record_statement("validation", fields)
    receipt = p.world.ledger.entry(index)
    assert parties["pack-01"].accept_receipt(receipt, ch)["changes"] == {"max_messages_per_s": 50}


def test_l6_revocation_through_the_wiring_erases_the_pairing():
    from modbatt.nodes.validation import level6

    p = paired_world()
    out = level6(p.ctx, event="revocation")
    assert out["outcome"] == "ok"
    assert p.world.pack.pairing_secrets(p.ctx.pairing_id) is None
    assert p.world.module.pairing_secrets(p.ctx.pairing_id) is None


def test_l6_bad_input():
    p = paired_world()
    authority, parties, challenge = _l6(p)
    pack, module = parties["pack-01"], parties["module-01"]
    ch = challenge()
    done = module.countersign(pack.sign(ch, p.now), p.now)
    authority.finalize(done, p.now)
    assert _reject(authority.finalize, done, p.now) is Reason.REPLAY
    # forged: the pack's signature over other bytes
    ch2 = challenge()
    signed = strict_loads(pack.sign(ch2, p.now))
    signed["initiator_sig"] = PrivateKey.generate().sign(b"x", b"y")
    assert _reject(module.countersign, canonical_dumps(signed), p.now) is Reason.BAD_SIGNATURE
    # a challenge not signed by the controller
    rogue = PairingValidationAuthority(controller_key=PrivateKey.generate(), rng=p.world.rng)
    keys = {"pack-01": p.module["partner_key"], "module-01": p.pack["partner_key"]}
    bad = rogue.challenge(
        pairing_id=p.ctx.pairing_id, binding_id=p.ctx.binding_id, entities=keys, event="revocation", now=p.now
    )
    assert _reject(pack.sign, bad, p.now) is Reason.UNAUTHORIZED
    # wrong session: a validation for a challenge this controller did not issue
    other_authority = PairingValidationAuthority(controller_key=p.world.controller_key, rng=p.world.rng)
    ch3 = challenge()
    done3 = module.countersign(pack.sign(ch3, p.now), p.now)
    assert _reject(other_authority.finalize, done3, p.now) is Reason.WRONG_SESSION
    # expired: past the deadline
    ch4 = challenge()
    done4 = module.countersign(pack.sign(ch4, p.now), p.now)
    assert _reject(authority.finalize, done4, p.now + 31) is Reason.TIMEOUT
    # the partner does not countersign twice (a replayed initiation)
    ch5 = challenge()
    init5 = pack.sign(ch5, p.now)
    module.countersign(init5, p.now)
    assert _reject(module.countersign, init5, p.now) is Reason.REPLAY
    assert _reject(authority.finalize, _l4_parties(p)[0].start(p.now), p.now) is Reason.WRONG_LEVEL
    assert authority.rejections[Reason.REPLAY] == 1 and module.rejections[Reason.BAD_SIGNATURE] == 1


# ------------------------------------------------------------------ L7 binding validation


def _l7(p, lct_key=None, pin=True):
    lct_key = lct_key or PrivateKey.generate(p.world.rng)
    lct_id = "lct:web4:test"
    pinned = {lct_id: lct_key.public_key} if pin else {}
    verifier = BindingValidationVerifier(
        verifier_id="module-01", controller_key=p.world.controller_key.public_key, lct_keys=pinned, rng=p.world.rng
    )
    subject = BindingValidationSubject(
        binding_id=p.ctx.binding_id, device_id="pack-01", binding_key=p.pack["binding_key"]
    )
    attestor = LctAttestor(lct_id=lct_id, key=lct_key)
    authority = BindingValidationAuthority(controller_key=p.world.controller_key, lct_keys=pinned)

    def run(event="verification", *, status="active", mutate=None):
        ch = verifier.challenge(binding_id=p.ctx.binding_id, subject="pack-01", event=event, now=p.now)
        proof = subject.prove(ch, p.now)
        att = attestor.attest(proof, p.now)
        if mutate:
            proof, att = mutate(proof, att)
        ledger = p.world.ledger
        sth = ledger.signed_tree_head()
        idx = p.ctx.binding_record_index()
        return authority.bundle(
            entity_proof=proof, lct_attestation=att, record_entry=ledger.entry(idx), record_index=idx,
            audit_path=ledger.inclusion_proof(idx, sth.tree_size), sth=sth, status=status, statement_index=None,
            now=p.now,
        )  # fmt: skip

    return verifier, authority, run


def test_l7_verifier_checks_inclusion_with_only_the_controller_key():
    p = paired_world()
    verifier, _authority, run = _l7(p)
    result = verifier.verify(run(), p.now)
    assert result.subject == "pack-01" and result.tree_size == p.world.ledger.size


def test_l7_self_certifying_lct_id():
    key = PrivateKey.generate()
    assert lct_id_for_key(key.public_key).startswith("lct:web4:")
    assert lct_id_for_key(key.public_key) != lct_id_for_key(PrivateKey.generate().public_key)


def test_l7_bad_input():
    p = paired_world()
    verifier, authority, run = _l7(p)
    bundle = run()
    verifier.verify(bundle, p.now)
    assert _reject(verifier.verify, bundle, p.now) is Reason.REPLAY
    # forged bundle (a byte of the proof changed, controller signature no longer covers it)
    value = strict_loads(run())
    value["record_index"] = value["record_index"] + 1
    assert _reject(verifier.verify, canonical_dumps(value), p.now) is Reason.BAD_SIGNATURE
    # LCT attestation by an unpinned key
    other = PrivateKey.generate()
    bad_att = LctAttestor(lct_id="lct:web4:test", key=other)
    assert (
        _reject(verifier.verify, run(mutate=lambda pr, _a: (pr, bad_att.attest(pr, p.now))), p.now)
        is Reason.KEY_MISMATCH
    )
    # wrong session: a bundle for another verifier's challenge
    _v2, _a2, run2 = _l7(p)
    assert _reject(verifier.verify, run2(), p.now) is Reason.WRONG_SESSION
    # expired: answered after the challenge deadline
    late = run()
    assert _reject(verifier.verify, late, p.now + 31) is Reason.TIMEOUT
    # revoked binding
    assert _reject(verifier.verify, run(status="revoked"), p.now) is Reason.REVOKED
    # wrong level
    assert _reject(verifier.verify, _l4_parties(p)[0].start(p.now), p.now) is Reason.WRONG_LEVEL
    # the controller refuses a proof made with a key other than the recorded one
    impostor = BindingValidationSubject(binding_id=p.ctx.binding_id, device_id="pack-01", binding_key=other)
    ch = verifier.challenge(binding_id=p.ctx.binding_id, subject="pack-01", event="verification", now=p.now)
    proof = impostor.prove(ch, p.now)
    att = LctAttestor(lct_id="lct:web4:test", key=other).attest(proof, p.now)
    assert _reject(authority.check, proof, att, p.ctx.record) is Reason.KEY_MISMATCH
    assert verifier.rejections[Reason.REPLAY] == 1 and verifier.rejections[Reason.BAD_SIGNATURE] == 1


def test_l7_tampered_inclusion_proof_is_bad_proof():
    p = paired_world()
    verifier, authority, _run = _l7(p)
    ledger = p.world.ledger
    ch = verifier.challenge(binding_id=p.ctx.binding_id, subject="pack-01", event="verification", now=p.now)
    proof = BindingValidationSubject(
        binding_id=p.ctx.binding_id, device_id="pack-01", binding_key=p.pack["binding_key"]
    ).prove(ch, p.now)
    att = LctAttestor(lct_id="lct:web4:test", key=PrivateKey.generate()).attest(proof, p.now)
    for _ in range(3):
        p.ctx.record_statement("validation", {"level": 1})
    sth = ledger.signed_tree_head()
    path = ledger.inclusion_proof(0, sth.tree_size)
    path[0] = bytes(32)
    bundle = authority.bundle(
        entity_proof=proof, lct_attestation=att, record_entry=ledger.entry(0), record_index=0, audit_path=path,
        sth=sth, status="active", statement_index=None, now=p.now,
    )  # fmt: skip
    assert _reject(verifier.verify, bundle, p.now) is Reason.BAD_PROOF


def test_decoding_is_strict():
    p = paired_world()
    announcer, verifier = _announce_setup(p)
    value = strict_loads(announcer.announce(p.now))
    value["extra"] = 1
    assert _reject(verifier.receive, canonical_dumps(value), p.now) is Reason.UNKNOWN_FIELD
    assert _reject(verifier.receive, b"\xa1\x01\x02\x00", p.now) is Reason.MALFORMED  # trailing byte
    assert _reject(verifier.receive, b"\x00" * 9000, p.now) is Reason.OVERSIZED
    assert dataclasses.is_dataclass(verifier.receive(announcer.announce(p.now), p.now))
