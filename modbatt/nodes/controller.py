"""The auth controller: orchestrates bindings, signs records, keeps the ledger.

It holds its own signing key, the binding records (which carry semi-public keys, so they
stay in its encrypted key store) and the ledger (which holds only commitments). It never
holds an entity's private key. A binding is appended to the ledger only after both
entities acknowledged it; any failure before that aborts the binding on both entities
and records nothing (no half-recorded binding).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ModbattError, Reason, VerificationError, counts_rejections
from ..model.access import AccessData
from ..model.binding import BindingAuthorization, BindingRecord, RevocationRecord, format_timestamp
from ..model.pairing import ControllerMode, PairingCertificate
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy
from ..model.statements import sign_statement
from ..protocol.binding import BindingPhase, BindingTransaction, Outgoing, make_revoke_request
from ..protocol.messages import EntityResponse
from ..protocol.pairing import CompletionProof, PendingPairing, issue_certificate, verify_completion
from ..transport.http import EntityClient

__all__ = ["AuthController", "BindingOutcome"]

log = logging.getLogger(__name__)

_RECORD_PREFIX = "binding-record/"
_REVOKED_PREFIX = "revoked/"
_PAIRING_PREFIX = "pairing/"
_PAIRING_REVOKED_PREFIX = "pairing-revoked/"
#: Nonces of binding authorizations already consumed: a grant binds once (replay would let a
#: revoked module be re-bound with the grant that first bound it, while that grant is still valid).
_AUTHORIZATION_USED_PREFIX = "authorization-used/"
#: A binding whose record is stored but whose ledger append may not have happened (a crash in
#: between): the controller resumes it at start-up, so a binding is never half-recorded.
_LEDGER_PENDING_PREFIX = "ledger-pending/"


@dataclass(frozen=True, slots=True)
class BindingOutcome:
    """A completed binding: the record and where it sits in the ledger."""

    record: BindingRecord
    ledger_index: int


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
    ) -> None:
        self.controller_key = controller_key
        self.authority_key = authority_key
        self.ledger = ledger
        self.client = client
        self.records = records  # a KeyStore: binding records hold semi-public keys
        self._clock = clock
        self._rng = rng or SystemRandom()
        #: Rejections by reason (authorizations, entity answers, completions): failure counters.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        self._resume()

    def _resume(self) -> None:
        """Finish the ledger appends a crash interrupted (bindings, completions, revocations).

        Both are written to the key store first, marked as not yet in the ledger; a crash before
        the append leaves the mark. Here the entry is appended unless it is already there (the
        crash came after the append), so the store and the ledger agree again. Costs nothing
        when there is no mark; otherwise one backward scan of the ledger.
        """
        todo: dict[bytes, str] = {}
        for name in self.records.record_names():
            value = self.records.record(name)
            if name.startswith(_LEDGER_PENDING_PREFIX) or (
                name.startswith((_REVOKED_PREFIX, _PAIRING_REVOKED_PREFIX)) and value.get("ledger_index") is None
            ):
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
        """Run one binding transaction end to end; raises on any failure, recording nothing."""
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
        used = _AUTHORIZATION_USED_PREFIX + authorization.nonce.hex()
        pending = _LEDGER_PENDING_PREFIX + tx.binding_id
        if used in self.records:
            raise VerificationError(Reason.REPLAY, "this binding authorization was already used")
        try:
            queue = tx.start(self._clock())
            while queue:
                out = queue.pop(0)
                queue.extend(tx.receive(self._deliver(out), self._clock()))
            if tx.phase is not BindingPhase.COMPLETE or tx.record is None:
                raise VerificationError(Reason.MALFORMED, "binding ended incomplete")
            record = tx.record
            with self.records.transaction():
                self.records.put_record(_RECORD_PREFIX + record.binding_id, record.to_json())
                self.records.put_record(used, {"binding_id": record.binding_id})
                self.records.put_record(pending, {"entry": record.ledger_entry()})
            index = self.ledger.append(record.ledger_entry())
            self.records.delete(pending)
        except ModbattError:
            self._abort(tx)
            for name in (used, pending):  # nothing was recorded: the grant stays usable for a retry
                if name in self.records:
                    self.records.delete(name)
            raise
        self.ledger.signed_tree_head()
        log.info("bound %s and %s as %s", entity_a.device_id, entity_b.device_id, record.binding_id)
        return BindingOutcome(record, index)

    def _abort(self, tx: BindingTransaction) -> None:
        # Best effort: tell the entities to drop any keys; the binding was never recorded.
        for out in tx.fail(self._clock()):
            try:
                self._deliver(out)
            except ModbattError as exc:
                log.warning("could not abort binding on %s: %s", out.to.device_id, exc.__class__.__name__)
        if _RECORD_PREFIX + tx.binding_id in self.records:
            self.records.delete(_RECORD_PREFIX + tx.binding_id)

    def record(self, binding_id: str) -> BindingRecord | None:
        name = _RECORD_PREFIX + binding_id
        return BindingRecord.from_json(self.records.record(name)) if name in self.records else None

    @counts_rejections
    def revoke(self, binding_id: str, reason: str = "unbound") -> tuple[RevocationRecord, int, list[str]]:
        """Unbind: record the revocation in the ledger, then tell both entities to destroy their keys.

        The ledger entry is authoritative; an entity that cannot be reached now is listed in
        the returned ``unreached`` device ids and refuses the binding once it learns of it.
        """
        record = self.record(binding_id)
        if record is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
        if self.is_revoked(binding_id):
            raise VerificationError(Reason.REVOKED, f"binding {binding_id} is already revoked")
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
        with self.records.transaction():
            self.records.put_record(_REVOKED_PREFIX + binding_id, {"ledger_index": index})
        self.ledger.signed_tree_head()
        unreached = []
        for entity in (record.entity_a, record.entity_b):
            out = make_revoke_request(self.controller_key, binding_id, entity.access_data, reason, now, self._rng)
            try:
                self._deliver(out)
            except ModbattError:
                unreached.append(entity.access_data.device_id)
        return revocation, index, unreached

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
    ) -> PairingCertificate:
        """Issue a pairing certificate for a live binding and record its issue in the ledger.

        The pairing key, its halves and the exchange key exist only inside
        :func:`~modbatt.protocol.pairing.issue_certificate`; what is stored is
        :class:`~modbatt.protocol.pairing.PendingPairing`, which holds none of them.
        """
        record = self.record(binding_id)
        if record is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
        if self.is_revoked(binding_id):
            raise VerificationError(Reason.REVOKED, f"binding {binding_id} is revoked")
        now = self._clock()
        cert, pending = issue_certificate(
            controller_key=self.controller_key, binding=record, callback=callback, now=now,
            valid_for_s=valid_for_s, max_uses=max_uses, context=context, policy=policy, mode=mode,
            handshake_timeout_s=handshake_timeout_s, rng=self._rng,
        )  # fmt: skip
        self.records.put_record(_PAIRING_PREFIX + pending.pairing_id, pending.to_record())
        self.ledger.append(
            sign_statement(
                self.controller_key,
                "pairing_issued",
                {
                    "pairing_id": pending.pairing_id,
                    "binding_id": binding_id,
                    "certificate_hash": cert.certificate_hash,
                    "metadata_hash": cert.metadata_hash,
                    "context": context,
                    "controller_mode": mode.value,
                    "max_uses": max_uses,
                    "expires_at": format_timestamp(pending.expires_at),
                },
                now,
            )
        )
        self.ledger.signed_tree_head()
        return cert

    def pending_pairing(self, pairing_id: str) -> PendingPairing:
        name = _PAIRING_PREFIX + pairing_id
        if name not in self.records:
            raise VerificationError(Reason.WRONG_SESSION, f"no pairing {pairing_id} was issued")
        return PendingPairing.from_record(self.records.record(name))

    @counts_rejections
    def complete_pairing(self, proof: CompletionProof) -> int:
        """The callback: verify a completion proof and record it; returns its ledger index."""
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
        return _REVOKED_PREFIX + binding_id in self.records

    def rebind(self, old_binding_id: str, authorization: BindingAuthorization) -> BindingOutcome:
        """Revoke a binding (if not yet revoked) and bind the same two entities with fresh keys."""
        old = self.record(old_binding_id)
        if old is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {old_binding_id}")
        if not self.is_revoked(old_binding_id):
            self.revoke(old_binding_id, "re-binding")
        return self.bind(old.entity_a.access_data, old.entity_b.access_data, authorization, supersedes=old_binding_id)
