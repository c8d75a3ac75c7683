"""Insiders: escalation abuse, a compromised controller (standard and blind mode), a cloned or
compromised module, and a revoked module trying to rejoin.

A compromised controller can read traffic only in standard mode, and only if it kept the pairing
key it was meant to erase — the documented limit of the seed's design (docs/pairing.md, "What a
compromised controller can read"); blind mode closes it. A cloned module holds one module's keys:
it speaks for that module (until it is revoked) and for nobody else.
"""

from __future__ import annotations

from ..can.ids import SEED_LAYOUT
from ..can.secured import Direction, SecuredReceiver, SecuredSender, derive_traffic_keys
from ..crypto.freshness import FreshnessCounter, MemoryCounterStore
from ..crypto.suite import PrivateKey
from ..errors import Reason
from ..model.pairing import ControllerMode
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import pair_entities
from ..protocol.pairing import EXCHANGE_KEY_BYTES, PAIRING_KEY_BYTES, CompletionProof, derive_session_secrets
from ..protocol.validation import EscalationGate, EscalationReason, EscalationRequest, SignedEscalation
from ..workbench.controller_modes import RecordingRandom
from ._world import Pack, forged_sender, paired_pack
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

FAMILY = "insider"


@scenario("escalation_abuse", family=FAMILY, expected=("blocked", "rate_limited"))
def escalation_abuse(seed: int | None = None) -> Outcome:
    """Flood valid escalations past the rate limit, forge one, and claim to be an unknown sender."""
    pack = paired_pack(seed)
    module, binding_id = pack.module(1), pack.records[1].binding_id
    p_state, m_state = pack.dep.pack.binding(binding_id), module.binding(binding_id)
    assert p_state is not None and m_state is not None and p_state.partner_key is not None
    m_id = module.access_data.device_id
    p_id = pack.dep.pack.access_data.device_id
    gate = EscalationGate({m_id: p_state.partner_key}, receiver=p_id)
    now = pack.dep.clock()
    request = EscalationRequest(7, EscalationReason.SECURITY_THREAT)

    def esc(seq: int, key: PrivateKey = m_state.private_key, sender: str = m_id) -> SignedEscalation:
        return SignedEscalation.create(
            request, binding_id=binding_id, sender=sender, receiver=p_id, seq=seq, now=now, key=key
        )

    admitted = sum(attempt(lambda s=s: gate.admit(esc(s), now)) is None for s in range(gate.burst))
    reasons = [attempt(lambda s=s: gate.admit(esc(s), now)) for s in range(gate.burst, gate.burst + 20)]
    reasons.append(attempt(lambda: gate.admit(esc(100, PrivateKey.generate(pack.dep.rng)), now)))
    reasons.append(attempt(lambda: gate.admit(esc(101, sender="module-99"), now)))
    counters = counted("escalation_gate.rejections", gate.rejections)
    counters["admitted"] = admitted
    pack.close()
    if admitted != gate.burst:
        return Outcome("succeeded", "accepted", counters, "the burst was not honoured")
    return judge(reasons, Reason.RATE_LIMITED, counters, detail=f"burst {gate.burst}, one per {gate.refill_s:.0f} s")


