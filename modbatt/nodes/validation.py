"""Run the validation hierarchy (levels 1-7) and escalation between real nodes, in process.

This is wiring only (docs/architecture.md, Layers): the rules live in :mod:`modbatt.protocol.validation`; here each
level's machines are built from what the nodes hold (binding keys, partner keys, pairing
secrets, the controller's records and ledger), the bytes are carried between them, ledger
statements are appended for the levels that need a permanent record (2, 6, 7, escalations),
and every step goes to the :class:`~modbatt.nodes.audit.EventLog`.

Entry points for the workbench (``modbatt demo --json``) and notebooks:

* :func:`run_all_levels` → ``{"1": {"outcome": "ok", "messages": …, "bytes": …, "can_frames": …}, …}``
* :func:`run_escalation_scenario` → the list of escalation events (accepted, rejected, de-escalated)
* :class:`EscalationReceiver` — a node's escalation intake, its replay guard kept in its key store
* :class:`Discovery` — a controller learns a module from its L1 announce and reaches it through
  the protocol its access data names, via an :class:`~modbatt.transport.http.EntityClient`.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..can.wiretime import CLASSIC, BusProfile, isotp_frame_lengths
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey, sha256
from ..encoding import strict_loads
from ..errors import ConfigError, Reason, VerificationError
from ..model.access import AccessData, TransportProtocol
from ..model.binding import BindingRecord
from ..model.policy import MessageClass
from ..model.profile import ProtocolProfile
from ..model.statements import sign_statement
from ..model.tier import Tier
from ..protocol.validation import (
    Announcer,
    AnnounceVerifier,
    BindingKeyRef,
    BindingValidationAuthority,
    BindingValidationSubject,
    BindingValidationVerifier,
    CommandExecutor,
    CommandSender,
    EphemeralPool,
    EscalationGate,
    EscalationPolicy,
    EscalationReason,
    EscalationRequest,
    LctAttestor,
    PairedHandshakeInitiator,
    PairedHandshakeResponder,
    PairingValidationAuthority,
    PairingValidationParty,
    SeenWindow,
    SignedEscalation,
    SignedHandshakeInitiator,
    SignedHandshakeResponder,
    Urgency,
    WitnessRequester,
    WitnessService,
)
from ..protocol.validation._common import Message
from ..protocol.validation.binding_validation import BindingChallenge
from ..transport.canbus import BusConfig
from ..transport.http import EntityClient
from .audit import EventLog, json_safe
from .controller import AuthController
from .discovery import Directory
from .entity import EntityNode
from .link import node_id_of
from .liveness import prove_binding_key

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


#: How a message crosses the bus (the on-bus driver's ``via``): docs/validation.md §on the bus.
ANNOUNCE_BROADCAST = "broadcast:ANNOUNCE"
WITNESS_BROADCAST = "broadcast:WITNESS"
ISOTP = "isotp"
CHANNEL = "channel"


class Carrier(Protocol):
    """What carries the levels' messages between the pack end and the module end.

    :data:`IN_PROCESS` hands the bytes over as they are (unit tests, the model); the on-bus driver
    :class:`~modbatt.transport.validation_bus.ValidationBus` sends them as frames on a bus.
    """

    def carry(self, src: str, dst: str, data: bytes, *, via: str, what: str = "message") -> bytes: ...

    def deliver_unit(self, src: str, dst: str, pdu: Any, *, what: str = "unit") -> Any: ...

    def begin(self, step: int | str) -> None: ...

    def end(self) -> dict[str, Any]: ...


class InProcessCarrier:
    """Hands every message over unchanged and measures nothing (no bus)."""

    def carry(self, src: str, dst: str, data: bytes, *, via: str, what: str = "message") -> bytes:
        return data

    def deliver_unit(self, src: str, dst: str, pdu: Any, *, what: str = "unit") -> Any:
        return None

    def begin(self, step: int | str) -> None:
        return None

    def end(self) -> dict[str, Any]:
        return {}


IN_PROCESS: Carrier = InProcessCarrier()


def can_frames(sizes: list[int], profile: BusProfile = CLASSIC) -> int:
    """CAN frames (ISO-TP, flow control included) the messages of these sizes take on ``profile``."""
    return sum(len(isotp_frame_lengths(n, profile)) for n in sizes)


@dataclass
class ValidationContext:
    """Everything the levels need, taken from a bound and paired deployment."""

    controller: AuthController
    pack: EntityNode
    module: EntityNode
    binding_id: str
    pairing_id: str
    clock: Callable[[], float]
    rng: RandomSource
    events: EventLog = field(default_factory=EventLog)
    lct_key: PrivateKey | None = None
    record_index: int | None = None
    #: Rejections by reason across every level run through :func:`run_level` (failure counters).
    rejections: collections.Counter[Reason] = field(default_factory=collections.Counter)
    #: Level-3 ephemeral keys made ahead of time per device (``efficient`` profile, docs/profiles.md).
    ephemerals: dict[str, EphemeralPool] = field(default_factory=dict)
    #: What carries each message between the ends: in process by default, or a bus driver.
    carrier: Carrier = field(default_factory=lambda: IN_PROCESS)

    def __post_init__(self) -> None:
        record = self.controller.record(self.binding_id)
        if record is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"the controller has no binding {self.binding_id}")
        self.record: BindingRecord = record
        for node in (self.pack, self.module):
            state = node.binding(self.binding_id)
            if state is None or state.partner_key is None or node.pairing_secrets(self.pairing_id) is None:
                raise VerificationError(Reason.UNKNOWN_BINDING, f"{node.access_data.device_id} is not bound and paired")
        if self.lct_key is None:
            # The bound LCT's key lives with the LCT's custodian (its chain); in process we hold it here.
            self.lct_key = PrivateKey.generate(self.rng)

    @classmethod
    def from_nodes(
        cls,
        controller: AuthController,
        pack: EntityNode,
        module: EntityNode,
        binding_id: str,
        pairing_id: str,
        *,
        events: EventLog | None = None,
        clock: Callable[[], float] | None = None,
        rng: RandomSource | None = None,
        record_index: int | None = None,
        carrier: Carrier | None = None,
    ) -> ValidationContext:
        return cls(
            controller, pack, module, binding_id, pairing_id, clock or controller._clock,
            rng or controller._rng, events if events is not None else EventLog(), record_index=record_index,
            carrier=carrier or IN_PROCESS,
        )  # fmt: skip

    # -- what each party holds ------------------------------------------------------------

    def side(self, node: EntityNode) -> dict[str, Any]:
        """One entity's keys and secrets for this binding and pairing (read from its key store once)."""
        cache = self.__dict__.setdefault("_sides", {})
        if node.access_data.device_id not in cache:
            cache[node.access_data.device_id] = self._side(node)
        return cache[node.access_data.device_id]

    def _side(self, node: EntityNode) -> dict[str, Any]:
        state = node.binding(self.binding_id)
        secrets = node.pairing_secrets(self.pairing_id)
        assert state is not None and state.partner_key is not None and secrets is not None
        return {
            "device_id": node.access_data.device_id,
            "partner_id": state.partner_access.device_id,
            "binding_key": state.private_key,
            "partner_key": state.partner_key,
            "secrets": secrets,
        }

    @property
    def profile(self) -> ProtocolProfile:
        """The pairing's protocol profile (from the certificate, as both entities hold it)."""
        return self.side(self.pack)["secrets"].profile

    def idle(self) -> None:
        """What the devices do when idle: under ``efficient``, fill their level-3 ephemeral pools."""
        if not self.profile.binding_mac:
            return
        for node in (self.pack, self.module):
            pool = self.ephemerals.setdefault(node.access_data.device_id, EphemeralPool())
            pool.refill(self.rng)

    def entities(self) -> tuple[Any, Any]:
        return (self.record.entity_a, self.record.entity_b)

    def now(self) -> float:
        return self.clock()

    def party(self, node: EntityNode | str) -> str:
        """``"pack"`` or ``"module"``: the bus end of ``node`` (the controller sits behind the pack)."""
        if isinstance(node, str):
            return "pack" if node == "controller" else node
        return "pack" if node is self.pack else "module"

    def carry(self, src: EntityNode | str, dst: EntityNode | str, data: bytes, via: str, what: str) -> bytes:
        """Move one message between two parties; between the controller and the pack it stays off the bus."""
        a, b = self.party(src), self.party(dst)
        if a == b:
            return data
        return self.carrier.carry(a, b, data, via=via, what=what)

    def record_statement(self, kind: str, fields: Mapping[str, Any]) -> int:
        """Append a controller-signed statement and sign a new tree head; returns its index."""
        index = self.controller.ledger.append(sign_statement(self.controller.controller_key, kind, fields, self.now()))
        self.controller.ledger.signed_tree_head()
        return index

    def binding_record_index(self) -> int:
        if self.record_index is None:
            ledger = self.controller.ledger
            for i in range(ledger.size - 1, -1, -1):  # O(n) once; a real controller keeps the index
                value = strict_loads(ledger.entry(i))
                if value.get("kind") == "binding" and value.get("binding_id") == self.binding_id:
                    self.record_index = i
                    break
            else:
                raise VerificationError(Reason.UNKNOWN_BINDING, "binding record not found in the ledger")
        return self.record_index

    # -- each level's machines, wired from what the parties hold ----------------------------
    # The one place they are built: the levels below run them, attack scenarios drive them.

    def announcer(self, *, seq: int = 0) -> Announcer:
        """Level 1: the module's announcer, next announce numbered ``seq``."""
        m = self.side(self.module)
        return Announcer(
            binding_id=self.binding_id, access_data=self.module.access_data, binding_key=m["binding_key"], seq=seq
        )

    def announce_verifier(self) -> AnnounceVerifier:
        """Level 1: the pack's verifier of its partner's announces (the partner key it holds)."""
        p, m = self.side(self.pack), self.side(self.module)
        return AnnounceVerifier([BindingKeyRef(self.binding_id, m["device_id"], p["partner_key"])])

    def witness(self) -> tuple[WitnessRequester, WitnessService]:
        """Level 2: the pack's requester and the module's witness service."""
        p, m = self.side(self.pack), self.side(self.module)
        requester = WitnessRequester(
            binding_id=self.binding_id, device_id=p["device_id"], binding_key=p["binding_key"], rng=self.rng
        )
        service = WitnessService(
            witness_id=m["device_id"],
            signing_key=m["binding_key"],
            requesters={(self.binding_id, p["device_id"]): m["partner_key"]},
        )
        return requester, service

    def signed_handshake(self) -> tuple[SignedHandshakeInitiator, SignedHandshakeResponder]:
        """Level 3: the pack initiates, the module responds (ephemeral pools when the devices filled them)."""
        p, m = self.side(self.pack), self.side(self.module)
        common = {"binding_id": self.binding_id, "rng": self.rng}
        ini = SignedHandshakeInitiator(
            device_id=p["device_id"], binding_key=p["binding_key"], partner_id=m["device_id"],
            partner_key=p["partner_key"], secrets=p["secrets"], ephemerals=self.ephemerals.get(p["device_id"]),
            **common,
        )  # fmt: skip
        res = SignedHandshakeResponder(
            device_id=m["device_id"], binding_key=m["binding_key"], partner_id=p["device_id"],
            partner_key=m["partner_key"], secrets=m["secrets"], ephemerals=self.ephemerals.get(m["device_id"]),
            **common,
        )  # fmt: skip
        return ini, res

    def paired_handshake(self) -> tuple[PairedHandshakeInitiator, PairedHandshakeResponder]:
        """Level 4: the pack initiates, the module responds, under the pairing secret."""
        p, m = self.side(self.pack), self.side(self.module)
        ini = PairedHandshakeInitiator(
            secrets=p["secrets"], device_id=p["device_id"], partner_id=m["device_id"], rng=self.rng
        )
        res = PairedHandshakeResponder(
            secrets=m["secrets"], device_id=m["device_id"], partner_id=p["device_id"], rng=self.rng
        )
        return ini, res

    def commands(self) -> tuple[CommandSender, CommandExecutor]:
        """Level 5: the pack's command sender and the module's executor, until the pairing expires."""
        p, m = self.side(self.pack), self.side(self.module)
        expires = self.controller.pending_pairing(self.pairing_id).expires_at
        sender = CommandSender(
            secrets=p["secrets"], device_id=p["device_id"], partner_id=m["device_id"], binding_key=p["binding_key"],
            partner_key=p["partner_key"], expires_at=expires, rng=self.rng,
        )  # fmt: skip
        executor = CommandExecutor(
            secrets=m["secrets"], device_id=m["device_id"], partner_id=p["device_id"], binding_key=m["binding_key"],
            partner_key=m["partner_key"], expires_at=expires, rng=self.rng,
        )  # fmt: skip
        return sender, executor

    def pairing_validation(self) -> tuple[PairingValidationAuthority, dict[str, PairingValidationParty]]:
        """Level 6: the controller's authority and both parties, by device id."""
        authority = PairingValidationAuthority(controller_key=self.controller.controller_key, rng=self.rng)
        parties = {
            s["device_id"]: PairingValidationParty(
                secrets=s["secrets"],
                device_id=s["device_id"],
                partner_id=s["partner_id"],
                binding_key=s["binding_key"],
                partner_key=s["partner_key"],
                controller_key=self.controller.public_key,
            )
            for s in (self.side(self.pack), self.side(self.module))
        }
        return authority, parties

    def pairing_validation_challenge(
        self, authority: PairingValidationAuthority, event: str, changes: Mapping[str, Any] | None = None
    ) -> bytes:
        """Level 6: the authority's challenge for ``event`` over both entities' recorded keys."""
        keys = {e.access_data.device_id: e.semi_public_key for e in self.entities()}
        return authority.challenge(
            pairing_id=self.pairing_id, binding_id=self.binding_id, entities=keys, event=event, now=self.now(),
            changes=changes,
        )  # fmt: skip

    def binding_validation(self) -> BindingValidationParties:
        """Level 7: the entity bound to an LCT proves its binding key, its partner verifies offline."""
        subject_node, verifier_node = (self.pack, self.module)
        if subject_node.access_data.bound_lct is None:
            subject_node, verifier_node = verifier_node, subject_node
        lct = subject_node.access_data.bound_lct
        if lct is None:
            raise VerificationError(Reason.UNAUTHORIZED, "neither entity is bound to an LCT: level 7 needs one")
        s = self.side(subject_node)
        assert self.lct_key is not None
        pinned = {lct.lct_id: self.lct_key.public_key}  # resolved from the LCT's chain, out of band
        verifier = BindingValidationVerifier(
            verifier_id=verifier_node.access_data.device_id, controller_key=self.controller.public_key,
            lct_keys=pinned, rng=self.rng,
        )  # fmt: skip
        subject = BindingValidationSubject(
            binding_id=self.binding_id, device_id=s["device_id"], binding_key=s["binding_key"]
        )
        attestor = LctAttestor(lct_id=lct.lct_id, key=self.lct_key)
        authority = BindingValidationAuthority(controller_key=self.controller.controller_key, lct_keys=pinned)
        return BindingValidationParties(subject_node, verifier_node, subject, verifier, attestor, authority)


