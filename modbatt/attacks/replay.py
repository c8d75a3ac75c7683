"""Replay at every level and tier: binding requests, pairing offers and completions, CAN frames at
the exchange, pairing and binding tiers (classic and FD), validation commands and escalations.

Each scenario records a genuine message, lets it be accepted once, then plays it again. The
defences are the ones the design names: request ids with a ±300 s window (binding), session state
and session nonces (pairing), freshness windows (CAN, per tier and direction), sequence guards
(validation levels, escalation).
"""

from __future__ import annotations

from ..can.wiretime import CLASSIC, FD
from ..errors import Reason
from ..model.pairing import ControllerMode
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import pair_entities
from ..nodes.validation import ValidationContext
from ..protocol.binding import CLOCK_SKEW_SECONDS
from ..protocol.validation import EscalationGate, EscalationReason, EscalationRequest, SignedEscalation
from ._world import paired_pack, tap
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

FAMILY = "replay"


@scenario("replay_binding_request", family=FAMILY, expected=("blocked", "replay"))
def replay_binding_request(seed: int | None = None) -> Outcome:
    """Replay the controller's signed generate-keys/distribute-key/revoke requests to the entity."""
    dep = InMemoryDeployment(seed=seed, modules=1)
    module = dep.modules[1]
    wire = tap(dep)
    record = dep.bind(dep.pack, module).record
    reasons = []
    for endpoint, op, payload in wire.calls:
        node = dep.client.nodes[endpoint]
        status, body = node.handle(op, payload)
        reasons.append(None if status == 200 else Reason(body["error"]))
    # After the clock window the same bytes are refused as stale, and still never applied.
    dep.clock.advance(CLOCK_SKEW_SECONDS + 1)
    late = [dep.client.nodes[e].handle(op, p) for e, op, p in wire.calls]
    reasons += [None if s == 200 else Reason(b["error"]) for s, b in late]
    still_bound = module.binding(record.binding_id) is not None
    counters = {**counted("module.rejections", module.rejections), **counted("pack.rejections", dep.pack.rejections)}
    counters["replayed"] = len(reasons)
    counters["binding_intact"] = int(still_bound)
    dep.ledger.close()
    return judge(reasons, Reason.REPLAY, counters, detail="request ids are remembered; outside ±300 s: stale")


@scenario("replay_pairing_offer", family=FAMILY, expected=("blocked", "replay"))
def replay_pairing_offer(seed: int | None = None) -> Outcome:
    """Replay entity A's signed offer to B after the exchange, and into a second pairing."""
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    binding_id = pack.records[1].binding_id
    cert = dep.controller.issue_pairing(binding_id)
    pid = cert.metadata.pairing_id
    dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    offer_a = dep.pack.pairing_start(pid)
    offer_b = module.pairing_offer(pid, offer_a)
    assert offer_b is not None
    reasons = [attempt(lambda: module.pairing_offer(pid, offer_a))]  # same session, again
    # A second pairing of the same binding: the old offer is validly signed but names the old pairing.
    cert2 = dep.controller.issue_pairing(binding_id)
    pid2 = cert2.metadata.pairing_id
    module.accept_certificate(cert2.encode())
    reasons.append(attempt(lambda: module.pairing_offer(pid2, offer_a)))
    counters = counted("module.rejections", module.rejections)
    pack.close()
    return judge(
        reasons, Reason.REPLAY, counters, detail="answered sessions are remembered; other pairing: wrong_session"
    )


@scenario("replay_pairing_completion", family=FAMILY, expected=("blocked", "replay"))
def replay_pairing_completion(seed: int | None = None) -> Outcome:
    """Send an accepted completion proof to the controller's callback again."""
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    cert = pack.issue_pairing(1, max_uses=3)
    pid = cert.metadata.pairing_id
    a = dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    dep.pack.pairing_offer(pid, module.pairing_offer(pid, dep.pack.pairing_start(pid)) or b"")
    assert a.completion is not None
    dep.controller.complete_pairing(a.completion)
    size = dep.ledger.size
    reasons = [attempt(lambda: dep.controller.complete_pairing(a.completion)) for _ in range(3)]  # type: ignore[arg-type]
    counters = counted("controller.rejections", dep.controller.rejections)
    counters["ledger_entries_added"] = dep.ledger.size - size
    pack.close()
    return judge(reasons, Reason.REPLAY, counters, detail="session nonces are recorded per pairing")


def _replay_can(
    seed: int | None, tier: Tier, cls: MessageClass, payload: bytes, protocol: ProtocolProfile = DEFAULT_PROFILE
) -> Outcome:
    reasons = []
    counters: dict[str, int] = {}
    for profile in (CLASSIC, FD):
        pack = paired_pack(seed, profile=protocol)  # one bus per deployment: a channel lives on one profile
        tx, rx = pack.link(1, "pack", profile=profile), pack.link(1, "module", profile=profile)
        pdu = tx.send(cls, payload, tier=tier)
        whole = not pdu.single_frame
        rx.receive(pdu.can_id, pdu.data, reassembled=whole)
        reasons += [attempt(lambda p=pdu, w=whole, r=rx: r.receive(p.can_id, p.data, reassembled=w)) for _ in range(3)]
        # Older frames pushed behind the window are stale, not accepted again.
        old = [tx.send(cls, payload, tier=tier) for _ in range(40)]
        for p in old:
            rx.receive(p.can_id, p.data, reassembled=not p.single_frame)
        reasons.append(attempt(lambda p=old[0], r=rx: r.receive(p.can_id, p.data, reassembled=not p.single_frame)))
        counters.update(counted(f"{profile.name}.module_link.rejects", rx.rejects))
        pack.close()
    return judge(reasons, Reason.REPLAY, counters, detail=f"{tier.label} tier: freshness window per tier and direction")


