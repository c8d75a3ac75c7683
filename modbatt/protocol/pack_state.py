"""The pack security state machine (docs/lifecycle.md): which traffic a relationship accepts when.

Sans-I/O, h11 style: the states, the transitions and the per-state gate are data tables
(:data:`TRANSITIONS`, :data:`GATES`); :class:`PackSecurity` only looks them up. Binding, pairing,
validation and revocation outcomes drive it as :class:`PackEvent`\\ s; each step returns the
:class:`Effect`\\ s the node must carry out (isolate the pack, erase secrets, announce a key loss,
raise the link's tier floor). It never does I/O and never reads a clock: callers pass ``now``.

One machine governs one relationship the pack holds: pack↔module on the module bus, pack↔app on
the app bus. The main chain follows ModBatt's Pack_Controller_Communications_Workflow.md
§Security State Machine (Factory → Bound → Paired → Active → Validated); the exits (escalation,
expiry, key loss, revocation) follow its §Error Handling and Recovery, which implies them without
naming target states. docs/lifecycle.md holds the reconciliation with the older version of that
document and the reasons for each gate.

The emergency-shutdown rule: a pack accepts an authenticated emergency shutdown (at the pairing
tier or above) in every state in which it may be energised, :data:`ENERGISABLE`; every transition
from such a state to one outside it carries :attr:`Action.ISOLATE`, so the pack is never
energised in a state that would refuse a shutdown.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from ..errors import ProtocolError, Reason, VerificationError, counts_rejections
from ..model.policy import DEFAULT_POLICY, MANAGEMENT_CLASSES, ROUTINE_CLASSES, EncryptionPolicy, MessageClass
from ..model.tier import Tier

__all__ = [
    "ENERGISABLE",
    "GATES",
    "TRANSITIONS",
    "Action",
    "Effect",
    "PackEvent",
    "PackSecurity",
    "PackState",
    "Step",
    "Transition",
]


class PackState(enum.Enum):
    """Security states of one relationship; ``number`` is the upstream numbering of the main chain."""

    FACTORY = "factory"
    BOUND = "bound"
    PAIRED = "paired"
    ACTIVE = "active"
    VALIDATED = "validated"
    ESCALATED = "escalated"
    EXPIRED = "expired"
    KEY_LOST = "key_lost"
    REVOKED = "revoked"

    @property
    def number(self) -> int | None:
        """0-4 for the upstream chain (WF §Security State Machine), None for the exits."""
        return _CHAIN_NUMBER.get(self)


_CHAIN_NUMBER: Final = MappingProxyType(
    {PackState.FACTORY: 0, PackState.BOUND: 1, PackState.PAIRED: 2, PackState.ACTIVE: 3, PackState.VALIDATED: 4}
)


class PackEvent(enum.Enum):
    """Protocol outcomes that move the machine (each is already verified by its own machine)."""

    BOUND = "bound"  # binding recorded; both semi-public keys delivered (protocol.binding)
    PAIRED = "paired"  # pairing completed: pairing and exchange secrets held (protocol.pairing)
    CONFIRMED = "confirmed"  # key confirmation: a Level 4 paired handshake completed
    VALIDATED = "validated"  # a Level 6 pairing-validation or Level 7 binding-validation receipt
    ATTESTATION_LAPSED = "attestation_lapsed"  # no fresh validation within the attestation period
    RENEWED = "renewed"  # a new pairing certificate took over before expiry
    ANOMALY = "anomaly"  # a severe anomaly or an immediate escalation request
    EXPIRED = "expired"  # the pairing passed its expires_at
    PAIRING_REVOKED = "pairing_revoked"  # controller-signed pairing revocation
    BINDING_REVOKED = "binding_revoked"  # controller-signed binding revocation
    KEY_LOSS = "key_loss"  # the pack found its keys missing or corrupt


class Action(enum.Enum):
    """What the node must do when a transition fires."""

    ISOLATE = "isolate"  # open the contactors: leave the energised states
    ERASE_PAIRING_SECRETS = "erase_pairing_secrets"
    ERASE_BINDING_KEYS = "erase_binding_keys"
    ANNOUNCE_KEY_LOSS = "announce_key_loss"  # Level 1 announce of the loss, then Level 7
    RAISE_FLOOR = "raise_floor"  # the link sends everything but emergency shutdown at the binding tier
    RESET_FLOOR = "reset_floor"
    REQUEST_PAIRING = "request_pairing"  # ask the controller for a new pairing certificate


#: States in which the pack may be energised, hence accepts an authenticated emergency shutdown.
ENERGISABLE: Final = frozenset(
    {PackState.PAIRED, PackState.ACTIVE, PackState.VALIDATED, PackState.ESCALATED, PackState.EXPIRED}
)
#: States that hold pairing secrets (and so an encryption policy from the certificate).
_PAIRED_STATES: Final = ENERGISABLE
_BOUND_STATES: Final = frozenset({PackState.BOUND, *_PAIRED_STATES})


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of the transition table."""

    source: PackState
    event: PackEvent
    target: PackState
    actions: tuple[Action, ...] = ()