def _controller_attack(
    seed: int | None, mode: ControllerMode, profile: ProtocolProfile
) -> tuple[bool, bool, dict[str, int]]:
    """The controller kept everything its randomness produced; can it read and forge link traffic?

    Returns whether it read and forged traffic of *some* tier; the counters say which tiers.
    """
    pack = paired_pack(seed, pair=False, profile=profile)
    dep, module = pack.dep, pack.module(1)
    spy = RecordingRandom(dep.rng)
    dep.controller._rng = spy  # the attacker's view of the compromised controller's memory
    out = pair_entities(dep.controller, dep.pack, module, pack.records[1].binding_id, mode=mode, profile=profile)
    pack.pairings[1] = out
    pid = out.certificate.metadata.pairing_id
    pairing_key = next(v for v in spy.seen if len(v) == PAIRING_KEY_BYTES)
    exchange_key = spy.seen[spy.seen.index(pairing_key) + 1]
    assert len(exchange_key) == EXCHANGE_KEY_BYTES
    # The controller relayed both offers, so it knows the session transcript (it is public).
    pairing_secret, exchange_secret = derive_session_secrets(
        pairing_key, exchange_key, pairing_id=pid, transcript=out.transcript
    )
    guessed = {Tier.PAIRING: pairing_secret, Tier.EXCHANGE: exchange_secret}
    pack_link, module_link = pack.link(1, "pack"), pack.link(1, "module")
    reads = forges = False
    counters: dict[str, int] = {}
    for tier, cls in ((Tier.PAIRING, MessageClass.CHARGE_COMMAND), (Tier.EXCHANGE, MessageClass.VOLTAGE_TELEMETRY)):
        captured = pack_link.send(cls, b"\x01\x00\x64")
        eavesdropper = SecuredReceiver(
            SEED_LAYOUT, pack_link.profile, derive_traffic_keys(guessed[tier], tier, Direction.INITIATOR_TO_RESPONDER)
        )
        read = attempt(lambda c=captured, e=eavesdropper: e.open(c.can_id, c.data)) is None
        counters.update(counted(f"eavesdropper_{tier.label}.rejects", eavesdropper.rejects))
        forger = SecuredSender(
            SEED_LAYOUT,
            pack_link.profile,
            derive_traffic_keys(guessed[tier], tier, Direction.INITIATOR_TO_RESPONDER),
            # The attacker's own counter, ahead of the pack's so the module has not seen its values.
            FreshnessCounter(MemoryCounterStore(10)),
        )
        fields = SEED_LAYOUT.decode(captured.can_id)
        forged = forger.protect(fields, b"\x01\x00\xff")
        forged_ok = attempt(lambda f=forged: module_link.receive(f.can_id, f.data)) is None
        counters[f"reads_{tier.label}"], counters[f"forges_{tier.label}"] = int(read), int(forged_ok)
        reads, forges = reads or read, forges or forged_ok
    # In both modes and profiles: the controller cannot forge a binding-tier frame or a completion
    # (no binding private key: no signature, and no static ECDH for the binding MAC secret).
    fake = PrivateKey.generate(dep.rng)
    session = dep.pack.pairing_secrets(pid)
    assert session is not None
    bind_sender = forged_sender(
        session, Tier.BINDING, profile=pack_link.profile, signer=fake, secret=pairing_secret, start=10_000
    )
    unit = bind_sender.protect(SEED_LAYOUT.decode(pack_link.send(MessageClass.IDENTITY, b"x").can_id), b"x")
    counters["binding_tier_forged"] = int(
        attempt(lambda: module_link.receive(unit.can_id, unit.data, reassembled=True)) is None
    )
    counters.update(counted("module_link.rejects", module_link.rejects))
    counters.update(reads_traffic=int(reads), forges_traffic=int(forges))
    pack.close()
    return reads, forges, counters