@scenario("replay_can_exchange", family=FAMILY, expected=("blocked", "replay"))
def replay_can_exchange(seed: int | None = None) -> Outcome:
    """Replay a captured exchange-tier telemetry frame (classic and FD)."""
    return _replay_can(seed, Tier.EXCHANGE, MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")


@scenario("replay_can_pairing", family=FAMILY, expected=("blocked", "replay"))
def replay_can_pairing(seed: int | None = None) -> Outcome:
    """Replay a captured pairing-tier charge command (classic and FD)."""
    return _replay_can(seed, Tier.PAIRING, MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")


@scenario("replay_can_binding", family=FAMILY, expected=("blocked", "replay"), profiles=("seed", "efficient"))
def replay_can_binding(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """Replay a captured binding-tier announce unit (classic and FD; signed, or sealed under the binding MAC)."""
    return _replay_can(seed, Tier.BINDING, MessageClass.IDENTITY, b"announce", profile)


@scenario("replay_validation", family=FAMILY, expected=("blocked", "replay"), profiles=("seed", "efficient"))
def replay_validation(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """Replay validation messages of every level (1-7) and a signed escalation.

    Every level's machines are the ones the levels run on (:class:`~modbatt.nodes.validation.ValidationContext`).
    """
    pack = paired_pack(seed, profile=profile)
    ctx = pack.validation(1)
    p, m = ctx.side(ctx.pack), ctx.side(ctx.module)
    now = ctx.now()
    sender, executor = ctx.commands()
    _, command = sender.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", now)
    ack = executor.on_command(command, now)
    sender.on_ack(ack, now)
    reasons = [attempt(lambda: executor.on_command(command, now)), attempt(lambda: sender.on_ack(ack, now))]
    gate = EscalationGate({m["device_id"]: p["partner_key"]}, receiver=p["device_id"])
    esc = SignedEscalation.create(
        EscalationRequest(5, EscalationReason.ANOMALY_DETECTED), binding_id=ctx.binding_id, sender=m["device_id"],
        receiver=p["device_id"], seq=1, now=now, key=m["binding_key"],
    )  # fmt: skip
    gate.admit(esc, now)
    reasons.append(attempt(lambda: gate.admit(esc, now + 1)))
    # Level 1 announce, level 3 signed handshake (and its single-use session), level 4 paired handshake.
    announce = ctx.announcer().announce(now)
    l1 = ctx.announce_verifier()
    l1.receive(announce, now)
    reasons.append(attempt(lambda: l1.receive(announce, now)))
    ini3, res3 = ctx.signed_handshake()
    hello = ini3.start(now, ttl_s=60, single_use=True)
    finish = ini3.on_reply(res3.on_hello(hello, now), now)
    session = res3.on_finish(finish, now)
    assert ini3.session is not None
    sealed = ini3.session.seal(b"ping", now)
    session.open(sealed, now)
    reasons += [attempt(lambda: res3.on_hello(hello, now)), attempt(lambda: res3.on_finish(finish, now))]
    reasons.append(attempt(lambda: session.open(sealed, now)))  # single-use session: exhausted
    ini4, res4 = ctx.paired_handshake()
    challenge = ini4.start(now)
    confirm = ini4.on_response(res4.on_challenge(challenge, now), now)
    res4.on_confirm(confirm, now)
    reasons += [attempt(lambda: res4.on_challenge(challenge, now)), attempt(lambda: res4.on_confirm(confirm, now))]
    # Level 6 pairing validation: the countersigned validation handed to the controller again.
    authority, party = ctx.pairing_validation()
    ch6 = ctx.pairing_validation_challenge(authority, "completion")
    both = party[m["device_id"]].countersign(party[p["device_id"]].sign(ch6, now), now)
    authority.finalize(both, now)
    reasons.append(attempt(lambda: authority.finalize(both, now)))
    # Level 2: the witness request played to the witness again.
    requester, witness = ctx.witness()
    request = requester.request(
        witness=m["device_id"], witness_key=p["partner_key"], event="state_change", details={"state": "active"},
        now=now,
    )  # fmt: skip
    requester.on_ack(witness.on_request(request, now), now)
    reasons.append(attempt(lambda: witness.on_request(request, now)))
    l7 = _level7_replay(ctx)
    reasons.append(l7[0])
    counters = {
        **l7[1],
        **counted("l2_witness.rejections", witness.rejections),
        **counted("l6_authority.rejections", authority.rejections),
        **counted("l1_verifier.rejections", l1.rejections),
        **counted("l3_responder.rejections", res3.rejections),
        **counted("l3_session.rejections", session.rejections),
        **counted("l4_responder.rejections", res4.rejections),
        **counted("l5_executor.rejections", executor.rejections),
        **counted("l5_sender.rejections", sender.rejections),
        **counted("escalation_gate.rejections", gate.rejections),
    }
    pack.close()
    return judge(reasons, Reason.REPLAY, counters, detail="sequence guards per sender and stream")


@scenario("replay_pairing_offer_next_session", family=FAMILY, expected=("blocked", "replay"))
def replay_pairing_offer_next_session(seed: int | None = None) -> Outcome:
    """Replay A's offer of session 1 to B in session 2 of a multi-use blind pairing.

    Without a session-nonce memory B accepts it (validly signed, same pairing), derives secrets
    from A's *old* ephemeral key that nobody can match, overwrites its working secrets and burns
    a use: a one-shot replay that breaks the link after the attacker has gone (worse than dropping).
    """
    pack = paired_pack(seed, pair=False)
    dep, module = pack.dep, pack.module(1)
    cert = pack.issue_pairing(1, mode=ControllerMode.BLIND, max_uses=2)
    pid = cert.metadata.pairing_id
    a = dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    offer_1 = dep.pack.pairing_start(pid)
    dep.pack.pairing_offer(pid, module.pairing_offer(pid, offer_1) or b"")
    assert a.completion is not None
    dep.controller.complete_pairing(a.completion)
    working = module.pairing_secrets(pid)
    # Session 2: both accept again; the attacker holds back A's new offer and plays the old one.
    dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    dep.pack.pairing_start(pid)
    reasons = [attempt(lambda: module.pairing_offer(pid, offer_1))]
    counters = counted("module.rejections", module.rejections)
    counters["module_secrets_intact"] = int(module.pairing_secrets(pid) == working)
    pack.close()
    return judge(reasons, Reason.REPLAY, counters, detail="entity b remembers the session nonces it answered")


@scenario(
    "replay_can_binding_next_pairing", family=FAMILY, profiles=("seed", "efficient"),
    expected={"seed": ("blocked", "bad_signature"), "efficient": ("blocked", "bad_mac")},
)  # fmt: skip
def replay_can_binding_next_pairing(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """Replay binding-tier frames of pairing 1 into the link of pairing 2 of the same binding.

    Binding keys belong to the binding, not to a pairing, and a new pairing's link starts with a
    fresh replay window: without the pairing id in the signature (``seed``), or in the binding MAC
    secret's derivation (``efficient``), frames recorded under the old pairing verified again on
    the new link (FV 0, 1, … look fresh).
    """
    pack = paired_pack(seed, profile=profile)
    tx, rx = pack.link(1, "module"), pack.link(1, "pack")
    recorded = [tx.send(MessageClass.IDENTITY, b"announce %d" % i) for i in range(3)]
    for unit in recorded:
        rx.receive(unit.can_id, unit.data, reassembled=True)
    # The same binding is paired again (a new context, or after the first pairing expired).
    pack.pairings[1] = pair_entities(
        pack.dep.controller, pack.dep.pack, pack.module(1), pack.records[1].binding_id, profile=profile
    )
    fresh = pack.link(1, "pack")
    reasons = [attempt(lambda u=u: fresh.receive(u.can_id, u.data, reassembled=True)) for u in recorded]
    genuine = pack.link(1, "module").send(MessageClass.IDENTITY, b"announce new")
    fresh.receive(genuine.can_id, genuine.data, reassembled=True)  # the new pairing's own frames verify
    counters = counted("new_pack_link.rejects", fresh.rejects)
    pack.close()
    if profile.binding_mac:
        return judge(reasons, Reason.BAD_MAC, counters, detail="the binding MAC secret is per pairing and session")
    return judge(reasons, Reason.BAD_SIGNATURE, counters, detail="the pairing id is signed into binding-tier frames")


def _level7_replay(ctx: ValidationContext) -> tuple[Reason | None, dict[str, int]]:
    """Level 7: a verified binding-validation bundle (ledger inclusion proof) presented again."""
    l7 = ctx.binding_validation()
    now = ctx.now()
    challenge = l7.verifier.challenge(
        binding_id=ctx.binding_id, subject=l7.subject_node.access_data.device_id, event="verification", now=now
    )
    proof = l7.subject.prove(challenge, now)
    attestation = l7.attestor.attest(proof, now)
    l7.authority.check(proof, attestation, ctx.record)
    ledger = ctx.controller.ledger
    sth = ledger.signed_tree_head()
    index = ctx.binding_record_index()
    bundle = l7.authority.bundle(
        entity_proof=proof, lct_attestation=attestation, record_entry=ledger.entry(index), record_index=index,
        audit_path=ledger.inclusion_proof(index, sth.tree_size), sth=sth, status="active", statement_index=index,
        now=now,
    )  # fmt: skip
    l7.verifier.verify(bundle, now)
    return attempt(lambda: l7.verifier.verify(bundle, now)), counted("l7_verifier.rejections", l7.verifier.rejections)
