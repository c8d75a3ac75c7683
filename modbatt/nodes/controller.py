"""The auth controller: orchestrates bindings, signs records, keeps the ledger.

It holds its own signing key, the binding records (which carry semi-public keys, so they
stay in its encrypted key store) and the ledger (which holds only commitments). It never
holds an entity's private key. A binding is appended to the ledger only after both
entities acknowledged it; any failure before that aborts the binding on both entities
and records nothing (no half-recorded binding).

Every decision that reads the key store and then writes it (a grant's single use, one live
binding per relationship, revocations, pairing issue, use and revocation) runs inside
:meth:`~modbatt.crypto.keystore.KeyStore.exclusive`: one thread and one process at a time,
on a freshly re-read store (docs/binding.md, "Claiming a grant"). Network I/O never runs
inside it; a binding claims its grant and relationship first, talks to the entities, then
commits or releases exactly what it claimed.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey, sha256
from ..errors import ModbattError, Reason, VerificationError, counts_rejections
from ..ledger.pin import KeyStoreHeadPin
from ..model.access import AccessData
from ..model.binding import BindingAuthorization, BindingRecord, RevocationRecord, format_timestamp
from ..model.pairing import ControllerMode, PairingCertificate, Restrictions
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..model.statements import sign_statement
from ..model.witness import BindingWitness
from ..protocol.binding import BindingPhase, BindingTransaction, Outgoing, make_revoke_request
from ..protocol.messages import EntityResponse
from ..protocol.pairing import CompletionProof, PendingPairing, issue_certificate, verify_completion
from ..protocol.restrictions import check_restrictions
from ..transport.http import EntityClient
from .killpoints import kill_point
from .process_owner import owner_is_dead, this_process

__all__ = ["CLAIM_LEASE_S", "AuthController", "BindingOutcome"]

log = logging.getLogger(__name__)

_RECORD_PREFIX = "binding-record/"
_REVOKED_PREFIX = "revoked/"
_PAIRING_PREFIX = "pairing/"
_PAIRING_REVOKED_PREFIX = "pairing-revoked/"
#: The identity keys the grant of each binding named (what authenticates a key-loss announce).
_IDENTITY_PREFIX = "binding-identities/"
#: Grants by nonce digest: claimed by a binding in flight, then used for good. A grant binds once
#: (replay would let a revoked module be re-bound with the grant that first bound it).
_AUTHORIZATION_USED_PREFIX = "authorization-used/"
#: The current binding of each relationship (an unordered pair of device ids): one live binding
#: per relationship; a new one needs the old one revoked and a fresh grant.
_RELATIONSHIP_PREFIX = "relationship/"
#: A binding whose record is stored but whose ledger append may not have happened (a crash in
#: between): the controller resumes it at start-up, so a binding is never half-recorded.
_LEDGER_PENDING_PREFIX = "ledger-pending/"
#: How long a claim made by a binding in flight holds its grant and relationship. A call that
#: died (a killed process) leaves its claim behind; once the lease is over another call may take
#: it, and the original call, should it still be running, finds its claim gone and aborts.
CLAIM_LEASE_S = 120.0


def _grant_name(authorization: BindingAuthorization) -> str:
    return _AUTHORIZATION_USED_PREFIX + sha256(authorization.nonce).hex()


def _relationship_name(device_a: str, device_b: str) -> str:
    pair = "\n".join(sorted((device_a, device_b))).encode("utf-8")
    return _RELATIONSHIP_PREFIX + sha256(pair).hex()


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """A completed binding: the record, where it sits in the ledger, and its key-free witness
    broadcast (:class:`~modbatt.model.witness.BindingWitness` bytes, docs/binding.md §Witness)."""

    record: BindingRecord
    ledger_index: int
    witness: bytes = b""


@dataclass(frozen=True, slots=True)
class _Claim:
    """What one bind() call claimed: its token, and the store names it holds with it."""

    token: str
    grant: str
    relationship: str
    previous: str | None  # the revoked binding the relationship pointed at before this call


class AuthController:
    """Binding orchestration over any :class:`~modbatt.transport.http.EntityClient`."""

    def __init__(
        self,
        *,
        controller_key: PrivateKey,
        authority_key: PublicKey,
        ledger: Any,
        client: EntityClient,
        records: Any,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        claim_lease_s: float = CLAIM_LEASE_S,
    ) -> None:
        self.controller_key = controller_key
        self.authority_key = authority_key
        self.ledger = ledger
        self.client = client
        self.records = records  # a KeyStore: binding records hold semi-public keys
        self._clock = clock
        self._rng = rng or SystemRandom()
        self.claim_lease_s = claim_lease_s
        #: Rejections by reason (authorizations, entity answers, completions): failure counters.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        # Anti-rollback (docs/ledger.md): each head it signs is pinned in this authenticated store,
        # and the ledger refuses to append or sign unless the log still extends the pinned head.
        # A rolled-back or rewritten ledger stops the controller here, before any I/O.
        ledger.pin_heads(KeyStoreHeadPin(records))
        with self._exclusive():
            ledger.check_pinned_head()
            self._resume()
            self._index_relationships()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The controller's critical section: this thread and process only, on a re-read store."""
        with self.records.exclusive():
            yield

    def _resume(self) -> None:
        """Finish the ledger appends a crash interrupted (bindings, completions, revocations).

        Both are written to the key store first, marked as not yet in the ledger; a crash before
        the append leaves the mark. Here the entry is appended unless it is already there (the
        crash came after the append), so the store and the ledger agree again. Costs nothing
        when there is no mark; otherwise one backward scan of the ledger.
        """
        todo: dict[bytes, str] = {}
        for name in self.records.record_names():
            if name.startswith((_LEDGER_PENDING_PREFIX, _REVOKED_PREFIX, _PAIRING_REVOKED_PREFIX)):
                value = self.records.record(name)
                if name.startswith(_LEDGER_PENDING_PREFIX) or value.get("ledger_index") is None:
                    todo[value["entry"]] = name
        if not todo:
            return
        found: dict[bytes, int] = {}
        for i in range(self.ledger.size - 1, -1, -1):
            entry = self.ledger.entry(i)
            if entry in todo and entry not in found:
                found[entry] = i
                if len(found) == len(todo):
                    break
        for entry, name in todo.items():
            index = found[entry] if entry in found else self.ledger.append(entry)
            if name.startswith(_LEDGER_PENDING_PREFIX):
                self.records.delete(name)
            else:
                self.records.put_record(name, {"ledger_index": index})
            log.warning("resumed an interrupted ledger append (%s)", name.split("/", 1)[0])
        self.ledger.signed_tree_head()

    def _index_relationships(self) -> None:
        """Give every recorded binding a relationship entry (stores written before they existed)."""
        names = self.records.record_names()
        have = {n for n in names if n.startswith(_RELATIONSHIP_PREFIX)}
        latest: dict[str, BindingRecord] = {}
        for name in names:
            if name.startswith(_RECORD_PREFIX):
                record = BindingRecord.from_json(self.records.record(name))
                key = _relationship_name(record.entity_a.access_data.device_id, record.entity_b.access_data.device_id)
                if key in have:
                    continue
                current = latest.get(key)
                # The live one wins; among revoked ones, any will do (all are revoked).
                if current is None or not self.is_revoked(record.binding_id):
                    latest[key] = record
        if latest:
            with self.records.transaction():
                for key, record in latest.items():
                    self.records.put_record(key, {"binding_id": record.binding_id})

    @property
    def public_key(self) -> PublicKey:
        return self.controller_key.public_key

    def _deliver(self, out: Outgoing) -> EntityResponse:
        answer = self.client.call(out.to.endpoint, out.request.op, out.request.to_json())
        return EntityResponse.from_json(answer)

    @counts_rejections
    def bind(
        self,
        entity_a: AccessData,
        entity_b: AccessData,
        authorization: BindingAuthorization,
        *,
        supersedes: str | None = None,
    ) -> BindingOutcome:
        """Run one binding transaction end to end; raises on any failure, recording nothing.

        Refused before any I/O: a grant already used or claimed by a call in flight (``replay``),
        and a relationship that has a live binding or a binding in flight (``duplicate``).
        """
        tx = BindingTransaction(
            controller_key=self.controller_key,
            authority_key=self.authority_key,
            authorization=authorization,
            entity_a=entity_a,
            entity_b=entity_b,
            now=self._clock(),
            rng=self._rng,
            supersedes=supersedes,
        )
        claim = self._claim(tx, authorization, entity_a.device_id, entity_b.device_id, supersedes)
        kill_point("controller.bind.claimed")
        pending = _LEDGER_PENDING_PREFIX + tx.binding_id
        try:
            queue = tx.start(self._clock())
            while queue:
                out = queue.pop(0)
                answer = self._deliver(out)
                kill_point("controller.bind.answered")
                queue.extend(tx.receive(answer, self._clock()))
            if tx.phase is not BindingPhase.COMPLETE or tx.record is None:
                raise VerificationError(Reason.MALFORMED, "binding ended incomplete")
            record = tx.record
            with self._exclusive():
                self._still_held(claim)
                with self.records.transaction():
                    self.records.put_record(_RECORD_PREFIX + record.binding_id, record.to_json())
                    self.records.put_record(
                        _IDENTITY_PREFIX + record.binding_id,
                        {d: authorization.identity_of(d).to_bytes() for d in (entity_a.device_id, entity_b.device_id)},
                    )
                    self.records.put_record(claim.grant, {"binding_id": record.binding_id})
                    self.records.put_record(claim.relationship, {"binding_id": record.binding_id})
                    self.records.put_record(pending, {"entry": record.ledger_entry()})
                kill_point("controller.bind.stored")
                index = self.ledger.append(record.ledger_entry())
                kill_point("controller.bind.appended")
                self.records.delete(pending)
                self.ledger.signed_tree_head()
        except ModbattError:
            self._abort(tx)
            self._release(claim, tx.binding_id)
            raise
        log.info("bound %s and %s as %s", entity_a.device_id, entity_b.device_id, record.binding_id)
        return BindingOutcome(record, index, BindingWitness.of(record).sign(self.controller_key).encode())

    def _claim(
        self, tx: BindingTransaction, authorization: BindingAuthorization, device_a: str, device_b: str,
        supersedes: str | None,
    ) -> _Claim:  # fmt: skip
        """Take the grant and the relationship for this call, atomically, before any I/O."""
        grant, relationship = _grant_name(authorization), _relationship_name(device_a, device_b)
        abandoned: list[dict[str, Any]] = []
        with self._exclusive():
            now = self._clock()
            held = self.records.record(grant) if grant in self.records else None
            if held is not None and not self._lapsed(held, now):
                what = "is being used by a binding in flight" if "claim" in held else "was already used"
                raise VerificationError(Reason.REPLAY, f"this binding authorization {what}")
            current = self.records.record(relationship) if relationship in self.records else None
            if current is not None and "claim" in current and not self._lapsed(current, now):
                raise VerificationError(Reason.DUPLICATE, "a binding of these two entities is in flight")
            # The relationship's binding: the recorded one, or the one a lapsed claim had replaced.
            previous = None if current is None else current.get("previous" if "claim" in current else "binding_id")
            if previous is not None and not self.is_revoked(previous):
                raise VerificationError(
                    Reason.DUPLICATE, f"these two entities are bound ({previous}); revoke that binding first"
                )
            if supersedes is not None and supersedes != previous:
                raise VerificationError(Reason.WRONG_SESSION, f"{supersedes} is not this relationship's binding")
            claim = _Claim(secrets.token_hex(16), grant, relationship, previous)
            lease = {
                "binding_id": tx.binding_id, "claim": claim.token, "lease_until": now + self.claim_lease_s,
                "owner": this_process(), "entities": [e.to_dict() for e in tx.entities.values()],
            }  # fmt: skip
            abandoned = [v for v in (held, current) if v is not None and "claim" in v]
            with self.records.transaction():
                self.records.put_record(grant, lease)
                self.records.put_record(relationship, {**lease, "previous": previous})
        self._abort_abandoned(abandoned)
        return claim

    def _abort_abandoned(self, claims: list[dict[str, Any]]) -> None:
        """Tell the entities of a lapsed claim (its call died) to drop the keys it may have made them
        generate: that binding was never recorded. Best effort, as :meth:`_abort`."""
        done = set()
        for value in claims:
            binding_id = value.get("binding_id")
            for data in value.get("entities", ()):
                target = AccessData.from_dict(data)
                if binding_id is None or (binding_id, target.device_id) in done:
                    continue
                done.add((binding_id, target.device_id))
                out = make_revoke_request(
                    self.controller_key, binding_id, target, "binding aborted", self._clock(), self._rng
                )
                try:
                    self._deliver(out)
                except ModbattError as exc:
                    log.warning("could not abort binding on %s: %s", target.device_id, exc.__class__.__name__)

    @staticmethod
    def _lapsed(value: dict[str, Any], now: float) -> bool:
        """A claim whose lease is over (its call died or overran), or whose owner process has
        provably exited (killed: docs/controller.md); a used grant never lapses."""
        if "claim" not in value:
            return False
        return float(value.get("lease_until", 0.0)) <= now or owner_is_dead(value.get("owner"))

    def _still_held(self, claim: _Claim) -> None:
        for name in (claim.grant, claim.relationship):
            value = self.records.record(name) if name in self.records else {}
            if value.get("claim") != claim.token:
                raise VerificationError(Reason.TIMEOUT, "this binding overran its claim, which another call took")

    def _release(self, claim: _Claim, binding_id: str) -> None:
        """Undo this call's claims and anything it stored; never another call's."""
        with self._exclusive(), self.records.transaction():
            for name in (claim.grant, claim.relationship):
                value = self.records.record(name) if name in self.records else {}
                if value.get("claim") == claim.token or (
                    "claim" not in value and value.get("binding_id") == binding_id
                ):
                    if name == claim.relationship and claim.previous is not None:
                        self.records.put_record(name, {"binding_id": claim.previous})
                    elif value:
                        self.records.delete(name)
            for prefix in (_RECORD_PREFIX, _LEDGER_PENDING_PREFIX, _IDENTITY_PREFIX):
                name = prefix + binding_id
                if name in self.records:
                    self.records.delete(name)

    def _abort(self, tx: BindingTransaction) -> None:
        # Best effort: tell the entities to drop any keys; the binding was never recorded.
        for out in tx.fail(self._clock()):
            try:
                self._deliver(out)
            except ModbattError as exc:
                log.warning("could not abort binding on %s: %s", out.to.device_id, exc.__class__.__name__)

    def binding_ids(self) -> list[str]:
        """Every binding this controller recorded, live or revoked (sorted)."""
        return self._ids(_RECORD_PREFIX)

    def pairing_ids(self) -> list[str]:
        """Every pairing this controller issued, revoked or not (sorted)."""
        return self._ids(_PAIRING_PREFIX)

    def is_pairing_revoked(self, pairing_id: str) -> bool:
        with self._exclusive():
            return _PAIRING_REVOKED_PREFIX + pairing_id in self.records

    def _ids(self, prefix: str) -> list[str]:
        with self._exclusive():
            return sorted(n.removeprefix(prefix) for n in self.records.record_names() if n.startswith(prefix))

    def record(self, binding_id: str) -> BindingRecord | None:
        name = _RECORD_PREFIX + binding_id
        with self._exclusive():
            return BindingRecord.from_json(self.records.record(name)) if name in self.records else None

    def identity_key(self, binding_id: str, device_id: str) -> PublicKey:
        """The identity key the grant of ``binding_id`` named for ``device_id`` (``unknown_binding``
        if this controller did not record one: a binding made before it kept them)."""
        name = _IDENTITY_PREFIX + binding_id
        with self._exclusive():
            keys = self.records.record(name) if name in self.records else {}
        if device_id not in keys:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no identity key of {device_id} for {binding_id}")
        return PublicKey.from_bytes(keys[device_id])

    def bindings_of(self, device_id: str) -> list[str]:
        """Every binding recorded with ``device_id`` as a party, live or revoked."""
        out = []
        with self._exclusive():
            for name in self.records.record_names():
                if name.startswith(_RECORD_PREFIX):
                    record = BindingRecord.from_json(self.records.record(name))
                    if device_id in (record.entity_a.access_data.device_id, record.entity_b.access_data.device_id):
                        out.append(record.binding_id)
        return sorted(out)

    def binding_of(self, device_a: str, device_b: str) -> str | None:
        """The live binding between two entities, if any (a revoked one does not count)."""
        with self._exclusive():
            name = _relationship_name(device_a, device_b)
            value = self.records.record(name) if name in self.records else {}
            binding_id = value.get("binding_id")
            if "claim" in value or binding_id is None or self.is_revoked(binding_id):
                return None
            return str(binding_id)

    @counts_rejections
    def revoke(self, binding_id: str, reason: str = "unbound") -> tuple[RevocationRecord, int, list[str]]:
        """Unbind: record the revocation in the ledger, then tell both entities to destroy their keys.

        The ledger entry is authoritative; an entity that cannot be reached now is listed in
        the returned ``unreached`` device ids and refuses the binding once it learns of it.
        """
        done = self._revoke_locally(binding_id, reason)
        if done is None:
            raise VerificationError(Reason.REVOKED, f"binding {binding_id} is already revoked")
        revocation, index, record = done
        return revocation, index, self._notify_revocation(record, binding_id, reason)

    def _revoke_locally(self, binding_id: str, reason: str) -> tuple[RevocationRecord, int, BindingRecord] | None:
        """Revoke in the key store and the ledger; None when it already was (check and act in one)."""
        with self._exclusive():
            record = self.record(binding_id)
            if record is None:
                raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
            if self.is_revoked(binding_id):
                return None
            now = self._clock()
            revocation = RevocationRecord(binding_id, reason, format_timestamp(now)).sign(self.controller_key)
            # Fail closed: the binding is revoked locally before the ledger append; a crash in between
            # is resumed at start-up (_resume), an error undoes the local mark.
            entry = revocation.ledger_entry()
            self.records.put_record(_REVOKED_PREFIX + binding_id, {"ledger_index": None, "entry": entry})
            try:
                index = self.ledger.append(entry)
            except ModbattError:
                self.records.delete(_REVOKED_PREFIX + binding_id)
                raise
            self.records.put_record(_REVOKED_PREFIX + binding_id, {"ledger_index": index})
            self.ledger.signed_tree_head()
            return revocation, index, record

    def _notify_revocation(self, record: BindingRecord, binding_id: str, reason: str) -> list[str]:
        unreached = []
        now = self._clock()
        for entity in (record.entity_a, record.entity_b):
            out = make_revoke_request(self.controller_key, binding_id, entity.access_data, reason, now, self._rng)
            try:
                self._deliver(out)
            except ModbattError:
                unreached.append(entity.access_data.device_id)
        return unreached

    # ----------------------------------------------------------------------- pairing

    @counts_rejections
    def issue_pairing(
        self,
        binding_id: str,
        *,
        callback: str = "in-process://controller/api/pairing/complete",
        mode: ControllerMode = ControllerMode.STANDARD,
        max_uses: int = 1,
        valid_for_s: int = 24 * 3600,
        policy: EncryptionPolicy = DEFAULT_POLICY,
        context: str = "battery_management",
        handshake_timeout_s: int = 30,
        restrictions: Restrictions | None = None,
        profile: ProtocolProfile | str = DEFAULT_PROFILE,
    ) -> PairingCertificate:
        """Issue a pairing certificate for a live binding and record its issue in the ledger.

        ``restrictions`` (allowed operations, data types, a message rate) are enforced by both
        entities on everything they receive (docs/lifecycle.md §9); a name that is not a message
        class of its kind is a ``ConfigError``. ``profile`` is the pairing's protocol profile
        (docs/profiles.md), carried in the signed metadata; an unknown name is a
        :class:`~modbatt.errors.ConfigError`.

        The pairing key, its halves and the exchange key exist only inside
        :func:`~modbatt.protocol.pairing.issue_certificate`; what is stored is
        :class:`~modbatt.protocol.pairing.PendingPairing`, which holds none of them.
        """
        profile = profile_named(profile)
        if restrictions is not None:
            check_restrictions(restrictions)
        with self._exclusive():
            record = self.record(binding_id)
            if record is None:
                raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
            if self.is_revoked(binding_id):
                raise VerificationError(Reason.REVOKED, f"binding {binding_id} is revoked")
            now = self._clock()
            cert, pending = issue_certificate(
                controller_key=self.controller_key, binding=record, callback=callback, now=now,
                valid_for_s=valid_for_s, max_uses=max_uses, context=context, policy=policy, mode=mode,
                handshake_timeout_s=handshake_timeout_s, rng=self._rng, restrictions=restrictions,
                profile=profile,
            )  # fmt: skip
            name = _PAIRING_PREFIX + pending.pairing_id
            self.records.put_record(name, pending.to_record())
            statement = sign_statement(
                self.controller_key,
                "pairing_issued",
                {
                    "pairing_id": pending.pairing_id,
                    "binding_id": binding_id,
                    "certificate_hash": cert.certificate_hash,
                    "metadata_hash": cert.metadata_hash,
                    "context": context,
                    "controller_mode": mode.value,
                    "profile": profile.value,
                    "max_uses": max_uses,
                    "expires_at": format_timestamp(pending.expires_at),
                },
                now,
            )
            try:
                self.ledger.append(statement)
            except ModbattError:
                self.records.delete(name)  # never issued: no certificate leaves without its ledger entry
                raise
            self.ledger.signed_tree_head()
        return cert

    @counts_rejections
    def renew_pairing(self, pairing_id: str, **issue: Any) -> PairingCertificate:
        """Issue the renewal of a live pairing: a new certificate for the same binding.

        ``issue`` takes :meth:`issue_pairing`'s terms (``renewal_terms`` of the old certificate
        keeps them). The ledger gets the new ``pairing_issued`` and a ``pairing_renewed``
        statement linking the two; the old pairing is revoked (:meth:`revoke_pairing`, reason
        ``renewed``) once both entities moved over (docs/lifecycle.md §6).
        """
        with self._exclusive():  # the check, the issue and the link in one critical section
            pending = self.pending_pairing(pairing_id)
            if _PAIRING_REVOKED_PREFIX + pairing_id in self.records:
                raise VerificationError(Reason.REVOKED, "a revoked pairing is not renewed; issue a new one")
            certificate = self.issue_pairing(pending.binding_id, **issue)
            new_id = certificate.metadata.pairing_id
            statement = sign_statement(
                self.controller_key,
                "pairing_renewed",
                {"pairing_id": new_id, "renews": pairing_id, "binding_id": pending.binding_id},
                self._clock(),
            )
            self.ledger.append(statement)
            self.ledger.signed_tree_head()
        return certificate

    def pending_pairing(self, pairing_id: str) -> PendingPairing:
        name = _PAIRING_PREFIX + pairing_id
        with self._exclusive():
            if name not in self.records:
                raise VerificationError(Reason.WRONG_SESSION, f"no pairing {pairing_id} was issued")
            return PendingPairing.from_record(self.records.record(name))

    @counts_rejections
    def complete_pairing(self, proof: CompletionProof) -> int:
        """The callback: verify a completion proof and record it; returns its ledger index."""
        with self._exclusive():
            pending = self.pending_pairing(proof.pairing_id)
            if _PAIRING_REVOKED_PREFIX + proof.pairing_id in self.records or self.is_revoked(pending.binding_id):
                raise VerificationError(Reason.REVOKED, "this pairing (or its binding) was revoked")
            now = self._clock()
            updated = verify_completion(pending, proof, now)
            entry = sign_statement(
                self.controller_key,
                "pairing_completed",
                {
                    "pairing_id": proof.pairing_id,
                    "binding_id": pending.binding_id,
                    "session_nonce": proof.session_nonce,
                    "use": len(updated.sessions),
                    "entity_signatures": {f"entity_{r}": s for r, s in proof.entity_signatures.items()},
                },
                now,
            )
            # The use and a "not yet in the ledger" mark in one write: a crash before the append is
            # resumed at start-up; an error undoes the use, so a retry of the same proof is recorded.
            mark = f"{_LEDGER_PENDING_PREFIX}{proof.pairing_id}/{proof.session_nonce.hex()}"
            with self.records.transaction():
                self.records.put_record(_PAIRING_PREFIX + proof.pairing_id, updated.to_record())
                self.records.put_record(mark, {"entry": entry})
            try:
                index = self.ledger.append(entry)
            except ModbattError:
                with self.records.transaction():
                    self.records.put_record(_PAIRING_PREFIX + proof.pairing_id, pending.to_record())
                    self.records.delete(mark)
                raise
            self.records.delete(mark)
            self.ledger.signed_tree_head()
        return index

    def burned_uses(self, pairing_id: str, derived: Iterable[bytes]) -> int:
        """How many of the sessions an entity reports it derived were never recorded as completed.

        Each derived session counted one use on that entity; one the controller never recorded
        (the completion was lost, refused or never sent) is a burned use: the entity will refuse
        the certificate sooner than the ledger suggests. A report is the entity's word, not proof.
        """
        recorded = set(self.pending_pairing(pairing_id).sessions)
        return len({bytes(n) for n in derived} - recorded)

    @counts_rejections
    def revoke_pairing(self, pairing_id: str, reason: str = "revoked") -> bytes:
        """Revoke one pairing; returns the signed statement to hand to both entities."""
        with self._exclusive():
            pending = self.pending_pairing(pairing_id)
            if _PAIRING_REVOKED_PREFIX + pairing_id in self.records:
                raise VerificationError(Reason.REVOKED, "this pairing is already revoked")
            notice = sign_statement(
                self.controller_key,
                "pairing_revoked",
                {"pairing_id": pairing_id, "binding_id": pending.binding_id, "reason": reason},
                self._clock(),
            )
            # Fail closed and resumable, as for a binding's revocation.
            self.records.put_record(_PAIRING_REVOKED_PREFIX + pairing_id, {"ledger_index": None, "entry": notice})
            try:
                index = self.ledger.append(notice)
            except ModbattError:
                self.records.delete(_PAIRING_REVOKED_PREFIX + pairing_id)
                raise
            self.records.put_record(_PAIRING_REVOKED_PREFIX + pairing_id, {"ledger_index": index})
            self.ledger.signed_tree_head()
        return notice

    def is_revoked(self, binding_id: str) -> bool:
        with self._exclusive():
            return _REVOKED_PREFIX + binding_id in self.records

    def rebind(self, old_binding_id: str, authorization: BindingAuthorization) -> BindingOutcome:
        """Revoke a binding (if not yet revoked) and bind the same two entities with fresh keys.

        The grant is checked before anything is revoked, so an unusable grant (forged, expired,
        for other devices, already used) leaves the old binding alone.
        """
        old = self._check_rebind(old_binding_id, authorization)
        a, b = old.entity_a.access_data, old.entity_b.access_data
        done = self._revoke_locally(old_binding_id, "re-binding")
        if done is not None:
            self._notify_revocation(done[2], old_binding_id, "re-binding")
        return self.bind(a, b, authorization, supersedes=old_binding_id)

    @counts_rejections
    def _check_rebind(self, old_binding_id: str, authorization: BindingAuthorization) -> BindingRecord:
        old = self.record(old_binding_id)
        if old is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {old_binding_id}")
        a, b = old.entity_a.access_data, old.entity_b.access_data
        authorization.check(self.authority_key, a.device_id, b.device_id, self._clock())
        grant = _grant_name(authorization)
        with self._exclusive():
            held = self.records.record(grant) if grant in self.records else None
        if held is not None and not self._lapsed(held, self._clock()):
            raise VerificationError(Reason.REPLAY, "this binding authorization was already used")
        return old
