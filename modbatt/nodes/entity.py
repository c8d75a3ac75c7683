"""An entity (pack controller, battery module, …) serving the binding API.

Wires :class:`~modbatt.protocol.binding.BindingEntity` to a key store: every accepted
request is persisted in one atomic key-store transaction *before* the in-memory machine
changes and the answer leaves, and a rejected request changes nothing.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..crypto.keybackend import FileKeyBackend, KeyBackend
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ConfigError, ModbattError, Reason, VerificationError, counts_rejections
from ..model.access import AccessData
from ..model.pairing import PairingCertificate
from ..model.statements import read_statement
from ..protocol.binding import BindingEntity, EntityBindingState, EntityDecision
from ..protocol.messages import OPERATIONS, ControllerRequest
from ..protocol.pairing import PairingParticipant, PairingSecrets, PairingState
from .errors_http import http_status

__all__ = ["EntityNode", "rejection"]

log = logging.getLogger(__name__)

_IDENTITY = "identity"
_CONFIG = "entity-config"
_SEEN = "seen-requests"
_BINDING_PREFIX = "binding/"
_PAIRING = "pairing/"
_PAIRING_USES = "pairing-uses/"
_PAIRING_REVOKED = "pairing-revoked/"


def _key_name(binding_id: str) -> str:
    return f"{_BINDING_PREFIX}{binding_id}/key"


def _record_name(binding_id: str) -> str:
    return f"{_BINDING_PREFIX}{binding_id}"


class EntityNode:
    """An entity's binding service over a key store (any object with the KeyStore API).

    Binding private keys live in ``keys`` (default: the key store itself; a
    :class:`~modbatt.crypto.pkcs11.Pkcs11KeyBackend` keeps them in a token, docs/crypto.md).
    """

    def __init__(
        self,
        keystore: Any,
        *,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        keys: KeyBackend | None = None,
    ):
        self._store = keystore
        self._keys: KeyBackend = keys if keys is not None else FileKeyBackend(keystore)
        self._clock = clock
        self._lock = threading.Lock()
        self.pairings: dict[str, PairingParticipant] = {}
        #: Rejections by reason (binding requests, certificates, offers): failure counters.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        config = keystore.record(_CONFIG) if _CONFIG in keystore else None
        if config is None:
            raise ModbattError("this key store holds no provisioned entity (run provisioning first)")
        bindings = {}
        for name in keystore.names():
            if name.startswith(_BINDING_PREFIX) and not name.endswith("/key"):
                record = keystore.record(name)
                key = self._keys.load(_key_name(record["binding_id"]))
                bindings[record["binding_id"]] = EntityBindingState.from_record(record, key)
        seen = keystore.record(_SEEN) if _SEEN in keystore else {}
        self.machine = BindingEntity(
            identity=keystore.private_key(_IDENTITY),
            access_data=AccessData.from_dict(config["access_data"]),
            controller_key=PublicKey.from_bytes(config["controller_key"]),
            bindings=bindings,
            seen_requests={bytes.fromhex(k): float(v) for k, v in seen.items()},
            rng=rng or SystemRandom(),
            keygen=self._keys.generate,
        )

    @classmethod
    def provision(
        cls,
        keystore: Any,
        *,
        access_data: AccessData,
        controller_key: PublicKey,
        identity: PrivateKey | None = None,
        clock: Callable[[], float] = time.time,
        rng: RandomSource | None = None,
        keys: KeyBackend | None = None,
    ) -> EntityNode:
        """Provision an entity: identity key, access data and the one controller it obeys.

        Idempotent for an already provisioned store: the endpoint may change (a device
        moved), the device id and the trusted controller may not.
        """
        config = {"access_data": access_data.to_dict(), "controller_key": controller_key.to_bytes()}
        existing = keystore.record(_CONFIG) if _CONFIG in keystore else None
        if existing is None:
            with keystore.transaction():
                keystore.put_private_key(_IDENTITY, identity or PrivateKey.generate(rng))
                keystore.put_record(_CONFIG, config)
        elif existing != config:
            if existing["access_data"]["device_id"] != access_data.device_id:
                raise ConfigError("this key store belongs to another device")
            if existing["controller_key"] != config["controller_key"]:
                raise ConfigError("this entity is provisioned for another controller")
            keystore.put_record(_CONFIG, config)
        return cls(keystore, clock=clock, rng=rng, keys=keys)

    @property
    def access_data(self) -> AccessData:
        return self.machine.access_data

    @property
    def keystore(self) -> Any:
        """The key store this entity persists to (identity, binding keys, pairing secrets)."""
        return self._store

    @property
    def identity_key(self) -> PublicKey:
        return self.machine.identity.public_key

    def binding(self, binding_id: str) -> EntityBindingState | None:
        return self.machine.bindings.get(binding_id)

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]:
        """Answer one JSON request for ``/api/binding/<op>``: ``(status, JSON body)``.

        Never raises for bad input: a rejection is a 4xx with ``{"error", "detail"}``.
        """
        if op not in OPERATIONS:
            return 404, {"error": "not_found", "detail": f"no binding operation {op!r}"}
        try:
            request = ControllerRequest.from_json(payload, expected_op=op)
            with self._lock:
                decision = self.machine.decide(request, self._clock())
                self._persist(decision)
                self.machine.apply(decision)
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            return http_status(exc.reason), rejection(exc.reason, exc.detail)
        except ModbattError as exc:
            # Storage failed: nothing was applied, the caller may retry.
            log.error("binding %s failed on this entity: %s", op, exc.__class__.__name__)
            return 503, {"error": "unavailable", "detail": "the entity could not persist the change"}
        return 200, decision.response.to_json()

    def _persist(self, decision: EntityDecision) -> None:
        seen = {rid.hex(): exp for rid, exp in self.machine.seen_requests.items() if exp >= self._clock()}
        seen[decision.request_id.hex()] = decision.forget_after
        # A key backend outside the key store (a token) cannot join its transaction: its key is
        # written before the record and undone if the record fails, and destroyed only after the
        # record is gone, so a record never outlives or precedes its key.
        joined = self._keys.joins_store_transaction
        new_key = None
        try:
            with self._store.transaction():
                if decision.store is not None:
                    state = decision.store
                    if _key_name(state.binding_id) not in self._keys:
                        new_key = _key_name(state.binding_id)
                        self._keys.store(new_key, state.private_key)
                    self._store.put_record(_record_name(state.binding_id), state.to_record())
                if decision.remove is not None:
                    # Revocation destroys the binding key, and the pairings that relied on the
                    # binding are void (seed: re-binding issues new keys, pairings void).
                    if joined and _key_name(decision.remove) in self._keys:
                        self._keys.delete(_key_name(decision.remove))
                    if _record_name(decision.remove) in self._store:
                        self._store.delete(_record_name(decision.remove))
                    for name in self._store.record_names():
                        if name.startswith(_PAIRING) and self._store.record(name).get("binding_id") == decision.remove:
                            self._store.delete(name)
                self._store.put_record(_SEEN, seen)
        except BaseException:
            if new_key is not None and not joined and new_key in self._keys:
                self._keys.delete(new_key)
            raise
        if decision.remove is not None and not joined and _key_name(decision.remove) in self._keys:
            self._keys.delete(_key_name(decision.remove))

    # ----------------------------------------------------------------------- pairing

    @counts_rejections
    def accept_certificate(self, certificate: bytes | PairingCertificate) -> PairingParticipant:
        """Validate a pairing certificate and open this entity's section; counts one use."""
        cert = PairingCertificate.decode(certificate) if isinstance(certificate, (bytes, bytearray)) else certificate
        meta = cert.metadata
        with self._lock:
            if _PAIRING_REVOKED + meta.pairing_id in self._store:
                raise VerificationError(Reason.REVOKED, "this pairing was revoked")
            state = self.machine.bindings.get(meta.binding_id)
            if state is None or state.partner_key is None:
                raise VerificationError(Reason.UNKNOWN_BINDING, "the certificate relies on a binding this entity lacks")
            uses_name = _PAIRING_USES + meta.pairing_id
            used = self._store.record(uses_name) if uses_name in self._store else {}
            uses, sessions = used.get("uses", 0), list(used.get("sessions", []))
            participant = PairingParticipant(
                certificate=cert,
                device_id=self.machine.device_id,
                binding_id=state.binding_id,
                binding_key=state.private_key,
                partner_key=state.partner_key,
                partner_device_id=state.partner_access.device_id,
                controller_key=self.machine.controller_key,
                now=self._clock(),
                uses_so_far=uses,
                rng=self.machine._rng,
                seen_sessions=sessions,
            )
            # The use is counted before any half leaves: a crash cannot buy an extra use.
            self._store.put_record(uses_name, {"uses": uses + 1, "sessions": sessions})
            self.pairings[meta.pairing_id] = participant
        return participant

    def _participant(self, pairing_id: str) -> PairingParticipant:
        participant = self.pairings.get(pairing_id)
        if participant is None:
            raise VerificationError(Reason.WRONG_SESSION, "no pairing in progress with that id")
        return participant

    @counts_rejections
    def pairing_start(self, pairing_id: str) -> bytes:
        return self._participant(pairing_id).start(self._clock())

    @counts_rejections
    def pairing_offer(self, pairing_id: str, offer: bytes) -> bytes | None:
        """Take the partner's offer; persist the secrets once the pairing key is rebuilt."""
        participant = self._participant(pairing_id)
        with self._lock:
            reply = participant.on_offer(offer, self._clock())
            if participant.secrets is not None:
                record = {**participant.secrets.to_record(), "binding_id": participant.metadata.binding_id}
                uses_name = _PAIRING_USES + pairing_id
                used = self._store.record(uses_name) if uses_name in self._store else {"uses": 1}
                # Remember the answered session (with the secrets, atomically): its offer replayed later is refused.
                used["sessions"] = [*used.get("sessions", []), participant.session_nonce]
                with self._store.transaction():
                    self._store.put_record(_PAIRING + pairing_id, record)
                    self._store.put_record(uses_name, used)
        return reply

    def pairings_held(self) -> list[tuple[str, str]]:
        """``(pairing_id, binding_id)`` of every pairing whose secrets this entity holds."""
        out = []
        for name in self._store.record_names():
            if name.startswith(_PAIRING):
                out.append((name[len(_PAIRING) :], str(self._store.record(name).get("binding_id"))))
        return sorted(out)

    def pairing_secrets(self, pairing_id: str) -> PairingSecrets | None:
        name = _PAIRING + pairing_id
        return PairingSecrets.from_record(self._store.record(name)) if name in self._store else None

    def pairing_tick(self) -> list[str]:
        """Time out partial pairings; returns the ids abandoned."""
        now = self._clock()
        dropped = []
        for pid, participant in list(self.pairings.items()):
            participant.tick(now)
            if participant.state is PairingState.TIMED_OUT:
                del self.pairings[pid]
                dropped.append(pid)
        return dropped

    @counts_rejections
    def apply_pairing_revocation(self, notice: bytes) -> str:
        """Act on a controller-signed ``pairing_revoked`` statement: erase the pairing's secrets."""
        statement = read_statement(notice, self.machine.controller_key)
        if statement["kind"] != "pairing_revoked":
            raise VerificationError(Reason.MALFORMED, "not a pairing revocation")
        pairing_id = str(statement["pairing_id"])
        with self._lock, self._store.transaction():
            if _PAIRING + pairing_id in self._store:
                self._store.delete(_PAIRING + pairing_id)
            self._store.put_record(_PAIRING_REVOKED + pairing_id, {"ledger_statement": notice})
        self.pairings.pop(pairing_id, None)
        return pairing_id


def rejection(reason: Reason, detail: str) -> dict[str, Any]:
    """The JSON body of a 4xx answer."""
    return {"error": reason.value, "detail": detail}