_S = PackState
_E = PackEvent
_A = Action
_Row = tuple[Iterable[PackState], PackEvent, PackState | None, tuple[Action, ...]]
# (sources, event, target or None for "stays", actions). ISOLATE is added by _with_isolation.
_ROWS: Final[tuple[_Row, ...]] = (
    ((_S.FACTORY, _S.REVOKED, _S.KEY_LOST), _E.BOUND, _S.BOUND, ()),
    ((_S.BOUND,), _E.PAIRED, _S.PAIRED, ()),
    ((_S.EXPIRED,), _E.PAIRED, _S.PAIRED, (_A.ERASE_PAIRING_SECRETS,)),
    ((_S.PAIRED,), _E.CONFIRMED, _S.ACTIVE, ()),
    ((_S.ACTIVE, _S.VALIDATED), _E.VALIDATED, _S.VALIDATED, ()),
    ((_S.ESCALATED,), _E.VALIDATED, _S.VALIDATED, (_A.RESET_FLOOR,)),
    ((_S.VALIDATED,), _E.ATTESTATION_LAPSED, _S.ACTIVE, ()),
    ((_S.PAIRED, _S.ACTIVE, _S.VALIDATED, _S.ESCALATED), _E.RENEWED, None, ()),
    ((_S.PAIRED, _S.ACTIVE, _S.VALIDATED), _E.ANOMALY, _S.ESCALATED, (_A.RAISE_FLOOR,)),
    ((_S.ESCALATED,), _E.ANOMALY, _S.ESCALATED, ()),
    ((_S.PAIRED, _S.ACTIVE, _S.VALIDATED, _S.ESCALATED), _E.EXPIRED, _S.EXPIRED, (_A.REQUEST_PAIRING,)),
    (_PAIRED_STATES, _E.PAIRING_REVOKED, _S.BOUND, (_A.ERASE_PAIRING_SECRETS,)),
    ((*_BOUND_STATES, _S.KEY_LOST), _E.BINDING_REVOKED, _S.REVOKED, (_A.ERASE_PAIRING_SECRETS, _A.ERASE_BINDING_KEYS)),
    (_BOUND_STATES, _E.KEY_LOSS, _S.KEY_LOST, (_A.ERASE_PAIRING_SECRETS, _A.ANNOUNCE_KEY_LOSS)),
)


def _with_isolation(source: PackState, target: PackState, actions: tuple[Action, ...]) -> tuple[Action, ...]:
    """The emergency-shutdown rule: leaving the energised states always isolates the pack first."""
    if source in ENERGISABLE and target not in ENERGISABLE:
        return (Action.ISOLATE, *actions)
    return actions


def _build(rows: Iterable[_Row]) -> Mapping[tuple[PackState, PackEvent], Transition]:
    table: dict[tuple[PackState, PackEvent], Transition] = {}
    order = list(PackState)
    for sources, event, target, actions in rows:
        for source in sorted(set(sources), key=order.index):  # deterministic table order
            to = source if target is None else target
            if (source, event) in table:
                raise ProtocolError(f"two transitions for {source.value} on {event.value}")
            table[(source, event)] = Transition(source, event, to, _with_isolation(source, to, actions))
    return MappingProxyType(table)


#: (state, event) -> :class:`Transition`. A pair not in the table is refused (``wrong_state``).
TRANSITIONS: Final[Mapping[tuple[PackState, PackEvent], Transition]] = _build(_ROWS)

_C = MessageClass
_ROUTINE: Final = tuple(c for c in MessageClass if c in ROUTINE_CLASSES)
_MANAGEMENT: Final = tuple(c for c in MessageClass if c in MANAGEMENT_CLASSES)
# Discovery and liveness in clear, and the binding API / Level 7 at the binding tier: all a pack
# without pairing secrets can take (WF §System Initial State: CAN unencrypted, discovery in clear).
_UNPAIRED: Final = {_C.IDENTITY: Tier.NONE, _C.STATUS: Tier.NONE, _C.HEARTBEAT: Tier.NONE, _C.VALIDATION: Tier.BINDING}


