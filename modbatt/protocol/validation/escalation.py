"""Escalation (docs/seed.md §3.2): authenticated, rate-limited requests that raise the required level.

Any level's message may carry an ``escalation`` field: a :class:`SignedEscalation`, i.e. the
seed's ``escalation_request {target_level, reason, urgency}`` plus sender, receiver, binding,
sequence number and time, **signed with the sender's binding key** (label
``sig/validation/escalation``). It is signed on its own, not only through the carrying message,
because L4 messages carry only a pairing-key MAC and the seed's "Escalation Abuse" risk asks for
authenticated requests. Naming the receiver keeps a recorded request from being replayed to
another gate that holds the same binding key (the controller holds both keys of every binding).

Two machines, both sans-I/O:

* :class:`EscalationGate` authenticates a request (binding key of the named sender, addressed to
  this receiver), rejects replays (sequence window per binding and sender) and stale ones
  (±skew), and rate-limits per sender with a token bucket (default: burst 3, one more every
  60 s) — an entity that floods escalations gets ``rate_limited`` and cannot pin its partner at
  maximum cost. The replay windows are the receiver's state to keep across restarts: the gate
  takes the persisted :class:`SeenWindow` set in and reports each change out
  (:meth:`EscalationGate.drain_seen`); the node writes them before it acts on the request
  (docs/validation.md, "Escalation replay across restarts").
* :class:`EscalationPolicy` turns an accepted request into a required validation level and a tier
  floor for the link (``PairedChannel.escalate``), holds it for a stated time, de-escalates on
  :meth:`EscalationPolicy.tick`, and logs every event (accepted, deferred, ignored, rejected,
  de-escalated) as a JSON-ready dict.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ...crypto import labels
from ...crypto.suite import PrivateKey, PublicKey
from ...encoding import canonical_dumps
from ...errors import Reason, VerificationError
from ...model._fields import expect_map, integer, text
from ...model.schema import Record, authenticator, bytes_, enum_of, nested, record, text_, uint, wire
from ...model.tier import Tier
from ._common import CLOCK_SKEW_S, Counted, SequenceGuard, check_timestamp, counted

__all__ = [
    "EscalationGate",
    "EscalationPolicy",
    "EscalationReason",
    "EscalationRequest",
    "EscalationRule",
    "SeenWindow",
    "SignedEscalation",
    "Urgency",
]


class EscalationReason(enum.StrEnum):
    ANOMALY_DETECTED = "anomaly_detected"
    SECURITY_THREAT = "security_threat"
    AUDIT_REQUIRED = "audit_required"


class Urgency(enum.StrEnum):
    IMMEDIATE = "immediate"
    DEFERRED = "deferred"


@record(what="escalation_request")
class EscalationRequest(Record):
    """The seed's ``escalation_request`` object."""

    target_level: int = wire(uint(1, 7))
    reason: EscalationReason = wire(enum_of(EscalationReason))
    urgency: Urgency = wire(enum_of(Urgency), default=Urgency.IMMEDIATE)

    def __post_init__(self) -> None:
        integer(self.target_level, "escalation_request.target_level", lo=1, hi=7)
        object.__setattr__(self, "reason", EscalationReason(self.reason))
        object.__setattr__(self, "urgency", Urgency(self.urgency))

    def to_dict(self) -> dict[str, Any]:
        return self.to_cbor()

    @classmethod
    def from_dict(cls, value: Any) -> EscalationRequest:
        return cls.from_cbor(value)  # type: ignore[no-any-return]


@record(what="escalation")
class SignedEscalation(Record):
    """An escalation request signed by the sender's binding key; carried inside any level's message."""

    request: EscalationRequest = wire(nested(EscalationRequest), name="escalation_request")
    binding_id: str = wire(text_(64))
    sender: str = wire(text_(64))
    receiver: str = wire(text_(64))
    seq: int = wire(uint())
    ts_ms: int = wire(uint())
    sig: bytes = authenticator(kind=bytes_(64))

    @classmethod
    def create(
        cls,
        request: EscalationRequest,
        *,
        binding_id: str,
        sender: str,
        receiver: str,
        seq: int,
        now: float,
        key: PrivateKey,
    ) -> SignedEscalation:
        unsigned = cls(request, binding_id, sender, receiver, seq, int(now * 1000))
        return replace(unsigned, sig=key.sign(labels.SIG_ESCALATION, canonical_dumps(unsigned.signed_map())))

    def verify(self, key: PublicKey) -> None:
        key.verify(labels.SIG_ESCALATION, canonical_dumps(self.signed_map()), self.sig)


