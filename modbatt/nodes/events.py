"""Partitions: an entity keeps working without the controller, queues its events, and checks the ledger it rejoins.

Nothing on a pairing needs the controller or the ledger once the pairing completed: traffic,
resync, restrictions and the overlap of a renewal all run between the two entities. What an
entity would report meanwhile (state changes, anomalies, refusals, a renewal it could not get)
goes into its :class:`EventOutbox` (docs/lifecycle.md §8):

* **signed** at once with the entity's identity key (label ``sig/entity-event``), so an event is
  authentic however long it waits and whoever carries it;
* **persisted** in the entity's key store (one record, written atomically with the sequence
  number), so a restart loses nothing;
* **bounded**: at most ``capacity`` events wait. Overflow policy: *keep the oldest, count the
  rest* — a new event that finds the outbox full is not queued, but it consumes its sequence
  number and is counted; the next flush sends an ``overflow`` event naming how many and which
  sequence numbers were lost. The start of an incident is what explains it, and the ledger
  always shows that (and where) events are missing.

When the controller is reachable again, :meth:`EventOutbox.flush` hands the queue to it
(:class:`EventIntake` in process, or ``POST /api/events`` on its HTTP API,
:mod:`modbatt.nodes.controller_api`). The controller verifies every event with the identity key
the binding authority named for that device, appends each as an ``entity_event`` statement
(skipping sequence numbers it already appended: a retried flush is idempotent), and answers with
a signed tree head, an RFC 9162 consistency proof from the head the entity last saw, and an
inclusion proof per appended event. The entity pins the new head only if all of it verifies: a
ledger that was rolled back (``stale``) or rewritten (``bad_proof``) while it was away is
detected, and its events stay queued.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..crypto import labels
from ..crypto.suite import PrivateKey, PublicKey
from ..encoding import canonical_dumps, strict_loads
from ..errors import ConfigError, EncodingError, Reason, VerificationError, counts_rejections
from ..ledger import SignedTreeHead, verify_consistency, verify_inclusion
from ..model._fields import b64, b64_bytes, expect_map, integer, raw_bytes, text
from ..model.statements import read_statement, sign_statement
from ..protocol.validation._common import small_map
from .controller import AuthController
from .entity import EntityNode

__all__ = [
    "OUTBOX_CAPACITY",
    "EntityEvent",
    "EventIntake",
    "EventOutbox",
    "FlushReport",
    "Receipt",
    "Submit",
]

#: Events an outbox holds at most (a few KiB each at most; 256 fit a small MCU's flash page set).
OUTBOX_CAPACITY: Final = 256
#: Events one flush hands over at most (one HTTP request stays small).
FLUSH_BATCH: Final = 64
_MAX_EVENT_BYTES = 1024
_OUTBOX = "event-outbox"
_SEEN_PREFIX = "entity-events/"


@dataclass(frozen=True, slots=True)
class EntityEvent:
    """One event an entity reports: who, its sequence number, when, what, details; identity-signed."""

    device_id: str
    seq: int
    ts_ms: int
    kind: str
    details: Mapping[str, Any]
    sig: bytes = field(default=b"", repr=False)

    def _body(self) -> dict[str, Any]:
        return {"v": labels.PROTOCOL_VERSION, "device_id": self.device_id, "seq": self.seq, "ts_ms": self.ts_ms,
                "kind": self.kind, "details": dict(self.details)}  # fmt: skip

    def sign(self, identity: PrivateKey) -> EntityEvent:
        sig = identity.sign(labels.SIG_ENTITY_EVENT, canonical_dumps(self._body()))
        return EntityEvent(self.device_id, self.seq, self.ts_ms, self.kind, self.details, sig)

    def verify(self, identity: PublicKey) -> None:
        identity.verify(labels.SIG_ENTITY_EVENT, canonical_dumps(self._body()), self.sig)

    def encode(self) -> bytes:
        return canonical_dumps({**self._body(), "sig": self.sig})

    @classmethod
    def decode(cls, data: bytes) -> EntityEvent:
        try:
            value = strict_loads(data, max_bytes=_MAX_EVENT_BYTES)
        except EncodingError as exc:
            raise VerificationError(exc.reason, str(exc)) from None
        m = expect_map(value, "entity event", required={"v", "device_id", "seq", "ts_ms", "kind", "details", "sig"})
        if m["v"] != labels.PROTOCOL_VERSION:
            raise VerificationError(Reason.MALFORMED, "unsupported entity event version")
        return cls(
            text(m["device_id"], "device_id", max_len=64), integer(m["seq"], "seq", lo=0, hi=2**53),
            integer(m["ts_ms"], "ts_ms", lo=0, hi=2**53), text(m["kind"], "kind", max_len=64),
            small_map(m["details"], "details"), raw_bytes(m["sig"], "sig", size=64),
        )  # fmt: skip


@dataclass(frozen=True)
class Receipt:
    """The controller's answer to a flush: a signed head, a consistency proof, where each event went."""

    sth: bytes
    consistency: list[bytes]
    entries: list[dict[str, Any]]  # {"seq", "index", "entry", "proof"} per event appended now
    duplicates: list[int]  # sequence numbers appended by an earlier flush

    def to_json(self) -> dict[str, Any]:
        return {
            "sth": b64(self.sth), "consistency": [b64(h) for h in self.consistency],
            "entries": [{"seq": e["seq"], "index": e["index"], "entry": b64(e["entry"]),
                         "proof": [b64(h) for h in e["proof"]]} for e in self.entries],
            "duplicates": list(self.duplicates),
        }  # fmt: skip

    @classmethod
    def from_json(cls, value: Any) -> Receipt:
        m = expect_map(value, "receipt", required={"sth", "consistency", "entries", "duplicates"})
        hashes = lambda v, w: [b64_bytes(h, w, size=32) for h in _bounded(v, w, 64)]  # noqa: E731
        entries = []
        for e in _bounded(m["entries"], "entries", FLUSH_BATCH + 1):
            e = expect_map(e, "receipt entry", required={"seq", "index", "entry", "proof"})
            entries.append({"seq": integer(e["seq"], "seq", lo=0, hi=2**53),
                            "index": integer(e["index"], "index", lo=0, hi=2**53),
                            "entry": b64_bytes(e["entry"], "entry", max_len=4096),
                            "proof": hashes(e["proof"], "proof")})  # fmt: skip
        seen = _bounded(m["duplicates"], "duplicates", FLUSH_BATCH + 1)
        duplicates = [integer(s, "duplicates", lo=0, hi=2**53) for s in seen]
        sth = b64_bytes(m["sth"], "sth", max_len=256)
        return cls(sth, hashes(m["consistency"], "consistency"), entries, duplicates)


