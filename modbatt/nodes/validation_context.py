"""The validation levels' wiring: each level's machines built once from what the nodes hold.

:class:`ValidationContext` takes a bound and paired pack and module (binding keys, partner keys,
pairing secrets, the controller's records and ledger) and hands each level of
:mod:`modbatt.nodes.validation` its machines from :mod:`modbatt.protocol.validation`, built in one
place; a :class:`Carrier` moves the bytes between the ends (in process here, or
:class:`~modbatt.transport.validation_bus.ValidationBus` on a CAN bus). docs/validation.md.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..can.wiretime import CLASSIC, BusProfile, isotp_frame_lengths
from ..crypto.rng import RandomSource
from ..crypto.suite import PrivateKey
from ..encoding import strict_loads
from ..errors import Reason, VerificationError
from ..model.binding import BindingRecord
from ..model.profile import ProtocolProfile
from ..model.statements import sign_statement
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
    LctAttestor,
    PairedHandshakeInitiator,
    PairedHandshakeResponder,
    PairingValidationAuthority,
    PairingValidationParty,
    SignedHandshakeInitiator,
    SignedHandshakeResponder,
    WitnessRequester,
    WitnessService,
)
from .audit import EventLog
from .controller import AuthController
from .entity import EntityNode

__all__ = [
    "ANNOUNCE_BROADCAST",
    "CHANNEL",
    "IN_PROCESS",
    "ISOTP",
    "WITNESS_BROADCAST",
    "BindingValidationParties",
    "Carrier",
    "InProcessCarrier",
    "ValidationContext",
    "can_frames",
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