#: The kind of the ``escalation`` field every level's message may carry.
ESCALATION = nested(SignedEscalation, ("map", "SignedEscalation", "CBOR map (docs/validation.md, escalation)"))
#: The same kind, by the name the level modules read it under.
read_escalation = ESCALATION


@dataclass(frozen=True, slots=True)
class SeenWindow:
    """One stream's replay window (a binding and its sender), as the receiving node persists it."""

    binding_id: str
    sender: str
    highest: int
    bitmap: int

    def to_record(self) -> dict[str, Any]:
        return {"binding_id": self.binding_id, "sender": self.sender, "highest": self.highest, "bitmap": self.bitmap}

    @classmethod
    def from_record(cls, value: Any) -> SeenWindow:
        m = expect_map(value, "escalation replay window", required={"binding_id", "sender", "highest", "bitmap"})
        return cls(
            text(m["binding_id"], "binding_id", max_len=64),
            text(m["sender"], "sender", max_len=64),
            integer(m["highest"], "highest", lo=-1, hi=(1 << 63) - 1),
            integer(m["bitmap"], "bitmap", lo=0, hi=(1 << 64) - 1),
        )


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated


class EscalationGate(Counted):
    """Authenticates and rate-limits escalation requests, per sender, for one receiver.

    ``keys`` maps a sender's device id to the binding key it signs with (the receiver's partner
    key; the controller holds both keys of each binding). ``receiver`` is this gate's own device
    id; ``seen`` the replay windows persisted before a restart. A request is checked in this
    order: known sender (``wrong_peer``), signature (``bad_signature``), addressed to this
    receiver (``wrong_peer``), time (``stale``), sequence per binding and sender (``replay``),
    then the sender's bucket (``rate_limited``). A rejected request costs no token and changes no
    state except the counters; a rate-limited one is not remembered as seen, so the sender may
    retry it later. Each accepted request changes one window: :meth:`drain_seen` hands the
    changed windows to the caller to persist.
    """

    def __init__(
        self,
        keys: Mapping[str, PublicKey],
        *,
        receiver: str,
        seen: Iterable[SeenWindow] = (),
        burst: int = 3,
        refill_s: float = 60.0,
        skew_s: float = CLOCK_SKEW_S,
    ) -> None:
        super().__init__()
        self.keys = dict(keys)
        self.receiver = receiver
        self.burst = burst
        self.refill_s = refill_s
        self.skew_s = skew_s
        self._seen = SequenceGuard()
        for window in seen:
            self._seen.restore((window.binding_id, window.sender), window.highest, window.bitmap)
        self._changed: dict[tuple[str, str], SeenWindow] = {}
        self._buckets: dict[str, _Bucket] = {}

    @counted
    def admit(self, escalation: SignedEscalation, now: float) -> EscalationRequest:
        key = self.keys.get(escalation.sender)
        if key is None:
            raise VerificationError(Reason.WRONG_PEER, f"no binding key for {escalation.sender!r}")
        escalation.verify(key)
        if escalation.receiver != self.receiver:
            raise VerificationError(
                Reason.WRONG_PEER, f"this escalation is addressed to {escalation.receiver!r}, not {self.receiver!r}"
            )
        check_timestamp(escalation.ts_ms, now, skew_s=self.skew_s)
        stream = (escalation.binding_id, escalation.sender)
        self._seen.check(stream, escalation.seq)
        bucket = self._buckets.setdefault(escalation.sender, _Bucket(float(self.burst), now))
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) / self.refill_s)
        bucket.updated = now
        if bucket.tokens < 1.0:
            raise VerificationError(
                Reason.RATE_LIMITED, f"{escalation.sender} exceeded {self.burst} escalations per {self.refill_s:.0f} s"
            )
        bucket.tokens -= 1.0
        self._seen.commit(stream, escalation.seq)
        snapshot = self._seen.snapshot(stream)
        assert snapshot is not None
        self._changed[stream] = SeenWindow(*stream, *snapshot)
        return escalation.request

    def drain_seen(self) -> list[SeenWindow]:
        """The windows changed since the last call (each at its latest state), for the node to persist."""
        changed, self._changed = list(self._changed.values()), {}
        return changed


@dataclass(frozen=True, slots=True)
class EscalationRule:
    """What one reason requires: at least ``min_level``, a link tier floor, held for ``hold_s``."""

    min_level: int
    tier_floor: Tier
    hold_s: float


