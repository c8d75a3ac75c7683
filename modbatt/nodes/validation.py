"""Run the validation hierarchy (levels 1-7) and escalation between real nodes, in process.

This is wiring only (docs/architecture.md, Layers): the rules live in :mod:`modbatt.protocol.validation`;
each level's machines are built from what the nodes hold (binding keys, partner keys, pairing
secrets, the controller's records and ledger) by :class:`ValidationContext`
(:mod:`modbatt.nodes.validation_context`); here the bytes are carried between them, ledger
statements are appended for the levels that need a permanent record (2, 6, 7, escalations),
and every step goes to the :class:`~modbatt.nodes.audit.EventLog`.

Entry points for the workbench (``modbatt demo --json``) and notebooks:

* :func:`run_all_levels` → ``{"1": {"outcome": "ok", "messages": …, "bytes": …, "can_frames": …}, …}``
* :func:`run_escalation_scenario` → the list of escalation events (accepted, rejected, de-escalated)

Names kept importable from here: :class:`~modbatt.nodes.escalation.EscalationReceiver` (a node's escalation intake),
:class:`~modbatt.nodes.discovery.Discovery` (the controller's discovery of a module from its L1
announce) and :class:`~modbatt.nodes.services.ValidationService` (an entity's validation endpoint).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..crypto.rng import RandomSource
from ..crypto.suite import PrivateKey
from ..errors import VerificationError
from ..model.policy import MessageClass
from ..model.tier import Tier
from ..protocol.validation import (
    AnnounceVerifier,
    BindingKeyRef,
    EscalationPolicy,
    EscalationReason,
    EscalationRequest,
    SignedEscalation,
    Urgency,
)
from ..transport.canbus import BusConfig
from .audit import EventLog, json_safe
from .controller import AuthController
from .discovery import Discovery
from .entity import EntityNode
from .escalation import EscalationReceiver
from .link import node_id_of
from .services import ValidationService
from .validation_context import (
    ANNOUNCE_BROADCAST,
    CHANNEL,
    IN_PROCESS,
    ISOTP,
    WITNESS_BROADCAST,
    Carrier,
    ValidationContext,
    can_frames,
)

__all__ = [
    "LEVELS",
    "Discovery",
    "EscalationReceiver",
    "ValidationContext",
    "ValidationService",
    "can_frames",
    "run_all_levels",
    "run_escalation_scenario",
    "run_level",
]


def _summary(messages: list[bytes], **extra: Any) -> dict[str, Any]:
    sizes = [len(m) for m in messages]
    return {"outcome": "ok", "messages": len(sizes), "bytes": sizes, "can_frames": can_frames(sizes), **extra}


def level1(ctx: ValidationContext) -> dict[str, Any]:
    """Module announces; the pack (partner) and the controller verify it."""
    data = ctx.carry(ctx.module, ctx.pack, ctx.announcer().announce(ctx.now()), ANNOUNCE_BROADCAST, "announce")
    msg = ctx.announce_verifier().receive(data, ctx.now())
    # The controller holds both semi-public keys of the binding (its record).
    controller = AnnounceVerifier(
        [BindingKeyRef(ctx.binding_id, e.access_data.device_id, e.semi_public_key) for e in ctx.entities()]
    )
    controller.receive(data, ctx.now())
    return _summary([data], sender=msg.sender, verified_by=["partner", "controller"])


def level2(ctx: ValidationContext) -> dict[str, Any]:
    """The pack asks the module to witness an event; the controller records the witnessed pair."""
    p, m = ctx.side(ctx.pack), ctx.side(ctx.module)
    requester, witness = ctx.witness()
    req = requester.request(
        witness=m["device_id"],
        witness_key=p["partner_key"],
        event="state_change",
        details={"state": "active"},
        now=ctx.now(),
    )
    req = ctx.carry(ctx.pack, ctx.module, req, WITNESS_BROADCAST, "witness request")
    ack = ctx.carry(ctx.module, ctx.pack, witness.on_request(req, ctx.now()), WITNESS_BROADCAST, "witness ack")
    witnessed = requester.on_ack(ack, ctx.now())
    # The controller re-checks both signatures with the keys it recorded before it records the event.
    witnessed.verify(
        ctx.record.entity(p["device_id"]).semi_public_key, ctx.record.entity(m["device_id"]).semi_public_key
    )
    index = ctx.record_statement("validation", witnessed.to_record())
    return _summary([req, ack], ledger_index=index, witness=m["device_id"])


def level3(ctx: ValidationContext) -> dict[str, Any]:
    """Signed handshake, then one message each way in the single-use session.

    ``seed``: binding-key signatures, ephemeral keys made as the handshake runs. ``efficient``: the
    binding MAC of the pairing session, ephemeral keys taken from the pools :meth:`ValidationContext.idle`
    filled beforehand, off the critical path (:func:`run_level` lets the devices idle first).
    """
    ini, res = ctx.signed_handshake()
    pack, module = ctx.pack, ctx.module
    hello = ctx.carry(pack, module, ini.start(ctx.now(), ttl_s=60, single_use=True), ISOTP, "hello")
    reply = ctx.carry(module, pack, res.on_hello(hello, ctx.now()), ISOTP, "reply")
    finish = ctx.carry(pack, module, ini.on_reply(reply, ctx.now()), ISOTP, "finish")
    session = res.on_finish(finish, ctx.now())
    assert ini.session is not None
    ping = ctx.carry(pack, module, ini.session.seal(b"ping", ctx.now()), ISOTP, "session message")
    session.open(ping, ctx.now())
    pong = ctx.carry(module, pack, session.seal(b"pong", ctx.now()), ISOTP, "session message")
    ini.session.open(pong, ctx.now())
    misses = sum(pool.misses for pool in ctx.ephemerals.values()) if ctx.ephemerals else 0
    return _summary(
        [hello, reply, finish], session_messages=[len(ping), len(pong)], single_use=True, ttl_s=60,
        authenticator=ini.authenticator, ephemeral_keys="precomputed" if ctx.ephemerals else "per handshake",
        pool_misses=misses,
    )  # fmt: skip


def level4(ctx: ValidationContext) -> dict[str, Any]:
    """Paired handshake under the pairing secret, re-establishing a session with fresh keys."""
    ini, res = ctx.paired_handshake()
    pack, module = ctx.pack, ctx.module
    challenge = ctx.carry(pack, module, ini.start(ctx.now()), CHANNEL, "challenge")
    response = ctx.carry(module, pack, res.on_challenge(challenge, ctx.now()), CHANNEL, "response")
    confirm = ctx.carry(pack, module, ini.on_response(response, ctx.now()), CHANNEL, "confirm")
    session = res.on_confirm(confirm, ctx.now())
    assert ini.session is not None
    sealed = ctx.carry(pack, module, ini.session.seal(b"status?", ctx.now()), CHANNEL, "session message")
    session.open(sealed, ctx.now())
    return _summary([challenge, response, confirm], ttl_s=300)


def level5(ctx: ValidationContext) -> dict[str, Any]:
    """A charge command at L5 and its signed acknowledgement."""
    sender, executor = ctx.commands()
    _, command = sender.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", ctx.now())
    command = ctx.carry(ctx.pack, ctx.module, command, CHANNEL, "command")
    ack = ctx.carry(ctx.module, ctx.pack, executor.on_command(command, ctx.now()), CHANNEL, "acknowledgement")
    outcome = sender.on_ack(ack, ctx.now())
    return _summary([command, ack], command=outcome.to_dict(), signed=sender.signed)


def level6(ctx: ValidationContext, event: str = "completion", changes: Mapping[str, Any] | None = None) -> dict:
    """Pairing validation: controller challenge, both entities sign, controller records it."""
    p, m = ctx.side(ctx.pack), ctx.side(ctx.module)
    authority, parties = ctx.pairing_validation()
    challenge = ctx.pairing_validation_challenge(authority, event, changes)
    # The controller reaches the pack directly (off the bus); the pack's signature crosses the bus.
    signed = ctx.carry(ctx.pack, ctx.module, parties[p["device_id"]].sign(challenge, ctx.now()), ISOTP, "signed")
    countersigned = parties[m["device_id"]].countersign(signed, ctx.now())
    countersigned = ctx.carry(ctx.module, "controller", countersigned, ISOTP, "countersigned")
    fields = authority.finalize(countersigned, ctx.now())
    index = ctx.record_statement("validation", fields)
    receipt = ctx.controller.ledger.entry(index)
    for node, party in ((ctx.pack, parties[p["device_id"]]), (ctx.module, parties[m["device_id"]])):
        party.accept_receipt(ctx.carry("controller", node, receipt, ISOTP, "receipt"), challenge)
    if event == "revocation":
        notice = ctx.controller.revoke_pairing(ctx.pairing_id, "level-6 revocation")
        for node in (ctx.pack, ctx.module):
            node.apply_pairing_revocation(notice)
    partner_check = "signature and MAC" if parties[m["device_id"]].checks_partner_signature else "MAC"
    return _summary(
        [challenge, signed, countersigned, receipt], ledger_index=index, event=event, partner_check=partner_check
    )


def level7(ctx: ValidationContext, event: str = "verification") -> dict[str, Any]:
    """Binding validation of the entity with a bound LCT, checked by the partner offline."""
    l7 = ctx.binding_validation()
    subject_node, verifier_node, verifier = l7.subject_node, l7.verifier_node, l7.verifier
    challenge = verifier.challenge(
        binding_id=ctx.binding_id, subject=subject_node.access_data.device_id, event=event, now=ctx.now()
    )
    challenge = ctx.carry(verifier_node, subject_node, challenge, ISOTP, "challenge")
    # The proof goes to the LCT's custodian and the controller, both behind the pack's gateway.
    proof = ctx.carry(subject_node, "controller", l7.subject.prove(challenge, ctx.now()), ISOTP, "proof")
    attestation = l7.attestor.attest(proof, ctx.now())
    fields = l7.authority.check(proof, attestation, ctx.record)
    revoked = ctx.controller.is_revoked(ctx.binding_id)
    statement_index = ctx.record_statement("validation", {**fields, "status": "revoked" if revoked else "active"})
    ledger = ctx.controller.ledger
    sth = ledger.signed_tree_head()
    record_index = ctx.binding_record_index()
    bundle = l7.authority.bundle(
        entity_proof=proof, lct_attestation=attestation, record_entry=ledger.entry(record_index),
        record_index=record_index, audit_path=ledger.inclusion_proof(record_index, sth.tree_size), sth=sth,
        status="revoked" if revoked else "active", statement_index=statement_index, now=ctx.now(),
    )  # fmt: skip
    result = verifier.verify(ctx.carry("controller", verifier_node, bundle, ISOTP, "bundle"), ctx.now())
    if event == "revocation" and not revoked:
        ctx.controller.revoke(ctx.binding_id, "level-7 revocation")
    return _summary([challenge, proof, attestation, bundle], ledger_index=statement_index, **result.to_dict())


#: Level number -> the function that runs it between the context's nodes.
LEVELS: dict[int, Callable[[ValidationContext], dict[str, Any]]] = {
    1: level1, 2: level2, 3: level3, 4: level4, 5: level5, 6: level6, 7: level7,
}  # fmt: skip


def run_level(ctx: ValidationContext, level: int) -> dict[str, Any]:
    """Run one level; a classified failure is reported as ``{"outcome": "rejected", "reason": …}``.

    The devices are idle before each level (:meth:`ValidationContext.idle`: under ``efficient`` they
    fill their level-3 ephemeral pools then, not while a level runs).
    """
    ctx.idle()
    ctx.carrier.begin(level)
    try:
        out = LEVELS[level](ctx)
    except VerificationError as exc:
        ctx.rejections[exc.reason] += 1
        out = {"outcome": "rejected", "reason": exc.reason.value, "detail": exc.detail}
    wire = ctx.carrier.end()
    if wire:
        out["wire"] = wire
    ctx.events.log("validation", level=level, t=ctx.now(), **out)
    return out


def run_all_levels(
    controller: AuthController,
    pack: EntityNode,
    module: EntityNode,
    binding_id: str,
    pairing_id: str,
    *,
    events: EventLog | None = None,
    clock: Callable[[], float] | None = None,
    rng: RandomSource | None = None,
    bus: BusConfig | Carrier | None = None,
) -> dict[str, dict[str, Any]]:
    """Levels 1-7 between a bound and paired pack and module: ``{"1": {...}, …, "7": {...}}`` (JSON-ready).

    ``bus`` (a :class:`~modbatt.transport.canbus.BusConfig`, or an open carrier) runs every level
    as frames on that bus, and each level's result gains ``wire``: frames and times measured from
    the bus beside the model (:mod:`modbatt.transport.validation_bus`). ``None`` carries the
    messages in process. A message lost on the bus raises :class:`~modbatt.errors.TransportError`.
    """
    with _context(controller, pack, module, binding_id, pairing_id, events, clock, rng, bus) as ctx:
        return {str(level): json_safe(run_level(ctx, level)) for level in LEVELS}


@contextlib.contextmanager
def _context(
    controller: AuthController,
    pack: EntityNode,
    module: EntityNode,
    binding_id: str,
    pairing_id: str,
    events: EventLog | None,
    clock: Callable[[], float] | None,
    rng: RandomSource | None,
    bus: BusConfig | Carrier | None,
) -> Iterator[ValidationContext]:
    """The context of one run, its carrier for ``bus``: in process, the one given, or an on-bus
    driver opened for this run."""
    with contextlib.ExitStack() as stack:
        if bus is None:
            carrier: Carrier = IN_PROCESS
        elif not isinstance(bus, BusConfig):
            carrier = bus
        else:
            from ..transport.validation_bus import ValidationBus

            channels = {"pack": pack.channel(pairing_id), "module": module.channel(pairing_id)}
            carrier = stack.enter_context(ValidationBus(bus, node_id_of(module.access_data), channels=channels))
        yield ValidationContext.from_nodes(
            controller, pack, module, binding_id, pairing_id, events=events, clock=clock, rng=rng, carrier=carrier
        )


# --------------------------------------------------------------------------- escalation


def run_escalation_scenario(
    controller: AuthController,
    pack: EntityNode,
    module: EntityNode,
    binding_id: str,
    pairing_id: str,
    *,
    events: EventLog | None = None,
    clock: Callable[[], float] | None = None,
    rng: RandomSource | None = None,
    advance: Callable[[float], None] | None = None,
    bus: BusConfig | Carrier | None = None,
) -> list[dict[str, Any]]:
    """The seed's example L1 → 5 → 7, abuse attempts, and de-escalation; returns the events.

    ``advance(seconds)`` moves the clock forward (a settable test/simulation clock); without it
    the scenario evaluates the policy at ``now + seconds`` without touching any clock. ``bus``
    as for :func:`run_all_levels`: the escalation requests then ride the module's announces as
    broadcast fragments, the telemetry the pack's channel, and levels 5 and 7 their frames; the
    frames heard are logged as one ``escalation_wire`` event.
    """
    with _context(controller, pack, module, binding_id, pairing_id, events, clock, rng, bus) as ctx:
        ctx.carrier.begin("escalation")
        try:
            return _escalation_scenario(ctx, advance)
        finally:
            wire = ctx.carrier.end()
            if wire:
                ctx.events.log("escalation_wire", t=ctx.now(), **wire)


def _escalation_scenario(ctx: ValidationContext, advance: Callable[[float], None] | None) -> list[dict[str, Any]]:
    pack, module, binding_id, pairing_id = ctx.pack, ctx.module, ctx.binding_id, ctx.pairing_id
    offset = 0.0

    def now() -> float:
        return ctx.now() + offset

    def wait(seconds: float) -> None:
        nonlocal offset
        if advance is not None:
            advance(seconds)
        else:
            offset += seconds

    p, m = ctx.side(pack), ctx.side(module)
    # The pack's own channel of the pairing (the policy is the certificate's, kept by the entity).
    link = pack.channel(pairing_id)
    out: list[dict[str, Any]] = []

    def log(event: dict[str, Any]) -> None:
        out.append(event)
        ctx.events.log(
            "escalation", t=event["t"], outcome=event["event"], **{k: v for k, v in event.items() if k != "t"}
        )
        if event["event"] in ("escalated", "de-escalated"):
            ctx.record_statement("escalation", {k: v for k, v in event.items() if k != "t"})

    policy = EscalationPolicy(listeners=[link.escalate], log=log)
    # The pack's intake: its replay windows live in the pack's key store and survive a restart.
    receiver = EscalationReceiver(pack, policy, keys={m["device_id"]: p["partner_key"]})
    seq = iter(range(1_000_000))

    def escalation(request: EscalationRequest, key: PrivateKey | None = None) -> SignedEscalation:
        return SignedEscalation.create(
            request, binding_id=binding_id, sender=m["device_id"], receiver=p["device_id"], seq=next(seq),
            now=now(), key=key or m["binding_key"],
        )  # fmt: skip

    def deliver(esc: SignedEscalation) -> None:
        # The request rides in the module's L1 announce; the pack verifies the announce, then the request.
        data = ctx.announcer(seq=esc.seq).announce(now(), escalation=esc)
        data = ctx.carry(module, pack, data, ANNOUNCE_BROADCAST, "announce with an escalation request")
        announce = ctx.announce_verifier().receive(data, now())
        assert announce.escalation is not None
        receiver.receive(announce.escalation, now())

    # 1. anomaly → L5 and the pairing-tier floor on the link.
    anomaly = escalation(EscalationRequest(5, EscalationReason.ANOMALY_DETECTED, Urgency.IMMEDIATE))
    deliver(anomaly)
    try:
        link.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80", tier=Tier.EXCHANGE)
    except VerificationError as exc:
        ctx.events.log("escalation_effect", t=now(), outcome="refused", reason=exc.reason.value, tier="exchange")
    sent = link.send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
    ctx.carrier.deliver_unit("pack", "module", sent, what="telemetry at the escalated floor")
    sent_tier = link.layout.decode(sent.can_id).tier or Tier.NONE
    ctx.events.log("escalation_effect", t=now(), outcome="sent", tier=sent_tier.label)
    try:
        policy.check(4)  # a command through an L4 session is no longer enough
    except VerificationError as exc:
        ctx.events.log("escalation_effect", t=now(), outcome="refused", reason=exc.reason.value, level=4)
    ctx.events.log("escalation_effect", t=now(), outcome="ok", level=5, result=level5(ctx)["command"]["status"])
    # 2. abuse: a replayed request, a forged one, then a flood until the rate limit bites.
    deliver(anomaly)
    deliver(escalation(EscalationRequest(7, EscalationReason.SECURITY_THREAT), key=PrivateKey.generate(ctx.rng)))
    for _ in range(3):
        deliver(escalation(EscalationRequest(5, EscalationReason.ANOMALY_DETECTED)))
    # 3. a deferred audit request: L7 once it takes effect.
    wait(61.0)  # one token back
    deliver(escalation(EscalationRequest(7, EscalationReason.AUDIT_REQUIRED, Urgency.DEFERRED)))
    wait(6.0)
    policy.tick(now())
    if policy.required_level >= 7:
        result = level7(ctx)
        ctx.events.log("escalation_effect", t=now(), outcome=result["outcome"], level=7)
    # 4. quiet for the hold time: back to the baseline, link floor reset.
    assert policy.until is not None
    wait(policy.until - now() + 1.0)
    policy.tick(now())
    return [json_safe(e) for e in out]