@dataclass(frozen=True)
class BindingValidationParties:
    """Level 7's machines: the subject (bound to the LCT), its verifier, the LCT's attestor, the controller."""

    subject_node: EntityNode
    verifier_node: EntityNode
    subject: BindingValidationSubject
    verifier: BindingValidationVerifier
    attestor: LctAttestor
    authority: BindingValidationAuthority


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

#: Key-store records of a receiving node's escalation replay windows, one per binding and sender.
_ESCALATION_SEEN_PREFIX = "escalation-seen/"


def _seen_name(window: SeenWindow) -> str:
    stream = f"{window.binding_id}\n{window.sender}".encode()
    return _ESCALATION_SEEN_PREFIX + sha256(stream).hex()


class EscalationReceiver:
    """A node's escalation intake: the gate, its replay windows kept in the node's key store, the policy.

    The gate's windows are loaded from ``node``'s key store at construction and every change is
    written back, in one key-store transaction, *before* the policy acts on the request: a
    request accepted once stays refused (``replay``) after the node restarts, and a request the
    node could not record is not acted on. ``keys`` (sender device id to the binding key it signs
    with) defaults to the partners of every binding ``node`` holds. One request at a time.
    """

    def __init__(
        self,
        node: EntityNode,
        policy: EscalationPolicy,
        *,
        keys: Mapping[str, PublicKey] | None = None,
        burst: int = 3,
        refill_s: float = 60.0,
    ) -> None:
        self.node = node
        self.policy = policy
        store = node.keystore
        if keys is None:
            keys = {
                state.partner_access.device_id: state.partner_key
                for state in node.machine.bindings.values()
                if state.partner_key is not None and state.partner_access is not None
            }
        seen = [
            SeenWindow.from_record(store.record(n))
            for n in store.record_names()
            if n.startswith(_ESCALATION_SEEN_PREFIX)
        ]
        self.gate = EscalationGate(keys, receiver=node.access_data.device_id, seen=seen, burst=burst, refill_s=refill_s)
        self._lock = threading.Lock()

    def receive(self, escalation: SignedEscalation, now: float) -> dict[str, Any]:
        """Admit, persist, then act; returns the policy's event (``rejected`` for a refused request)."""
        with self._lock:
            try:
                request = self.gate.admit(escalation, now)
            except VerificationError as exc:
                return self.policy.reject(escalation.sender, exc.reason, now)
            store = self.node.keystore
            with store.transaction():
                for window in self.gate.drain_seen():
                    store.put_record(_seen_name(window), window.to_record())
            return self.policy.request(request, escalation.sender, now)


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


