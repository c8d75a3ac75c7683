"""The auth controller: orchestrates bindings, signs records, keeps the ledger.

It holds its own signing key, the binding records (which carry semi-public keys, so they
stay in its encrypted key store) and the ledger (which holds only commitments). It never
holds an entity's private key. A binding is appended to the ledger only after both
entities acknowledged it; any failure before that aborts the binding on both entities
and records nothing (no half-recorded binding).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ModbattError, Reason, VerificationError
from ..model.access import AccessData
from ..model.binding import BindingAuthorization, BindingRecord, RevocationRecord, format_timestamp
from ..protocol.binding import BindingPhase, BindingTransaction, Outgoing, make_revoke_request
from ..protocol.messages import EntityResponse
from ..transport.http import EntityClient

__all__ = ["AuthController", "BindingOutcome"]

log = logging.getLogger(__name__)

_RECORD_PREFIX = "binding-record/"
_REVOKED_PREFIX = "revoked/"


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

    @property
    def public_key(self) -> PublicKey:
        return self.controller_key.public_key

    def _deliver(self, out: Outgoing) -> EntityResponse:
        answer = self.client.call(out.to.endpoint, out.request.op, out.request.to_json())
        return EntityResponse.from_json(answer)

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
            index = self.ledger.append(record.ledger_entry())
        except ModbattError:
            self._abort(tx)
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
        index = self.ledger.append(revocation.ledger_entry())
        with self.records.transaction():
            self.records.put_record(_REVOKED_PREFIX + binding_id, {"ledger_index": index})
        self.ledger.signed_tree_head()
        unreached = []
        for entity in (record.entity_a, record.entity_b):
            out = make_revoke_request(
                self.controller_key, binding_id, entity.access_data, reason, now, self._rng
            )
            try:
                self._deliver(out)
            except ModbattError:
                unreached.append(entity.access_data.device_id)
        return revocation, index, unreached

    def is_revoked(self, binding_id: str) -> bool:
        return _REVOKED_PREFIX + binding_id in self.records

    def rebind(self, old_binding_id: str, authorization: BindingAuthorization) -> BindingOutcome:
        """Revoke a binding (if not yet revoked) and bind the same two entities with fresh keys."""
        old = self.record(old_binding_id)
        if old is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {old_binding_id}")
        if not self.is_revoked(old_binding_id):
            self.revoke(old_binding_id, "re-binding")
        return self.bind(
            old.entity_a.access_data, old.entity_b.access_data, authorization, supersedes=old_binding_id
        )
