"""Replay at every level and tier: binding requests, pairing offers and completions, CAN frames at
the exchange, pairing and binding tiers (classic and FD), validation commands and escalations.

Each scenario records a genuine message, lets it be accepted once, then plays it again. The
defences are the ones the design names: request ids with a ±300 s window (binding), session state
and session nonces (pairing), freshness windows (CAN, per tier and direction), sequence guards
(validation levels, escalation).
"""

from __future__ import annotations

from ..can.wiretime import CLASSIC, FD
from ..crypto.suite import PrivateKey
from ..encoding import strict_loads
from ..errors import Reason
from ..model.pairing import ControllerMode
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import pair_entities
from ..protocol.binding import CLOCK_SKEW_SECONDS
from ..protocol.validation import (
    Announcer,
    AnnounceVerifier,
    BindingKeyRef,
    BindingValidationAuthority,
    BindingValidationSubject,
    BindingValidationVerifier,
    CommandExecutor,
    CommandSender,
    EscalationGate,
    EscalationReason,
    EscalationRequest,
    LctAttestor,
    PairedHandshakeInitiator,
    PairedHandshakeResponder,
    PairingValidationAuthority,
    PairingValidationParty,
    SignedEscalation,
    SignedHandshakeInitiator,
    SignedHandshakeResponder,
    WitnessRequester,
    WitnessService,
)
from ._world import Pack, paired_pack, tap
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
    cert = dep.controller.issue_pairing(pack.records[1].binding_id, max_uses=3)
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
    """Replay validation messages of every level (1-7) and a signed escalation."""
    pack = paired_pack(seed, profile=profile)
    dep, module = pack.dep, pack.module(1)
    binding_id, pid = pack.records[1].binding_id, pack.pairing_id(1)
    p_state, m_state = dep.pack.binding(binding_id), module.binding(binding_id)
    assert p_state is not None and m_state is not None and p_state.partner_key and m_state.partner_key
    p_sec, m_sec = dep.pack.pairing_secrets(pid), module.pairing_secrets(pid)
    assert p_sec is not None and m_sec is not None
    expires = dep.controller.pending_pairing(pid).expires_at
    p_id, m_id = dep.pack.access_data.device_id, module.access_data.device_id
    sender = CommandSender(
        secrets=p_sec, device_id=p_id, partner_id=m_id, binding_key=p_state.private_key,
        partner_key=p_state.partner_key, expires_at=expires, rng=dep.rng,
    )  # fmt: skip
    executor = CommandExecutor(
        secrets=m_sec, device_id=m_id, partner_id=p_id, binding_key=m_state.private_key,
        partner_key=m_state.partner_key, expires_at=expires,
    )  # fmt: skip
    now = dep.clock()
    _, command = sender.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", now)
    ack = executor.on_command(command, now)
    sender.on_ack(ack, now)
    reasons = [attempt(lambda: executor.on_command(command, now)), attempt(lambda: sender.on_ack(ack, now))]
    gate = EscalationGate({m_id: p_state.partner_key}, receiver=p_id)
    esc = SignedEscalation.create(
        EscalationRequest(5, EscalationReason.ANOMALY_DETECTED), binding_id=binding_id, sender=m_id, receiver=p_id,
        seq=1, now=now, key=m_state.private_key,
    )  # fmt: skip
    gate.admit(esc, now)
    reasons.append(attempt(lambda: gate.admit(esc, now + 1)))
    # Level 1 announce, level 3 signed handshake (and its single-use session), level 4 paired handshake.
    announcer = Announcer(binding_id=binding_id, access_data=module.access_data, binding_key=m_state.private_key)
    announce = announcer.announce(now)
    l1 = AnnounceVerifier([BindingKeyRef(binding_id, m_id, p_state.partner_key)])
    l1.receive(announce, now)
    reasons.append(attempt(lambda: l1.receive(announce, now)))
    ini3 = SignedHandshakeInitiator(
        device_id=p_id, binding_key=p_state.private_key, partner_id=m_id, partner_key=p_state.partner_key,
        binding_id=binding_id, rng=dep.rng, secrets=p_sec,
    )  # fmt: skip
    res3 = SignedHandshakeResponder(
        device_id=m_id, binding_key=m_state.private_key, partner_id=p_id, partner_key=m_state.partner_key,
        binding_id=binding_id, rng=dep.rng, secrets=m_sec,
    )  # fmt: skip
    hello = ini3.start(now, ttl_s=60, single_use=True)
    finish = ini3.on_reply(res3.on_hello(hello, now), now)
    session = res3.on_finish(finish, now)
    assert ini3.session is not None
    sealed = ini3.session.seal(b"ping", now)
    session.open(sealed, now)
    reasons += [attempt(lambda: res3.on_hello(hello, now)), attempt(lambda: res3.on_finish(finish, now))]
    reasons.append(attempt(lambda: session.open(sealed, now)))  # single-use session: exhausted
    ini4 = PairedHandshakeInitiator(secrets=p_sec, device_id=p_id, partner_id=m_id, rng=dep.rng)
    res4 = PairedHandshakeResponder(secrets=m_sec, device_id=m_id, partner_id=p_id, rng=dep.rng)
    challenge = ini4.start(now)
    confirm = ini4.on_response(res4.on_challenge(challenge, now), now)
    res4.on_confirm(confirm, now)
    reasons += [attempt(lambda: res4.on_challenge(challenge, now)), attempt(lambda: res4.on_confirm(confirm, now))]
    # Level 6 pairing validation: the countersigned validation handed to the controller again.
    record = pack.records[1]
    keys = {e.access_data.device_id: e.semi_public_key for e in (record.entity_a, record.entity_b)}
    authority = PairingValidationAuthority(controller_key=dep.controller.controller_key, rng=dep.rng)
    party = {
        d: PairingValidationParty(
            secrets=sec,
            device_id=d,
            partner_id=other,
            binding_key=st.private_key,
            partner_key=st.partner_key,
            controller_key=dep.controller.public_key,
        )
        for d, other, sec, st in ((p_id, m_id, p_sec, p_state), (m_id, p_id, m_sec, m_state))
    }
    ch6 = authority.challenge(
        pairing_id=pid, binding_id=binding_id, entities=keys, event="completion", now=now, changes=None
    )
    both = party[m_id].countersign(party[p_id].sign(ch6, now), now)
    authority.finalize(both, now)
    reasons.append(attempt(lambda: authority.finalize(both, now)))
    # Level 2: the witness request played to the witness again.
    requester = WitnessRequester(binding_id=binding_id, device_id=p_id, binding_key=p_state.private_key, rng=dep.rng)
    witness = WitnessService(
        witness_id=m_id, signing_key=m_state.private_key, requesters={(binding_id, p_id): m_state.partner_key}
    )
    request = requester.request(
        witness=m_id, witness_key=p_state.partner_key, event="state_change", details={"state": "active"}, now=now
    )
    requester.on_ack(witness.on_request(request, now), now)
    reasons.append(attempt(lambda: witness.on_request(request, now)))
    l7 = _level7_replay(pack)
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
    cert = dep.controller.issue_pairing(pack.records[1].binding_id, mode=ControllerMode.BLIND, max_uses=2)
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