@scenario(
    "compromised_controller_standard", family=FAMILY, expected=("limit", "standard_mode_controller"),
    profiles=("seed", "efficient"),
)  # fmt: skip
def compromised_controller_standard(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """A standard-mode controller that failed to erase the pairing key reads and forges link traffic."""
    reads, forges, counters = _controller_attack(seed, ControllerMode.STANDARD, profile)
    if counters["binding_tier_forged"]:
        return Outcome("succeeded", "accepted", counters, "the controller forged a binding-tier frame")
    if profile.binding_mac and (counters["reads_pairing"] or counters["forges_pairing"]):
        return Outcome("succeeded", "accepted", counters, "the pairing tier is bound to the binding in efficient")
    if reads and forges:
        tiers = "the exchange tier only (the pairing tier is bound to the binding)" if profile.binding_mac else (
            "the exchange and pairing tiers"
        )
        return Outcome(
            "limit", "standard_mode_controller", counters,
            f"documented: in standard mode the seed trusts the controller to erase the pairing key "
            f"(docs/pairing.md); it reads and forges {tiers}; binding-tier frames and completions stay out "
            "of reach; use blind mode",
        )  # fmt: skip
    return Outcome("blocked", Reason.BAD_MAC.value, counters, "standard mode unexpectedly resisted")


@scenario(
    "compromised_controller_blind", family=FAMILY, expected=("blocked", "bad_mac"), profiles=("seed", "efficient")
)
def compromised_controller_blind(seed: int | None = None, *, profile: ProtocolProfile = DEFAULT_PROFILE) -> Outcome:
    """The same controller in blind mode: its derived keys fail every tag."""
    reads, forges, counters = _controller_attack(seed, ControllerMode.BLIND, profile)
    if reads or forges or counters["binding_tier_forged"]:
        return Outcome("succeeded", "accepted", counters, "a blind-mode controller read or forged traffic")
    return Outcome("blocked", Reason.BAD_MAC.value, counters, "secrets need the entities' ECDH contribution")


@scenario("cloned_module", family=FAMILY, expected=("blocked", "bad_mac"))
def cloned_module(seed: int | None = None) -> Outcome:
    """Module 1's keys are cloned: try to reach module 2's pairing, certificate and completion; 3 modules."""
    pack = paired_pack(seed, modules=3)
    dep = pack.dep
    clone_store = pack.module(1)  # the attacker holds everything module 1's key store holds
    reasons = []
    counters: dict[str, int] = {}
    # CAN: frames for modules 2 and 3 made with module 1's secrets, stamped with their node ids.
    clone_link = pack.link(1, "module")
    victims = {v: (pack.link(v, "pack"), pack.link(v, "module")) for v in (2, 3)}
    for victim, (victim_pack_link, victim_module_link) in victims.items():
        pdu = clone_link.send(MessageClass.CRITICAL_TELEMETRY, b"\x01\x02\x03")
        up_id = (pdu.can_id & ~0xFF) | victim
        reasons.append(attempt(lambda p=pdu, r=victim_pack_link, i=up_id: r.receive(i, p.data)))
        cmd = pack.link(1, "pack").send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")
        down_id = (cmd.can_id & ~0xFF) | victim
        reasons.append(attempt(lambda c=cmd, r=victim_module_link, i=down_id: r.receive(i, c.data)))
    # Pairing: module 2's next certificate is sealed to module 2's binding key, which the clone lacks.
    cert2 = dep.controller.issue_pairing(pack.records[2].binding_id)
    reasons.append(attempt(lambda: clone_store.accept_certificate(cert2.encode())))
    # Completion for module 2's pairing signed with module 1's binding key.
    m1_key = clone_store.binding(pack.records[1].binding_id)
    assert m1_key is not None
    forged = CompletionProof(cert2.metadata.pairing_id, bytes(16), bytes(16), {"a": bytes(64), "b": bytes(64)})
    reasons.append(attempt(lambda: dep.controller.complete_pairing(forged)))
    # Others unaffected: modules 2 and 3 still talk to the pack.
    unaffected = 0
    for other in (2, 3):
        tx, rx = pack.link(other, "module"), pack.link(other, "pack")
        pdu = tx.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
        unaffected += int(rx.receive(pdu.can_id, pdu.data).payload == b"\x0c\x80")
    # The clone's own pairing works until it is revoked: the documented blast radius.
    own_tx, own_rx = pack.link(1, "module"), pack.link(1, "pack")
    own = own_tx.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    own_rx.receive(own.can_id, own.data)
    for victim, (victim_pack_link, victim_module_link) in victims.items():
        counters.update(counted(f"pack_link_{victim}.rejects", victim_pack_link.rejects))
        counters.update(counted(f"module_{victim}_link.rejects", victim_module_link.rejects))
    counters |= {
        "others_unaffected": unaffected,
        "own_pairing_usable": 1,
        **counted("module_1.rejections", clone_store.rejections),
        **counted("controller.rejections", dep.controller.rejections),
    }
    pack.close()
    return judge(reasons, Reason.BAD_MAC, counters, detail="blast radius: its own pairings only")


@scenario("revoked_module_rejoin", family=FAMILY, expected=("blocked", "revoked"))
def revoked_module_rejoin(seed: int | None = None) -> Outcome:
    """A replaced module, its binding revoked, tries to come back by binding and by pairing."""
    pack = Pack(InMemoryDeployment(seed=seed, modules=2))
    dep, module = pack.dep, pack.module(1)
    grant = dep.authorize(dep.pack, module)  # the authority's grant that first bound module 1
    for node_id in (1, 2):
        auth = grant if node_id == 1 else dep.authorize(dep.pack, pack.module(2))
        pack.records[node_id] = dep.controller.bind(dep.pack.access_data, pack.module(node_id).access_data, auth).record
        pack.pairings[node_id] = pair_entities(
            dep.controller, dep.pack, pack.module(node_id), pack.records[node_id].binding_id
        )
    binding_id = pack.records[1].binding_id
    cert = dep.controller.issue_pairing(binding_id, max_uses=2)
    dep.clock.advance(60)
    dep.controller.revoke(binding_id, "module replaced")
    reasons = [
        attempt(lambda: dep.controller.issue_pairing(binding_id)),  # a new pairing on the revoked binding
        attempt(lambda: module.accept_certificate(cert.encode())),  # a certificate issued before revocation
        attempt(lambda: dep.controller.revoke(binding_id)),
        # Re-binding with the grant that first bound it, still inside its validity window.
        attempt(lambda: dep.controller.bind(dep.pack.access_data, module.access_data, grant)),
    ]
    # The old pairing's frames: the pack erased those secrets when the binding was revoked.
    erased = int(dep.pack.pairing_secrets(pack.pairing_id(1)) is None)
    other = pack.link(2, "module").send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    pack.link(2, "pack").receive(other.can_id, other.data)
    counters = {
        **counted("controller.rejections", dep.controller.rejections),
        **counted("module.rejections", module.rejections),
        "pack_secrets_erased": erased,
    }
    pack.close()
    return judge(reasons, Reason.REVOKED, counters, detail="revocation is authoritative in the ledger and key stores")