# --------------------------------------------------------------------------- discovery


class ValidationService:
    """An entity's validation endpoint, speaking the :class:`EntityClient` contract (``handle``).

    Op ``validate`` takes ``{"message": base64 CBOR}`` and answers ``{"message": …}``; today it
    serves L7 ``binding_challenge`` (proof of binding-key possession), which is what a controller
    sends a device it has just discovered.
    """

    def __init__(self, node: EntityNode, *, clock: Callable[[], float]) -> None:
        self.node = node
        self._clock = clock
        self.rejections: collections.Counter[Reason] = collections.Counter()

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]:
        if op != "validate":
            return 404, {"error": "not_found", "detail": f"no validation operation {op!r}"}
        try:
            data = base64.b64decode(str(payload.get("message", "")), validate=True)
            level = Message.peek_level(data)
            if level != 7:
                raise VerificationError(Reason.WRONG_LEVEL, f"this endpoint serves level 7, not {level}")
            ch = BindingChallenge.decode(data)
            state = self.node.binding(ch.binding_id)
            if state is None:
                raise VerificationError(Reason.UNKNOWN_BINDING, "no such binding here")
            subject = BindingValidationSubject(
                binding_id=ch.binding_id, device_id=self.node.access_data.device_id, binding_key=state.private_key
            )
            proof = subject.prove(data, self._clock())
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            return 400, {"error": exc.reason.value, "detail": exc.detail}
        except (ValueError, AttributeError):
            return 400, {"error": "malformed", "detail": "payload must be {'message': base64}"}
        return 200, {"message": base64.b64encode(proof).decode("ascii")}