def _level7_replay(pack: Pack) -> tuple[Reason | None, dict[str, int]]:
    """Level 7: a verified binding-validation bundle (ledger inclusion proof) presented again."""
    dep, module = pack.dep, pack.module(1)
    binding_id, record = pack.records[1].binding_id, pack.records[1]
    lct = dep.pack.access_data.bound_lct
    assert lct is not None
    state = dep.pack.binding(binding_id)
    assert state is not None
    lct_key = PrivateKey.generate(dep.rng)  # the LCT custodian's key, pinned out of band
    pinned = {lct.lct_id: lct_key.public_key}
    verifier = BindingValidationVerifier(
        verifier_id=module.access_data.device_id, controller_key=dep.controller.public_key, lct_keys=pinned,
        rng=dep.rng,
    )  # fmt: skip
    subject = BindingValidationSubject(
        binding_id=binding_id, device_id=dep.pack.access_data.device_id, binding_key=state.private_key
    )
    authority = BindingValidationAuthority(controller_key=dep.controller.controller_key, lct_keys=pinned)
    now = dep.clock()
    challenge = verifier.challenge(binding_id=binding_id, subject=dep.pack.access_data.device_id, event="verification",
                                   now=now)  # fmt: skip
    proof = subject.prove(challenge, now)
    attestation = LctAttestor(lct_id=lct.lct_id, key=lct_key).attest(proof, now)
    authority.check(proof, attestation, record)
    ledger = dep.ledger
    sth = ledger.signed_tree_head()
    index = next(i for i in range(ledger.size) if strict_loads(ledger.entry(i)).get("binding_id") == binding_id)
    bundle = authority.bundle(
        entity_proof=proof, lct_attestation=attestation, record_entry=ledger.entry(index), record_index=index,
        audit_path=ledger.inclusion_proof(index, sth.tree_size), sth=sth, status="active", statement_index=index,
        now=now,
    )  # fmt: skip
    verifier.verify(bundle, now)
    return attempt(lambda: verifier.verify(bundle, now)), counted("l7_verifier.rejections", verifier.rejections)