def _bounded(value: Any, what: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise VerificationError(Reason.MALFORMED, f"{what} must be a list of at most {limit}")
    return value


#: ``submit(events, since)``: hand encoded events to the controller; ``since`` is the tree size
#: of the head the entity last pinned (None before its first flush). Raises ``TransportError``
#: when the controller cannot be reached.
Submit = Callable[[list[bytes], "int | None"], Receipt]


@dataclass(frozen=True)
class FlushReport:
    """What one flush did."""

    appended: int
    duplicates: int
    tree_size: int
    overflow_reported: int  # events lost to overflow that this flush reported


class EventOutbox:
    """One entity's persisted, bounded queue of signed events for the controller's ledger."""

    def __init__(
        self, node: EntityNode, *, controller_key: PublicKey, capacity: int = OUTBOX_CAPACITY
    ) -> None:
        if capacity < 1:
            raise ConfigError("an outbox holds at least one event")
        self.node = node
        self.capacity = capacity
        self._controller_key = controller_key
        self._lock = threading.Lock()
        #: Refused receipts by reason (a ledger that rolled back or forked, a bad signature).
        self.rejections: collections.Counter[Reason] = collections.Counter()

    def _state(self) -> dict[str, Any]:
        store = self.node.keystore
        if _OUTBOX in store:
            return dict(store.record(_OUTBOX))
        return {"next_seq": 0, "events": [], "dropped": 0, "dropped_from": None, "sth": None}

    def _save(self, state: dict[str, Any]) -> None:
        self.node.keystore.put_record(_OUTBOX, state)

    @property
    def pending(self) -> list[bytes]:
        """The queued events (encoded), oldest first."""
        return [bytes(e) for e in self._state()["events"]]

    @property
    def dropped(self) -> int:
        """Events lost to overflow since the last flush that reported them."""
        return int(self._state()["dropped"])

    @property
    def head(self) -> SignedTreeHead | None:
        """The controller's tree head this entity last verified (its pin)."""
        raw = self._state()["sth"]
        return SignedTreeHead.from_bytes(raw) if raw is not None else None

    def record(self, kind: str, details: Mapping[str, Any] | None = None, *, now: float | None = None) -> int | None:
        """Queue one event; its sequence number, or None when the outbox was full (counted)."""
        ts = self.node._clock() if now is None else now
        details = small_map(dict(details or {}), "details")
        with self._lock:
            state = self._state()
            seq = int(state["next_seq"])
            state["next_seq"] = seq + 1
            if len(state["events"]) >= self.capacity:
                state["dropped"] = int(state["dropped"]) + 1
                state["dropped_from"] = seq if state["dropped_from"] is None else state["dropped_from"]
                self._save(state)
                return None
            event = EntityEvent(self.node.access_data.device_id, seq, int(ts * 1000), text(kind, "kind"), details)
            state["events"] = [*state["events"], event.sign(self.node.machine.identity).encode()]
            self._save(state)
            return seq

    @counts_rejections
    def flush(self, submit: Submit, *, now: float | None = None) -> FlushReport:
        """Hand the queue to the controller and keep the receipt's head if it proves an append-only log.

        Raises ``TransportError`` (controller unreachable) or ``VerificationError`` (a bad
        receipt: ``bad_signature``, ``stale`` for a shorter log than the pinned head, ``bad_proof``
        for one that does not extend it); either way nothing is removed from the queue.
        """
        with self._lock:
            state = self._state()
            if state["dropped"]:
                # Reported in the queue itself, so a failed flush retries it and a restart keeps it.
                ts = self.node._clock() if now is None else now
                seq = int(state["next_seq"])
                lost = {"lost": int(state["dropped"]), "first_seq": int(state["dropped_from"])}
                event = EntityEvent(self.node.access_data.device_id, seq, int(ts * 1000), "overflow", lost)
                state.update(next_seq=seq + 1, dropped=0, dropped_from=None,
                             events=[*state["events"], event.sign(self.node.machine.identity).encode()])  # fmt: skip
                self._save(state)
            batch = [bytes(e) for e in state["events"][:FLUSH_BATCH]]
            pinned = SignedTreeHead.from_bytes(state["sth"]) if state["sth"] is not None else None
        receipt = submit(batch, pinned.tree_size if pinned is not None else None)
        sth = self._check(receipt, batch, pinned)
        done = {e["seq"] for e in receipt.entries} | set(receipt.duplicates)
        overflow = 0
        with self._lock:
            state = self._state()
            kept = []
            for raw in state["events"]:
                event = EntityEvent.decode(bytes(raw))
                if event.seq in done:
                    overflow += int(event.details.get("lost", 0)) if event.kind == "overflow" else 0
                else:
                    kept.append(raw)
            state.update(events=kept, sth=sth.to_bytes())
            self._save(state)
        return FlushReport(len(receipt.entries), len(receipt.duplicates), sth.tree_size, overflow)

    def _check(self, receipt: Receipt, batch: Sequence[bytes], pinned: SignedTreeHead | None) -> SignedTreeHead:
        key = self._controller_key
        sth = SignedTreeHead.from_bytes(receipt.sth)
        sth.verify(key)
        if pinned is not None:
            if sth.tree_size < pinned.tree_size:
                raise VerificationError(Reason.STALE, f"the ledger shrank from {pinned.tree_size} to {sth.tree_size}")
            verify_consistency(pinned, sth, receipt.consistency, key)
        mine = {EntityEvent.decode(raw).seq: EntityEvent.decode(raw) for raw in batch}
        for e in receipt.entries:
            event = mine.get(e["seq"])
            if event is None:
                raise VerificationError(Reason.WRONG_SESSION, f"the receipt names event {e['seq']}, not sent")
            verify_inclusion(e["entry"], e["index"], e["proof"], sth, key)
            statement = read_statement(e["entry"], key)
            if statement.get("kind") != "entity_event" or statement.get("entity_signature") != event.sig:
                raise VerificationError(Reason.HASH_MISMATCH, f"entry {e['index']} is not event {e['seq']}")
        if not set(receipt.duplicates) <= set(mine):
            raise VerificationError(Reason.WRONG_SESSION, "the receipt names duplicates that were not sent")
        return sth


class EventIntake:
    """The controller's side of a flush: verify, append once, prove (see the module doc)."""

    def __init__(self, controller: AuthController) -> None:
        self.controller = controller
        #: Refused submissions by reason.
        self.rejections: collections.Counter[Reason] = collections.Counter()

    def _identity(self, device_id: str) -> PublicKey:
        for binding_id in reversed(self.controller.bindings_of(device_id)):
            try:
                return self.controller.identity_key(binding_id, device_id)
            except VerificationError:
                continue
        raise VerificationError(Reason.UNKNOWN_BINDING, f"no identity key recorded for {device_id}")

    @counts_rejections
    def submit(self, events: list[bytes], since: int | None) -> Receipt:
        """Verify every event first (all or none), append the new ones, return the receipt."""
        if len(events) > FLUSH_BATCH:
            raise VerificationError(Reason.OVERSIZED, f"at most {FLUSH_BATCH} events per flush")
        decoded = [EntityEvent.decode(raw) for raw in events]
        keys: dict[str, PublicKey] = {}
        for event in decoded:
            if event.device_id not in keys:
                keys[event.device_id] = self._identity(event.device_id)
            event.verify(keys[event.device_id])
        ledger = self.controller.ledger
        entries, duplicates = [], []
        # The controller's critical section: one thread and process at a time on a re-read store,
        # so two flushes of one entity never both append the same sequence number.
        with self.controller._exclusive():
            for event in decoded:
                name = _SEEN_PREFIX + event.device_id
                records = self.controller.records
                seen = int(records.record(name)["seq"]) if name in records else -1
                if event.seq <= seen:
                    duplicates.append(event.seq)
                    continue
                entry = sign_statement(
                    self.controller.controller_key, "entity_event",
                    {"device_id": event.device_id, "seq": event.seq, "event_ts_ms": event.ts_ms,
                     "event": event.kind, "details": dict(event.details), "entity_signature": event.sig},
                    self.controller._clock(),
                )  # fmt: skip
                index = ledger.append(entry)
                records.put_record(name, {"seq": event.seq})
                entries.append({"seq": event.seq, "index": index, "entry": entry})
            sth = ledger.signed_tree_head()
        # A head the entity saw beyond this log's size: no proof exists, and the entity refuses the
        # receipt as ``stale`` (this ledger was rolled back while it was away).
        consistency = ledger.consistency_proof(since, sth.tree_size) if since and since <= sth.tree_size else []
        for e in entries:
            e["proof"] = ledger.inclusion_proof(e["index"], sth.tree_size)
        return Receipt(sth.to_bytes(), consistency, entries, duplicates)