@dataclass(frozen=True)
class Discovered:
    """A device the controller learned from an announce and reached."""

    device_id: str
    binding_id: str
    access_data: AccessData
    moved: bool
    reached_via: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "binding_id": self.binding_id, "access_data": self.access_data.to_dict(),
            "moved": self.moved, "reached_via": self.reached_via,
        }  # fmt: skip


class Discovery:
    """The controller's side of dynamic discovery.

    It verifies announces with the semi-public keys of every live binding it recorded and learns
    the device's current access data (a :class:`~modbatt.nodes.discovery.Directory`), picks the
    client for the protocol that access data names, and proves the device is live there
    (:func:`~modbatt.nodes.liveness.prove_binding_key`: a level-7 ``binding_challenge`` answered
    with a binding-key signature the controller checks against its record).
    """

    def __init__(
        self,
        controller: AuthController,
        clients: Mapping[TransportProtocol, EntityClient],
        *,
        rng: RandomSource | None = None,
    ) -> None:
        self.controller = controller
        self.clients = dict(clients)
        self._rng = rng or SystemRandom()
        self.directory: dict[str, AccessData] = {}
        #: Rejections by reason: announces refused, devices that could not prove their key.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        live = (controller.record(binding_id) for binding_id in controller.binding_ids())
        self._announces = Directory(r for r in live if r is not None and not controller.is_revoked(r.binding_id))

    def on_announce(self, data: bytes, now: float) -> Discovered:
        """Verify an announce, learn where the device is, and reach it there."""
        try:
            return self._on_announce(data, now)
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            raise

    def _on_announce(self, data: bytes, now: float) -> Discovered:
        found = self._announces.learn(data, now)
        access = found.access_data
        client = self.clients.get(access.protocol)
        if client is None:
            raise ConfigError(f"no client for {access.protocol.value}: cannot reach {access.device_id}")
        prove_binding_key(
            self.controller, client, found.binding_id, found.device_id,
            clock=lambda: now, rng=self._rng, endpoint=access.endpoint,
        )  # fmt: skip
        record = self.controller.record(found.binding_id)
        assert record is not None  # the directory trusts recorded bindings only
        moved = access != record.entity(found.device_id).access_data
        self.directory[found.device_id] = access
        return Discovered(found.device_id, found.binding_id, access, moved, access.protocol.value)