#: The default rules. Why these: an anomaly means commands must be pairing-keyed, signed and
#: acknowledged (L5, the seed's example) and everything on the link at least at the pairing tier;
#: a security threat re-validates the pairing with the controller (L6); an audit asks for the
#: binding proof (L7) but does not slow the bus (floor unchanged).
DEFAULT_RULES: Mapping[EscalationReason, EscalationRule] = {
    EscalationReason.ANOMALY_DETECTED: EscalationRule(5, Tier.PAIRING, 300.0),
    EscalationReason.SECURITY_THREAT: EscalationRule(6, Tier.PAIRING, 900.0),
    EscalationReason.AUDIT_REQUIRED: EscalationRule(7, Tier.NONE, 3600.0),
}
#: A deferred request takes effect this long after it was accepted (at the next quiet point).
DEFERRED_DELAY_S = 5.0


class EscalationPolicy(Counted):
    """The current required level and tier floor, raised by requests and lowered by time.

    ``listeners`` are called with the new tier floor whenever it changes (e.g.
    ``link.escalate``); they are in-process callbacks, not I/O. Every decision is appended to
    :attr:`events` (and handed to ``log`` if given) as a JSON-ready dict.
    """

    def __init__(
        self,
        *,
        baseline_level: int = 1,
        rules: Mapping[EscalationReason, EscalationRule] = DEFAULT_RULES,
        listeners: list[Callable[[Tier], None]] | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        super().__init__()
        self.baseline_level = baseline_level
        self.rules = dict(rules)
        self.listeners = list(listeners or [])
        self._log = log
        self.required_level = baseline_level
        self.tier_floor = Tier.NONE
        self.until: float | None = None
        self.active_reason: EscalationReason | None = None
        self._deferred: list[tuple[float, EscalationRequest, str]] = []
        self.events: list[dict[str, Any]] = []

    def _event(self, now: float, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"t": round(now, 3), "event": event, **fields}
        self.events.append(entry)
        if self._log is not None:
            self._log(entry)
        return entry

    def _set_floor(self, floor: Tier) -> None:
        if floor != self.tier_floor:
            self.tier_floor = floor
            for listener in self.listeners:
                listener(floor)

    def reject(self, sender: str, reason: Reason, now: float) -> dict[str, Any]:
        """Log a request the gate refused (the audit trail shows abuse too)."""
        self.rejections[reason] += 1
        return self._event(now, "rejected", sender=sender, rejection=reason.value)

    def request(self, request: EscalationRequest, sender: str, now: float) -> dict[str, Any]:
        """Act on an admitted request: raise now (immediate) or schedule it (deferred)."""
        if request.urgency is Urgency.DEFERRED:
            self._deferred.append((now + DEFERRED_DELAY_S, request, sender))
            return self._event(
                now, "deferred", sender=sender, **request.to_dict(), effective_at=round(now + DEFERRED_DELAY_S, 3)
            )
        return self._apply(request, sender, now)

    def _apply(self, request: EscalationRequest, sender: str, now: float) -> dict[str, Any]:
        rule = self.rules[request.reason]
        level = max(request.target_level, rule.min_level)
        floor = max(rule.tier_floor, self.tier_floor)
        until = now + rule.hold_s
        if level <= self.required_level and floor == self.tier_floor and self.until is not None:
            # Already at least this strict: extend the hold, never lower anything.
            self.until = max(self.until, until)
            return self._event(
                now, "extended", sender=sender, **request.to_dict(), required_level=self.required_level,
                tier_floor=self.tier_floor.label, until=round(self.until, 3),
            )  # fmt: skip
        self.required_level = max(level, self.required_level)
        self.active_reason = request.reason
        self.until = max(until, self.until or 0.0)
        self._set_floor(floor)
        return self._event(
            now, "escalated", sender=sender, **request.to_dict(), required_level=self.required_level,
            tier_floor=self.tier_floor.label, until=round(self.until, 3),
        )  # fmt: skip

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Apply due deferred requests; de-escalate to the baseline once the hold has passed."""
        out = []
        due = [d for d in self._deferred if d[0] <= now]
        self._deferred = [d for d in self._deferred if d[0] > now]
        for _, request, sender in due:
            out.append(self._apply(request, sender, now))
        if self.until is not None and now >= self.until:
            previous = (self.required_level, self.tier_floor.label)
            self.required_level = self.baseline_level
            self.until = None
            self.active_reason = None
            self._set_floor(Tier.NONE)
            out.append(
                self._event(
                    now,
                    "de-escalated",
                    required_level=self.required_level,
                    tier_floor=self.tier_floor.label,
                    previous_level=previous[0],
                    previous_floor=previous[1],
                )
            )
        return out

    def check(self, level: int) -> None:
        """Refuse an exchange at a level below the one currently required (``wrong_level``)."""
        if level < self.required_level:
            self.rejections[Reason.WRONG_LEVEL] += 1
            raise VerificationError(
                Reason.WRONG_LEVEL, f"escalated: level {self.required_level} required, got level {level}"
            )