def _all(classes: Iterable[MessageClass], tier: Tier = Tier.NONE) -> dict[MessageClass, Tier]:
    return dict.fromkeys(classes, tier)


#: Per state: message class -> the lowest tier accepted. A class absent from a state's map is
#: refused in that state (``wrong_state``). In the states holding a pairing the certificate's
#: encryption policy applies on top (the higher of the two minimums); ``Tier.NONE`` there means
#: "what the policy says".
GATES: Final[Mapping[PackState, Mapping[MessageClass, Tier]]] = MappingProxyType(
    {
        PackState.FACTORY: MappingProxyType(dict(_UNPAIRED)),
        PackState.BOUND: MappingProxyType({**_UNPAIRED, _C.CERTIFICATE: Tier.BINDING}),
        PackState.PAIRED: MappingProxyType(
            _all((*_ROUTINE, *_MANAGEMENT, _C.CRITICAL_TELEMETRY, _C.EMERGENCY_SHUTDOWN))
        ),
        PackState.ACTIVE: MappingProxyType(_all(c for c in MessageClass if c is not _C.FIRMWARE_UPDATE)),
        PackState.VALIDATED: MappingProxyType(_all(MessageClass)),
        PackState.ESCALATED: MappingProxyType(
            {
                **_all((c for c in MessageClass if c is not _C.FIRMWARE_UPDATE), Tier.BINDING),
                _C.EMERGENCY_SHUTDOWN: Tier.PAIRING,
            }
        ),
        PackState.EXPIRED: MappingProxyType(_all((*_MANAGEMENT, _C.EMERGENCY_SHUTDOWN))),
        PackState.KEY_LOST: MappingProxyType(dict(_UNPAIRED)),
        PackState.REVOKED: MappingProxyType(dict(_UNPAIRED)),
    }
)


