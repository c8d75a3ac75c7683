"""The Binding transaction (seed Phase 1) as sans-I/O state machines.

:class:`BindingEntity` is the device side of ``/api/binding/*``; :class:`BindingTransaction`
is the controller's orchestration of one binding. Neither does I/O nor reads a clock:
callers pass ``now`` (unix seconds) and a random source, and carry the requests the
machines emit to the entities by whatever transport their access data names.

Entity decisions are two-phase (h11 style): :meth:`BindingEntity.decide` validates a
request and computes the answer and the state change without mutating anything;
the node persists :class:`EntityDecision` and only then calls :meth:`BindingEntity.apply`.
Bad input therefore never changes stored state.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..crypto import labels
from ..crypto.keybackend import SigningKey
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey, open_sealed, seal_to_semi_public_key
from ..encoding import canonical_dumps, strict_loads
from ..errors import ProtocolError, Reason, VerificationError
from ..model._fields import expect_map, raw_bytes
from ..model.access import AccessData, LctRef
from ..model.binding import BindingAuthorization, BindingRecord, bound_lct_of, format_timestamp, key_commitment
from .messages import CLOCK_SKEW_S, REQUEST_ID_BYTES, ControllerRequest, EntityResponse

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "BindingEntity",
    "BindingPhase",
    "BindingTransaction",
    "EntityBindingState",
    "EntityDecision",
    "Outgoing",
    "make_revoke_request",
]

#: Accepted difference between the controller's and the entity's clocks (the binding API's name;
#: ±5 min, docs/validation.md §1).
CLOCK_SKEW_SECONDS = CLOCK_SKEW_S


def _pop_bytes(binding_id: str, request_id: bytes, device_id: str, key: PublicKey) -> bytes:
    return canonical_dumps(
        {"binding_id": binding_id, "request_id": request_id, "device_id": device_id, "key": key.to_bytes()}
    )


def _ack_bytes(binding_id: str, request_id: bytes, partner_commitment: bytes) -> bytes:
    return canonical_dumps(
        {"binding_id": binding_id, "request_id": request_id, "partner_key_commitment": partner_commitment}
    )


def _seal_context(binding_id: str) -> bytes:
    return labels.SEAL_PARTNER_KEY + binding_id.encode("ascii")


# --------------------------------------------------------------------------- entity side


@dataclass(frozen=True, slots=True)
class EntityBindingState:
    """What an entity keeps for one binding relationship (in its key store)."""

    binding_id: str
    private_key: SigningKey = field(repr=False)
    partner_access: AccessData
    partner_key: PublicKey | None = None
    record_entry: bytes | None = field(default=None, repr=False)

    @property
    def bound(self) -> bool:
        return self.partner_key is not None

    def to_record(self) -> dict[str, Any]:
        """The key-store record (the private key is stored separately, as a key)."""
        return {
            "binding_id": self.binding_id,
            "partner_access_data": self.partner_access.to_dict(),
            "partner_semi_public_key": self.partner_key.to_bytes() if self.partner_key else None,
            "record_entry": self.record_entry,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], private_key: SigningKey) -> EntityBindingState:
        partner = record.get("partner_semi_public_key")
        return cls(
            record["binding_id"],
            private_key,
            AccessData.from_dict(record["partner_access_data"]),
            PublicKey.from_bytes(partner) if partner else None,
            record.get("record_entry"),
        )


@dataclass(frozen=True, slots=True)
class EntityDecision:
    """The outcome of a valid request: the answer, and the state change to persist first."""

    response: EntityResponse
    request_id: bytes
    forget_after: float
    store: EntityBindingState | None = None
    remove: str | None = None


class BindingEntity:
    """The device side of the binding API: ``generate-keys``, ``distribute-key``, ``revoke``.

    Obeys only requests signed by ``controller_key``, addressed to this device, issued
    within :data:`CLOCK_SKEW_SECONDS` and never seen before. ``keygen`` makes each binding's
    private key (default: in memory; a token backend's ``generate`` keeps it in the token).
    """

    def __init__(
        self,
        *,
        identity: PrivateKey,
        access_data: AccessData,
        controller_key: PublicKey,
        bindings: Mapping[str, EntityBindingState] | None = None,
        seen_requests: Mapping[bytes, float] | None = None,
        rng: RandomSource | None = None,
        keygen: Callable[[RandomSource], SigningKey] = PrivateKey.generate,
    ) -> None:
        self.identity = identity
        self._keygen = keygen
        self.access_data = access_data
        self.controller_key = controller_key
        self.bindings: dict[str, EntityBindingState] = dict(bindings or {})
        self.seen_requests: dict[bytes, float] = dict(seen_requests or {})
        self._rng = rng or SystemRandom()

    @property
    def device_id(self) -> str:
        return self.access_data.device_id

    def decide(self, request: ControllerRequest, now: float) -> EntityDecision:
        """Validate ``request`` and compute the answer; raises ``VerificationError``; mutates nothing."""
        if request.target != self.device_id:
            raise VerificationError(Reason.WRONG_PEER, "request is addressed to another device")
        request.verify(self.controller_key)
        if abs(now - request.issued_at_ms / 1000) > CLOCK_SKEW_SECONDS:
            raise VerificationError(Reason.STALE, "request was issued outside the accepted clock window")
        expiry = self.seen_requests.get(request.request_id)
        if expiry is not None and expiry >= now:
            raise VerificationError(Reason.REPLAY, "request id was already used")
        handler = {
            "generate-keys": self._generate_keys,
            "distribute-key": self._distribute_key,
            "revoke": self._revoke,
        }[request.op]
        return handler(request, now + 2 * CLOCK_SKEW_SECONDS)

    def apply(self, decision: EntityDecision) -> None:
        """Make a decision current (call after it has been persisted)."""
        if decision.store is not None:
            self.bindings[decision.store.binding_id] = decision.store
        if decision.remove is not None:
            self.bindings.pop(decision.remove, None)
        self.seen_requests = {
            rid: exp for rid, exp in self.seen_requests.items() if exp >= decision.forget_after - 4 * CLOCK_SKEW_SECONDS
        }
        self.seen_requests[decision.request_id] = decision.forget_after

    def _respond(self, request: ControllerRequest, body: dict[str, Any]) -> EntityResponse:
        return EntityResponse(request.op, request.binding_id, request.request_id, self.device_id, body).sign(
            self.identity
        )

    def _generate_keys(self, request: ControllerRequest, forget_after: float) -> EntityDecision:
        if request.binding_id in self.bindings:
            raise VerificationError(Reason.DUPLICATE, "keys for this binding were already generated")
        partner: AccessData = request.body["partner_access_data"]
        if partner.device_id == self.device_id:
            raise VerificationError(Reason.WRONG_PEER, "a device cannot be bound to itself")
        bound_lct_of(self.access_data, partner)  # a device that declares its LCT binds to no other
        key = self._keygen(self._rng)
        pop = key.sign(
            labels.SIG_PROOF_OF_POSSESSION,
            _pop_bytes(request.binding_id, request.request_id, self.device_id, key.public_key),
        )
        state = EntityBindingState(request.binding_id, key, partner)
        response = self._respond(request, {"semi_public_key": key.public_key.to_bytes(), "proof_of_possession": pop})
        return EntityDecision(response, request.request_id, forget_after, store=state)

    def _distribute_key(self, request: ControllerRequest, forget_after: float) -> EntityDecision:
        state = self.bindings.get(request.binding_id)
        if state is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, "no keys were generated for this binding")
        if state.bound:
            raise VerificationError(Reason.DUPLICATE, "the partner key was already distributed")
        if request.body["partner_access_data"] != state.partner_access:
            raise VerificationError(Reason.WRONG_PEER, "partner differs from the one keys were generated for")
        partner_key = PublicKey.from_bytes(
            open_sealed(state.private_key, request.body["sealed_partner_key"], context=_seal_context(state.binding_id))
        )
        entry = request.body["record"]
        self._check_record(entry, state, partner_key)
        partner_commitment = key_commitment(state.binding_id, partner_key)
        ack = state.private_key.sign(
            labels.SIG_BINDING_ACK, _ack_bytes(state.binding_id, request.request_id, partner_commitment)
        )
        response = self._respond(request, {"partner_key_commitment": partner_commitment, "binding_signature": ack})
        bound = replace(state, partner_key=partner_key, record_entry=entry)
        return EntityDecision(response, request.request_id, forget_after, store=bound)

    def _check_record(self, entry: bytes, state: EntityBindingState, partner_key: PublicKey) -> None:
        """The signed ledger view must name this binding, both parties and both committed keys."""
        view = dict(expect_map(strict_loads(entry), "record", required={"authority"}, optional=_VIEW_FIELDS))
        authority = raw_bytes(view.pop("authority"), "record.authority", size=64)
        try:
            self.controller_key.verify(labels.SIG_BINDING_RECORD, canonical_dumps(view), authority)
        except VerificationError:
            raise VerificationError(Reason.BAD_SIGNATURE, "binding record is not signed by the controller") from None
        if view.get("kind") != "binding" or view.get("binding_id") != state.binding_id:
            raise VerificationError(Reason.MALFORMED, "record is not this binding's")
        sides = {}
        for side in ("entity_a", "entity_b"):
            part = view.get(side)
            if not isinstance(part, Mapping) or not isinstance(part.get("access_data"), Mapping):
                raise VerificationError(Reason.MALFORMED, "record side is malformed")
            lct = LctRef.from_dict(part["bound_lct"]) if part.get("bound_lct") is not None else None
            sides[AccessData.from_dict(part["access_data"]).device_id] = (
                AccessData.from_dict(part["access_data"]),
                part.get("semi_public_key_commitment"),
                lct,
            )
        own = sides.get(self.device_id)
        partner = sides.get(state.partner_access.device_id)
        if own is None or partner is None:
            raise VerificationError(Reason.WRONG_PEER, "record does not name both parties")
        if own[0] != self.access_data or partner[0] != state.partner_access:
            raise VerificationError(Reason.WRONG_PEER, "record carries other access data")
        if own[2] != bound_lct_of(self.access_data, state.partner_access):
            raise VerificationError(Reason.WRONG_PEER, "record binds this device to another LCT")
        if own[1] != key_commitment(state.binding_id, state.private_key.public_key):
            raise VerificationError(Reason.HASH_MISMATCH, "record commits to another key for this device")
        if partner[1] != key_commitment(state.binding_id, partner_key):
            raise VerificationError(Reason.HASH_MISMATCH, "record commits to another partner key")

    def _revoke(self, request: ControllerRequest, forget_after: float) -> EntityDecision:
        if request.binding_id not in self.bindings:
            raise VerificationError(Reason.UNKNOWN_BINDING, "no such binding on this device")
        response = self._respond(request, {"revoked": True})
        return EntityDecision(response, request.request_id, forget_after, remove=request.binding_id)


_VIEW_FIELDS = {"v", "kind", "binding_id", "entity_a", "entity_b", "timestamp", "supersedes"}


# --------------------------------------------------------------------------- controller side


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A request the controller must deliver to the entity reachable at ``to``."""

    to: AccessData
    request: ControllerRequest


class BindingPhase(enum.Enum):
    GENERATING = "generating"
    DISTRIBUTING = "distributing"
    COMPLETE = "complete"
    FAILED = "failed"


def _request(
    controller_key: PrivateKey,
    op: str,
    binding_id: str,
    target: AccessData,
    body: dict[str, Any],
    now: float,
    rng: RandomSource,
) -> Outgoing:
    req = ControllerRequest(
        op, binding_id, rng.token_bytes(REQUEST_ID_BYTES), int(now * 1000), target.device_id, body
    ).sign(controller_key)
    return Outgoing(target, req)


def make_revoke_request(
    controller_key: PrivateKey,
    binding_id: str,
    target: AccessData,
    reason: str,
    now: float,
    rng: RandomSource | None = None,
) -> Outgoing:
    """A signed ``revoke`` for one entity (unbinding, or aborting a failed binding)."""
    return _request(controller_key, "revoke", binding_id, target, {"reason": reason}, now, rng or SystemRandom())


class BindingTransaction:
    """The controller's orchestration of one binding between ``entity_a`` and ``entity_b``.

    ``start`` checks the binding authority and emits ``generate-keys`` for both entities;
    :meth:`receive` takes each verified response and emits the next requests. When both
    entities acknowledged the cross-wise distribution, :attr:`record` holds the signed
    :class:`BindingRecord` whose :meth:`~BindingRecord.ledger_entry` the caller appends.
    """

    def __init__(
        self,
        *,
        controller_key: PrivateKey,
        authority_key: PublicKey,
        authorization: BindingAuthorization,
        entity_a: AccessData,
        entity_b: AccessData,
        now: float,
        rng: RandomSource | None = None,
        binding_id: str | None = None,
        supersedes: str | None = None,
    ) -> None:
        authorization.check(authority_key, entity_a.device_id, entity_b.device_id, now)
        # A device bound to an LCT other than the one it declares is refused before anything is sent.
        bound_lct_of(entity_a, entity_b)
        bound_lct_of(entity_b, entity_a)
        self._rng = rng or SystemRandom()
        self.controller_key = controller_key
        self.authorization = authorization
        self.entities = {entity_a.device_id: entity_a, entity_b.device_id: entity_b}
        self._order = (entity_a.device_id, entity_b.device_id)
        self.binding_id = binding_id or str(uuid.UUID(bytes=self._rng.token_bytes(16), version=4))
        self.supersedes = supersedes
        self.phase = BindingPhase.GENERATING
        self.record: BindingRecord | None = None
        self._pending: dict[str, bytes] = {}  # device id -> request id awaiting an answer
        self._keys: dict[str, PublicKey] = {}
        self._started = False

    def _partner(self, device_id: str) -> AccessData:
        a, b = self._order
        return self.entities[b if device_id == a else a]

    def _emit(self, op: str, device_id: str, body: dict[str, Any], now: float) -> Outgoing:
        out = _request(self.controller_key, op, self.binding_id, self.entities[device_id], body, now, self._rng)
        self._pending[device_id] = out.request.request_id
        return out

    def start(self, now: float) -> list[Outgoing]:
        if self._started:
            raise ProtocolError("binding transaction already started")
        self._started = True
        return [self._emit("generate-keys", d, {"partner_access_data": self._partner(d)}, now) for d in self._order]

    def receive(self, response: EntityResponse, now: float) -> list[Outgoing]:
        """Verify one entity's answer; returns the requests to send next (possibly none)."""
        if self.phase not in (BindingPhase.GENERATING, BindingPhase.DISTRIBUTING):
            raise ProtocolError(f"binding is {self.phase.value}")
        device_id = response.device_id
        expected_op = "generate-keys" if self.phase is BindingPhase.GENERATING else "distribute-key"
        if device_id not in self.entities or response.binding_id != self.binding_id:
            raise VerificationError(Reason.WRONG_PEER, "response from a party outside this binding")
        if response.op != expected_op or self._pending.get(device_id) != response.request_id:
            raise VerificationError(Reason.WRONG_SESSION, "response does not answer an outstanding request")
        response.verify(self.authorization.identity_of(device_id))
        if self.phase is BindingPhase.GENERATING:
            key = PublicKey.from_bytes(response.body["semi_public_key"])
            key.verify(
                labels.SIG_PROOF_OF_POSSESSION,
                _pop_bytes(self.binding_id, response.request_id, device_id, key),
                response.body["proof_of_possession"],
            )
            if key in self._keys.values():
                raise VerificationError(Reason.DUPLICATE, "both entities returned the same key")
            self._keys[device_id] = key
            del self._pending[device_id]
            return self._distribute(now) if len(self._keys) == 2 else []
        partner_id = self._partner(device_id).device_id
        commitment = key_commitment(self.binding_id, self._keys[partner_id])
        if response.body["partner_key_commitment"] != commitment:
            raise VerificationError(Reason.HASH_MISMATCH, "entity stored a different partner key")
        self._keys[device_id].verify(
            labels.SIG_BINDING_ACK,
            _ack_bytes(self.binding_id, response.request_id, commitment),
            response.body["binding_signature"],
        )
        del self._pending[device_id]
        if not self._pending:
            self.phase = BindingPhase.COMPLETE
        return []

    def _distribute(self, now: float) -> list[Outgoing]:
        self.phase = BindingPhase.DISTRIBUTING
        a, b = self._order
        self.record = BindingRecord.between(
            self.binding_id,
            (self.entities[a], self._keys[a]),
            (self.entities[b], self._keys[b]),
            format_timestamp(now),
            supersedes=self.supersedes,
        ).sign(self.controller_key)
        entry = self.record.ledger_entry()
        out = []
        for device_id in self._order:
            partner = self._partner(device_id)
            sealed = seal_to_semi_public_key(
                self._keys[device_id],
                self._keys[partner.device_id].to_bytes(),
                context=_seal_context(self.binding_id),
                rng=self._rng,
            )
            body = {"partner_access_data": partner, "sealed_partner_key": sealed, "record": entry}
            out.append(self._emit("distribute-key", device_id, body, now))
        return out

    def fail(self, now: float) -> list[Outgoing]:
        """Abandon the binding; returns ``revoke`` requests for every entity that may hold keys for it.

        An entity whose answer was lost or rejected may still have generated keys, so every
        contacted entity is told; one that holds none answers ``unknown_binding``, harmlessly.
        """
        self.phase = BindingPhase.FAILED
        self.record = None
        contacted = self._order if self._started else ()
        return [
            make_revoke_request(
                self.controller_key, self.binding_id, self.entities[d], "binding aborted", now, self._rng
            )
            for d in contacted
        ]