@dataclass(frozen=True, slots=True)
class Effect:
    """An action with the identifiers it applies to (e.g. which pairing's secrets to erase)."""

    action: Action
    binding_id: str | None = None
    pairing_id: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One transition that happened: from where, on what, to where, what to do, when."""

    source: PackState
    event: PackEvent
    target: PackState
    effects: tuple[Effect, ...]
    at: float

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(e.action for e in self.effects)


# Events that establish an identifier must carry it (a local programming error otherwise).
_REQUIRED: Final = MappingProxyType(
    {PackEvent.BOUND: "binding_id", PackEvent.PAIRED: "pairing_id", PackEvent.RENEWED: "pairing_id"}
)


class PackSecurity:
    """The state machine of one relationship: :meth:`handle` events, :meth:`allows` traffic.

    Refusals raise :class:`~modbatt.errors.VerificationError` and are counted in
    :attr:`rejections`; a refused event or message changes nothing.
    """

    def __init__(
        self,
        *,
        state: PackState = PackState.FACTORY,
        binding_id: str | None = None,
        pairing_id: str | None = None,
        policy: EncryptionPolicy | None = None,
        expires_at: float | None = None,
    ) -> None:
        self._state = PackState(state)
        self.binding_id = binding_id
        self.pairing_id = pairing_id
        self.policy = policy if policy is not None else (DEFAULT_POLICY if self._state in _PAIRED_STATES else None)
        self.expires_at = expires_at
        #: Rejections by reason (refused events and refused traffic).
        self.rejections: collections.Counter[Reason] = collections.Counter()
        #: Every transition taken, in order.
        self.history: list[Step] = []

    @property
    def state(self) -> PackState:
        return self._state

    @property
    def accepts_emergency_shutdown(self) -> bool:
        """True in every state in which the pack may be energised (:data:`ENERGISABLE`)."""
        return self._state in ENERGISABLE

    # ------------------------------------------------------------------ traffic gate

    def minimum_tier(self, message_class: MessageClass) -> Tier:
        """The lowest tier ``message_class`` is accepted at now; ``wrong_state`` if it is refused."""
        cls = MessageClass(message_class)
        gate = GATES[self._state].get(cls)
        if gate is None:
            raise VerificationError(Reason.WRONG_STATE, f"{cls.value} is not accepted in state {self._state.value}")
        if self.policy is not None:
            return max(gate, self.policy.minimum[cls])
        return gate

    @counts_rejections
    def allows(self, message_class: MessageClass, tier: Tier) -> None:
        """Return if ``message_class`` at ``tier`` is accepted in the current state, else raise.

        ``wrong_state`` when the state refuses the class, ``tier_too_low`` when it takes the class
        only at a higher tier.
        """
        need = self.minimum_tier(message_class)
        if Tier(tier) < need:
            raise VerificationError(
                Reason.TIER_TOO_LOW,
                f"{MessageClass(message_class).value} needs the {need.label} tier in state {self._state.value}",
            )

    # ------------------------------------------------------------------ events

    @counts_rejections
    def handle(
        self,
        event: PackEvent,
        now: float,
        *,
        binding_id: str | None = None,
        pairing_id: str | None = None,
        policy: EncryptionPolicy | None = None,
        expires_at: float | None = None,
    ) -> Step:
        """Take one event; returns the :class:`Step` with the effects to carry out.

        ``wrong_state`` for an event the table has no row for in this state; ``wrong_session``
        for an event about another binding or pairing than the one held. Either changes nothing.
        """
        event = PackEvent(event)
        required = _REQUIRED.get(event)
        if required is not None and {"binding_id": binding_id, "pairing_id": pairing_id}[required] is None:
            raise ProtocolError(f"{event.value} needs {required}")
        transition = TRANSITIONS.get((self._state, event))
        if transition is None:
            raise VerificationError(Reason.WRONG_STATE, f"{event.value} does not apply in state {self._state.value}")
        self._check_subject(event, binding_id, pairing_id)
        effects = tuple(self._effect(a) for a in transition.actions)
        self._apply(transition, event, binding_id, pairing_id, policy, expires_at)
        step = Step(transition.source, event, transition.target, effects, now)
        self.history.append(step)
        return step

    def renewal_due(self, now: float, lead_s: float) -> bool:
        """True when the held pairing expires within ``lead_s`` seconds and may still be renewed.

        Renewal before expiry (docs/lifecycle.md §6): a driver asks the controller for the new
        certificate then, and reports ``renewed`` once it took over; past ``expires_at`` the machine
        is ``expired`` and the ``request_pairing`` effect asks for a new pairing instead.
        """
        renewable = (PackState.PAIRED, PackState.ACTIVE, PackState.VALIDATED, PackState.ESCALATED)
        return self._state in renewable and self.expires_at is not None and now >= self.expires_at - lead_s

    def tick(self, now: float) -> Step | None:
        """Expire the pairing once ``now`` reaches its ``expires_at``; None when nothing happens."""
        if self.expires_at is None or now < self.expires_at:
            return None
        if (self._state, PackEvent.EXPIRED) not in TRANSITIONS:
            return None
        return self.handle(PackEvent.EXPIRED, now)

    def _check_subject(self, event: PackEvent, binding_id: str | None, pairing_id: str | None) -> None:
        # BOUND names a new binding and PAIRED / RENEWED a new pairing; every other event must be
        # about the binding and pairing held, so a stale or foreign notice moves nothing.
        if event is not PackEvent.BOUND and binding_id is not None and binding_id != self.binding_id:
            raise VerificationError(Reason.WRONG_SESSION, f"{event.value} names another binding")
        if event not in (PackEvent.PAIRED, PackEvent.RENEWED) and pairing_id not in (None, self.pairing_id):
            raise VerificationError(Reason.WRONG_SESSION, f"{event.value} names another pairing")

    def _effect(self, action: Action) -> Effect:
        # Computed before the transition applies: the identifiers are those of what is left behind.
        return Effect(action, self.binding_id, None if action is Action.ERASE_BINDING_KEYS else self.pairing_id)

    def _apply(
        self,
        transition: Transition,
        event: PackEvent,
        binding_id: str | None,
        pairing_id: str | None,
        policy: EncryptionPolicy | None,
        expires_at: float | None,
    ) -> None:
        if event is PackEvent.BOUND:
            self.binding_id = binding_id
        if event in (PackEvent.PAIRED, PackEvent.RENEWED):
            self.pairing_id = pairing_id
            self.policy = policy if policy is not None else DEFAULT_POLICY
            self.expires_at = expires_at
        if transition.target not in _PAIRED_STATES:
            self.pairing_id, self.policy, self.expires_at = None, None, None
        if transition.target is PackState.REVOKED:
            self.binding_id = None
        self._state = transition.target

    # ------------------------------------------------------------------ persistence

    def to_record(self) -> dict[str, Any]:
        """A key-store record of the machine (the history is the ledger's and the event log's job)."""
        return {
            "state": self._state.value,
            "binding_id": self.binding_id,
            "pairing_id": self.pairing_id,
            "policy": self.policy.to_dict() if self.policy is not None else None,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PackSecurity:
        policy = record.get("policy")
        return cls(
            state=PackState(record["state"]),
            binding_id=record.get("binding_id"),
            pairing_id=record.get("pairing_id"),
            policy=EncryptionPolicy.from_dict(policy) if policy is not None else None,
            expires_at=record.get("expires_at"),
        )
