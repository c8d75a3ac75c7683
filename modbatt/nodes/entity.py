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
from pathlib import Path
from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.keybackend import FileKeyBackend, KeyBackend
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..encoding import strict_loads
from ..errors import (
    ConfigError,
    EncodingError,
    KeyStoreError,
    ModbattError,
    ProtocolError,
    Reason,
    VerificationError,
    counts_rejections,
)
from ..model.access import AccessData
from ..model.pairing import PairingCertificate, Restrictions
from ..model.policy import EncryptionPolicy
from ..model.statements import read_statement
from ..protocol.binding import BindingEntity, EntityBindingState, EntityDecision
from ..protocol.messages import OPERATIONS, ControllerRequest
from ..protocol.pairing import PairingParticipant, PairingSecrets, PairingState
from ..protocol.restrictions import RestrictionGate
from ..protocol.validation.key_loss import KeyLossAnnouncer
from .channel import RETIRED_SESSIONS, ChannelKeys, ChannelObserver, PairedChannel
from .channel_store import ChannelFreshness, FileFreshness
from .errors_http import http_status
from .killpoints import kill_point
from .link import node_id_of
from .renewal import DEFAULT_OVERLAP_S, Handover

__all__ = ["EntityNode", "binding_of_key_name", "rejection"]

log = logging.getLogger(__name__)

_IDENTITY = "identity"
_CONFIG = "entity-config"
_SEEN = "seen-requests"
_BINDING_PREFIX = "binding/"
_PAIRING = "pairing/"
_PAIRING_USES = "pairing-uses/"
_PAIRING_REVOKED = "pairing-revoked/"
#: In a binding record: when the controller requested its keys (ms), to tell which binding supersedes.
_REQUESTED_AT = "requested_at_ms"
#: A renewal's handover begun by this entity (new pairing id -> the old one): a restart finds it.
_HANDOVER = "handover/"
#: The key-loss announcer's next sequence number (it must survive restarts: the verifier keeps a window).
_KEY_LOSS_SEQ = "key-loss-seq"
#: Participant states in which accepting the certificate again hands back the participant as is.
_LIVE_STATES = (PairingState.AWAITING_PARTNER, PairingState.COMPLETING, PairingState.PAIRED)


def _key_name(binding_id: str) -> str:
    return f"{_BINDING_PREFIX}{binding_id}/key"


def binding_of_key_name(name: str) -> str | None:
    """The binding id whose private key the key-store name ``name`` holds, or None."""
    if name.startswith(_BINDING_PREFIX) and name.endswith("/key"):
        return name.removeprefix(_BINDING_PREFIX).removesuffix("/key")
    return None


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
        freshness: ChannelFreshness | None = None,
    ):
        self._store = keystore
        self._keys: KeyBackend = keys if keys is not None else FileKeyBackend(keystore)
        self._clock = clock
        self._lock = threading.Lock()
        self._freshness = freshness
        self._channels: dict[str, PairedChannel] = {}
        self._handovers: dict[str, Handover] = {}
        self.pairings: dict[str, PairingParticipant] = {}
        #: Rejections by reason (binding requests, certificates, offers): failure counters.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        if _CONFIG not in keystore:
            raise ModbattError("this key store holds no provisioned entity (run provisioning first)")
        # Every record the node reads is parsed here, once: a damaged store (a bug, a version from
        # elsewhere, a hostile file that authenticates) is refused at open, naming the record,
        # instead of failing later deep inside a receive path.
        config = _stored(_CONFIG, lambda: keystore.record(_CONFIG))
        bindings = {}
        #: Bindings whose private key is missing or unreadable (docs/lifecycle.md §7): the entity
        #: announces the loss with its identity key (:meth:`announce_key_loss`) and is re-bound.
        self.lost_bindings: list[str] = []
        for name in keystore.names():
            if name.startswith(_BINDING_PREFIX) and not name.endswith("/key"):
                record = _stored(name, lambda name=name: _binding_record(keystore.record(name)))
                try:
                    key = self._keys.load(_key_name(record["binding_id"]))
                except KeyStoreError:
                    self.lost_bindings.append(record["binding_id"])
                    continue
                bindings[record["binding_id"]] = _stored(
                    name, lambda record=record, key=key: EntityBindingState.from_record(record, key)
                )
        seen = (
            _stored(_SEEN, lambda: {bytes.fromhex(k): float(v) for k, v in keystore.record(_SEEN).items()})
            if _SEEN in keystore
            else {}
        )
        self.machine = _stored(
            _CONFIG,
            lambda: BindingEntity(
                identity=keystore.private_key(_IDENTITY),
                access_data=AccessData.from_dict(config["access_data"]),
                controller_key=PublicKey.from_bytes(config["controller_key"]),
                bindings=bindings,
                seen_requests=seen,
                rng=rng or SystemRandom(),
                keygen=self._keys.generate,
            ),
        )
        for name in keystore.record_names():
            if name.startswith(_PAIRING):
                _stored(name, lambda name=name: _pairing_record(keystore.record(name)))

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
        freshness: ChannelFreshness | None = None,
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
        return cls(keystore, clock=clock, rng=rng, keys=keys, freshness=freshness)

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
            step = "entity." + op.replace("-", "_")
            kill_point(f"{step}.received")
            with self._lock:
                decision = self.machine.decide(request, self._clock())
                superseded = self._superseded_by(decision, request.issued_at_ms)
                self._persist(decision, superseded, request.issued_at_ms)
                kill_point(f"{step}.stored")  # and before answering: only memory changes after it
                self.machine.apply(decision)
                for binding_id in superseded:
                    self.machine.bindings.pop(binding_id, None)
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            return http_status(exc.reason), rejection(exc.reason, exc.detail)
        except ModbattError as exc:
            # Storage failed: nothing was applied, the caller may retry.
            log.error("binding %s failed on this entity: %s", op, exc.__class__.__name__)
            return 503, {"error": "unavailable", "detail": "the entity could not persist the change"}
        return 200, decision.response.to_json()

    def _superseded_by(self, decision: EntityDecision, issued_at_ms: int) -> list[str]:
        """Bindings with the same partner that a new binding's generated keys supersede.

        The controller starts binding two entities only when it holds no live binding of them
        (docs/binding.md): a binding of this entity with that partner whose keys were requested
        *earlier* is revoked, or was never recorded (an attempt aborted while this entity was
        down). Its keys go in the transaction that stores the new ones (docs/delivery.md §5). One
        requested later stays: the new request is the late one (a call that overran its claim).
        """
        new = decision.store
        if new is None or new.binding_id in self.machine.bindings:
            return []
        partner = new.partner_access.device_id
        return sorted(
            bid
            for bid, st in self.machine.bindings.items()
            if st.partner_access.device_id == partner and self._requested_at_ms(bid) < issued_at_ms
        )

    def _requested_at_ms(self, binding_id: str) -> int:
        """When the controller requested this binding's keys (0: a record that predates keeping it)."""
        name = _record_name(binding_id)
        return int(self._store.record(name).get(_REQUESTED_AT, 0)) if name in self._store else 0

    def _persist(self, decision: EntityDecision, superseded: list[str], issued_at_ms: int) -> None:
        seen = {rid.hex(): exp for rid, exp in self.machine.seen_requests.items() if exp >= self._clock()}
        seen[decision.request_id.hex()] = decision.forget_after
        # A key backend outside the key store (a token) cannot join its transaction: its key is
        # written before the record and undone if the record fails, and destroyed only after the
        # record is gone, so a record never outlives or precedes its key.
        joined = self._keys.joins_store_transaction
        voided: list[str] = []
        removals = [*([decision.remove] if decision.remove is not None else []), *superseded]
        new_key = None
        try:
            with self._store.transaction():
                if decision.store is not None:
                    state = decision.store
                    if _key_name(state.binding_id) not in self._keys:
                        new_key = _key_name(state.binding_id)
                        self._keys.store(new_key, state.private_key)
                    name = _record_name(state.binding_id)
                    requested = self._store.record(name).get(_REQUESTED_AT, 0) if name in self._store else issued_at_ms
                    self._store.put_record(name, {**state.to_record(), _REQUESTED_AT: requested})
                for removed in removals:
                    # Revocation destroys the binding key, and the pairings that relied on the
                    # binding are void (seed: re-binding issues new keys, pairings void).
                    if joined and _key_name(removed) in self._keys:
                        self._keys.delete(_key_name(removed))
                    if _record_name(removed) in self._store:
                        self._store.delete(_record_name(removed))
                    for name in self._store.record_names():
                        if name.startswith(_PAIRING) and self._store.record(name).get("binding_id") == removed:
                            self._store.delete(name)
                            voided.append(name[len(_PAIRING) :])
                self._store.put_record(_SEEN, seen)
        except BaseException:
            if new_key is not None and not joined and new_key in self._keys:
                self._keys.delete(new_key)
            raise
        for removed in removals:
            if not joined and _key_name(removed) in self._keys:
                self._keys.delete(_key_name(removed))
        self._drop_pairing_state(voided)

    # ----------------------------------------------------------------------- pairing

    @property
    def freshness(self) -> ChannelFreshness:
        """Where this entity's channels keep their freshness (see :mod:`~modbatt.nodes.channel_store`).

        Given at construction, or files beside an on-disk key store (``<store>.freshness/``). An
        in-memory key store has no state directory: asking then is a :class:`ConfigError`, never
        a silent fallback to counters that a restart would reset.
        """
        if self._freshness is None:
            path = getattr(self._store, "path", None)
            if path is None:
                raise ConfigError(
                    "this entity's key store lives in memory, so its channels have nowhere to persist "
                    "freshness: pass freshness=EphemeralFreshness() (a simulation or a test) or use a key store on disk"
                )
            self._freshness = FileFreshness(Path(path).with_suffix(".freshness"))
        return self._freshness

    def _uses(self, pairing_id: str) -> list[bytes]:
        name = _PAIRING_USES + pairing_id
        return [bytes(n) for n in self._store.record(name).get("sessions", [])] if name in self._store else []

    def pairing_uses(self, pairing_id: str) -> list[bytes]:
        """Session nonces of every session this entity derived secrets for (one use each)."""
        return self._uses(pairing_id)

    def _new_participant(self, cert: PairingCertificate) -> PairingParticipant:
        meta = cert.metadata
        state = self.machine.bindings.get(meta.binding_id)
        if state is None or state.partner_key is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, "the certificate relies on a binding this entity lacks")
        sessions = self._uses(meta.pairing_id)
        return PairingParticipant(
            certificate=cert,
            device_id=self.machine.device_id,
            binding_id=state.binding_id,
            binding_key=state.private_key,
            partner_key=state.partner_key,
            partner_device_id=state.partner_access.device_id,
            controller_key=self.machine.controller_key,
            now=self._clock(),
            uses_so_far=len(sessions),
            rng=self.machine._rng,
            seen_sessions=sessions,
        )

    @counts_rejections
    def accept_certificate(self, certificate: bytes | PairingCertificate) -> PairingParticipant:
        """Validate a pairing certificate and open this entity's section. Counts no use.

        Idempotent: while a session is in progress, or after one completed, accepting the same
        certificate again hands back the participant as it is — nothing is reset, nothing is
        counted (the certificate travels in clear, anyone can send it again). A use is counted
        only when a session derives secrets (:meth:`pairing_offer`). Spent uses: ``exhausted``.
        """
        cert = PairingCertificate.decode(certificate) if isinstance(certificate, (bytes, bytearray)) else certificate
        meta = cert.metadata
        with self._lock:
            if _PAIRING_REVOKED + meta.pairing_id in self._store:
                raise VerificationError(Reason.REVOKED, "this pairing was revoked")
            existing = self.pairings.get(meta.pairing_id)
            if existing is not None and existing.state in _LIVE_STATES:
                cert.verify(self.machine.controller_key)
                if cert.metadata_hash != existing.certificate.metadata_hash:
                    raise VerificationError(Reason.DUPLICATE, "another certificate names a pairing in progress")
                if existing.state is not PairingState.PAIRED or len(self._uses(meta.pairing_id)) < meta.max_uses:
                    return existing
            participant = self._new_participant(cert)  # validates everything, including uses left
            self.pairings[meta.pairing_id] = participant
        return participant

    def _participant(self, pairing_id: str) -> PairingParticipant:
        participant = self.pairings.get(pairing_id)
        if participant is None:
            raise VerificationError(Reason.WRONG_SESSION, "no pairing in progress with that id")
        return participant

    @counts_rejections
    def pairing_start(self, pairing_id: str) -> bytes:
        """Entity a: the first offer of a session (a new session once the previous one completed)."""
        with self._lock:
            participant = self._participant(pairing_id)
            if participant.role != "a":
                raise VerificationError(Reason.WRONG_PEER, "only entity a starts a session")
            if participant.state is PairingState.AWAITING_PARTNER:
                if participant.session_nonce is not None:
                    raise VerificationError(Reason.DUPLICATE, "a session of this pairing is in progress")
            else:  # completed or failed: the next session of the same certificate
                participant = self._new_participant(participant.certificate)
                self.pairings[pairing_id] = participant
            return participant.start(self._clock())

    @counts_rejections
    def pairing_offer(self, pairing_id: str, offer: bytes) -> bytes | None:
        """Take the partner's offer; count the use and persist the session once secrets are derived."""
        with self._lock:
            current = self._participant(pairing_id)
            participant = current
            if current.role == "b" and current.state is not PairingState.AWAITING_PARTNER:
                # Entity a began another session, or an offer of an answered session is replayed:
                # the latter is a replay whatever uses are left (its session nonce is remembered).
                if _offer_session(offer) in self._uses(pairing_id):
                    raise VerificationError(Reason.REPLAY, "offer of a session this entity already answered")
                participant = self._new_participant(current.certificate)
            reply = participant.on_offer(offer, self._clock())
            if participant.secrets is not None:
                self._commit_session(participant)
                self.pairings[pairing_id] = participant
        return reply

    def _commit_session(self, participant: PairingParticipant) -> None:
        """Count the use and store the session as current, atomically, before any reply leaves."""
        secrets = participant.secrets
        assert secrets is not None and participant.session_nonce is not None
        meta = participant.metadata
        pid = meta.pairing_id
        sessions = self._uses(pid)
        if len(sessions) >= meta.max_uses:  # the last gate: two sessions raced for the last use
            participant.state = PairingState.FAILED
            raise VerificationError(Reason.EXHAUSTED, f"certificate already used {len(sessions)} time(s)")
        name = _PAIRING + pid
        old = self._store.record(name) if name in self._store else {}
        kept = [secrets.to_record(), *old.get("sessions", [])][: 1 + RETIRED_SESSIONS]
        record = {
            "binding_id": meta.binding_id,
            "role": secrets.role,
            "policy": meta.encryption_policy.to_dict(),
            "restrictions": meta.restrictions.to_dict(),
            "context": meta.context,
            "expires_at": meta.expires_at_ms / 1000,
            "current": secrets.session_id,
            "sessions": kept,
            "opened": [sid for sid in old.get("opened", []) if any(sid == k["session_id"] for k in kept)],
        }
        with self._store.transaction():
            self._store.put_record(name, record)
            self._store.put_record(
                _PAIRING_USES + pid, {"uses": len(sessions) + 1, "sessions": [*sessions, participant.session_nonce]}
            )
        kill_point("entity.pairing_offer.stored")
        if self._freshness is not None or getattr(self._store, "path", None) is not None:
            self.freshness.forget(pid, keep=[k["session_id"] for k in kept])
        live = self._channels.get(pid)
        if live is not None:
            keys = self._channel_keys(pid)
            fresh = self._check_opened(pid, secrets.session_id)
            live.rekey(keys, fresh=fresh)
            self._mark_opened(pid, secrets.session_id)

    def pairings_held(self) -> list[tuple[str, str]]:
        """``(pairing_id, binding_id)`` of every pairing whose secrets this entity holds."""
        out = []
        for name in self._store.record_names():
            if name.startswith(_PAIRING):
                out.append((name[len(_PAIRING) :], str(self._store.record(name).get("binding_id"))))
        return sorted(out)

    def pairing_record(self, pairing_id: str) -> dict[str, Any] | None:
        """What this entity keeps of a pairing it holds (binding, role, policy, restrictions, context,
        expiry, sessions); None when it holds none. The secrets in it never leave the key store."""
        name = _PAIRING + pairing_id
        return self._store.record(name) if name in self._store else None

    def pairing_restrictions(self, pairing_id: str) -> Restrictions:
        """The certificate's restrictions of a pairing this entity holds (none for a record written
        before they were kept)."""
        record = self.pairing_record(pairing_id)
        value = record.get("restrictions") if record is not None else None
        return Restrictions.from_dict(value) if value is not None else Restrictions()

    def pairing_secrets(self, pairing_id: str) -> PairingSecrets | None:
        """The secrets of the pairing's *current* session (None when this entity holds none)."""
        name = _PAIRING + pairing_id
        if name not in self._store:
            return None
        return PairingSecrets.from_record(self._store.record(name)["sessions"][0])

    def _channel_keys(self, pairing_id: str) -> ChannelKeys:
        if _PAIRING_REVOKED + pairing_id in self._store:
            raise VerificationError(Reason.REVOKED, "this pairing was revoked")
        name = _PAIRING + pairing_id
        if name not in self._store:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"this entity holds no pairing {pairing_id}")
        record = self._store.record(name)
        state = self.machine.bindings.get(record["binding_id"])
        if state is None or state.partner_key is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, "the pairing relies on a binding this entity lacks")
        sessions = [PairingSecrets.from_record(r) for r in record["sessions"]]
        module = state.partner_access if sessions[0].role == "a" else self.machine.access_data
        return ChannelKeys(
            secrets=sessions[0],
            policy=EncryptionPolicy.from_dict(record["policy"]),
            node=node_id_of(module),
            binding_key=state.private_key,
            partner_key=state.partner_key,
            retired=tuple(sessions[1:]),
        )

    def _check_opened(self, pairing_id: str, session_id: bytes) -> bool:
        """Whether the session opens fresh (windows at zero) or restarts; refuses lost freshness state."""
        recorded = any(sid == session_id for sid in self._store.record(_PAIRING + pairing_id).get("opened", []))
        on_store = self.freshness.opened(pairing_id, session_id)
        if recorded and not on_store:
            # Counters would restart at zero under keys that already sent: nonce reuse. Refuse.
            raise ConfigError(
                f"the freshness state of pairing {pairing_id} is missing from {self.freshness!r} although its "
                "session was opened before (restored from a backup, or deleted?); re-pair to get new keys"
            )
        return not recorded and not on_store

    def _mark_opened(self, pairing_id: str, session_id: bytes) -> None:
        self.freshness.mark_opened(pairing_id, session_id)  # the store first: a crash leaves "restart"
        name = _PAIRING + pairing_id
        record = self._store.record(name)
        if not any(sid == session_id for sid in record.get("opened", [])):
            self._store.put_record(name, {**record, "opened": [*record.get("opened", []), session_id]})

    def channel(
        self, pairing_id: str, *, profile: BusProfile = CLASSIC, layout: IdLayout = SEED_LAYOUT
    ) -> PairedChannel:
        """The live channel of ``pairing_id`` (created on first use; the same object afterwards).

        The only way to get a link for a pairing. Opened for the first time on its session it
        starts synchronised; opened again (after a restart, or a close) it starts unsynced with a
        resync challenge queued (:meth:`PairedChannel.frames_to_send`). One profile and layout
        per live channel: close it before asking for another.
        """
        with self._lock:
            live = self._channels.get(pairing_id)
            if live is not None:
                if live.profile != profile or live.layout is not layout:
                    on = f"{live.profile.name}/{live.layout.name}"
                    raise ConfigError(f"pairing {pairing_id} has a live channel on {on}; close it first")
                return live
            keys = self._channel_keys(pairing_id)
            sid = keys.secrets.session_id
            fresh = self._check_opened(pairing_id, sid)
            channel = PairedChannel(
                keys, freshness=self.freshness, fresh=fresh, profile=profile, layout=layout,
                rng=self.machine._rng, on_close=self._channel_closed,
                restrictions=RestrictionGate(self.pairing_restrictions(pairing_id)), clock=self._clock,
            )  # fmt: skip
            try:
                self._mark_opened(pairing_id, sid)
            except BaseException:
                channel.close()
                raise
            self._channels[pairing_id] = channel
            return channel

    def handover(
        self,
        old_pairing_id: str,
        new_pairing_id: str,
        *,
        profile: BusProfile = CLASSIC,
        layout: IdLayout = SEED_LAYOUT,
        overlap_s: float = DEFAULT_OVERLAP_S,
    ) -> Handover:
        """The live handover from ``old_pairing_id`` to its renewal ``new_pairing_id`` (docs/lifecycle.md §6).

        Both pairings must be held, of the same binding, role and context. Entity ``a`` sends on
        the new pairing at once if the controller confirmed its completion, entity ``b`` once it
        hears the partner on it. The overlap ends at the old certificate's expiry at the latest.
        A handover this entity began in an earlier life (a restart) ends at once: the old pairing
        is erased and the new one used alone. The same object is handed out to every caller.
        """
        live = self._handovers.get(new_pairing_id)
        if live is not None:
            if live.old_pairing_id != old_pairing_id:
                raise VerificationError(Reason.WRONG_SESSION, f"{new_pairing_id} renews {live.old_pairing_id}")
            return live
        old, new = self.pairing_record(old_pairing_id), self.pairing_record(new_pairing_id)
        if new is None:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"this entity holds no pairing {new_pairing_id}")
        if old is None and self._renewed_by(old_pairing_id) != new_pairing_id:
            raise VerificationError(Reason.UNKNOWN_BINDING, f"this entity holds no pairing {old_pairing_id}")
        same = ("binding_id", "role", "context")
        if old is not None and (old_pairing_id == new_pairing_id or any(old.get(k) != new.get(k) for k in same)):
            raise VerificationError(Reason.WRONG_SESSION, "a renewal is a new pairing of one binding, role and context")
        began_before = _HANDOVER + new_pairing_id in self._store
        channel = self.channel(new_pairing_id, profile=profile, layout=layout)
        if old is None or began_before:
            if old is not None:  # a restart ends the overlap: no window of the old pairing survived it
                self.retire_pairing(old_pairing_id, successor=new_pairing_id)
            handover = Handover(None, channel, old_pairing_id=old_pairing_id, retire=lambda: None)
        else:
            participant = self.pairings.get(new_pairing_id)
            confirmed = new["role"] == "a" and participant is not None and participant.state is PairingState.PAIRED
            self._store.put_record(_HANDOVER + new_pairing_id, {"old": old_pairing_id})
            handover = Handover(
                self.channel(old_pairing_id, profile=profile, layout=layout), channel,
                retire=lambda: self.retire_pairing(old_pairing_id, successor=new_pairing_id),
                overlap_s=overlap_s, deadline=old.get("expires_at"), sending_new=confirmed,
            )  # fmt: skip
        self._handovers[new_pairing_id] = handover
        return handover

    def _renewed_by(self, pairing_id: str) -> str | None:
        name = _PAIRING_REVOKED + pairing_id
        return self._store.record(name).get("renewed_by") if name in self._store else None

    def retire_pairing(self, pairing_id: str, *, successor: str) -> None:
        """Erase a renewed pairing: its secrets, its freshness state and its live channel.

        It is then refused like a revoked one (its certificate can never be accepted again).
        """
        with self._lock, self._store.transaction():
            if _PAIRING + pairing_id in self._store:
                self._store.delete(_PAIRING + pairing_id)
            if _HANDOVER + successor in self._store:
                self._store.delete(_HANDOVER + successor)
            self._store.put_record(_PAIRING_REVOKED + pairing_id, {"renewed_by": successor})
        self._drop_pairing_state([pairing_id])

    def close_channels(self) -> None:
        """Close every live channel (before this node object goes away)."""
        for channel in list(self._channels.values()):
            channel.close()

    def _channel_closed(self, channel: PairedChannel) -> None:
        if self._channels.get(channel.pairing_id) is channel:
            del self._channels[channel.pairing_id]

    def observer(
        self, pairing_id: str, *, profile: BusProfile = CLASSIC, layout: IdLayout = SEED_LAYOUT
    ) -> ChannelObserver:
        """A receive-only view of the pairing's current session for a bus monitor (never sends)."""
        return ChannelObserver(self._channel_keys(pairing_id), layout=layout, profile=profile)

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

    def _drop_pairing_state(self, pairing_ids: list[str]) -> None:
        """After a pairing's records are gone: its live channel refuses, its freshness is erased."""
        for pid in pairing_ids:
            live = self._channels.pop(pid, None)
            if live is not None:
                live.revoke()
            if self._freshness is not None or getattr(self._store, "path", None) is not None:
                self.freshness.forget(pid)
            self.pairings.pop(pid, None)

    def announce_key_loss(self) -> list[bytes]:
        """Act on the key loss found at start-up: the level-1 ``key_loss_announce`` of each lost binding.

        First erases what relied on the lost keys (the binding records and every pairing of those
        bindings, with their freshness state: the ``erase_pairing_secrets`` effect), then signs one
        announce per lost binding with the identity key. ``ProtocolError`` when nothing was lost.
        """
        lost = list(self.lost_bindings)
        if not lost:
            raise ProtocolError("no binding key of this entity is lost")
        with self._lock:
            seq = int(self._store.record(_KEY_LOSS_SEQ)["seq"]) if _KEY_LOSS_SEQ in self._store else 0
            voided = []
            with self._store.transaction():
                for binding_id in lost:
                    for name in (_record_name(binding_id), _key_name(binding_id)):
                        if name in self._store:
                            self._store.delete(name)
                for name in self._store.record_names():
                    if name.startswith(_PAIRING) and self._store.record(name).get("binding_id") in lost:
                        self._store.delete(name)
                        voided.append(name[len(_PAIRING) :])
                self._store.put_record(_KEY_LOSS_SEQ, {"seq": seq + len(lost)})  # before any announce leaves
        self._drop_pairing_state(voided)
        self.lost_bindings = []
        announcer = KeyLossAnnouncer(identity_key=self.machine.identity, access_data=self.access_data, seq=seq)
        return [announcer.announce(self._clock(), binding_id) for binding_id in lost]

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
        self._drop_pairing_state([pairing_id])
        return pairing_id


_DAMAGE = (KeyError, TypeError, ValueError, AttributeError, IndexError, ModbattError)


def _stored(name: str, parse: Callable[[], Any]) -> Any:
    """``parse()`` of a stored record; KeyStoreError naming the record when it does not parse."""
    try:
        return parse()
    except _DAMAGE as exc:
        why = str(exc).strip().splitlines()
        detail = f"{type(exc).__name__}: {why[0][:100]}" if why else type(exc).__name__
        raise KeyStoreError(f"the key store's record {name!r} is damaged ({detail})") from None


def _binding_record(record: Any) -> dict[str, Any]:
    """A stored binding record with its binding id checked (its key is loaded by the caller)."""
    if not isinstance(record, dict) or not isinstance(record.get("binding_id"), str):
        raise EncodingError("a binding record without a binding id")
    return record


def _pairing_record(record: dict[str, Any]) -> None:
    """Check a stored pairing the way :meth:`EntityNode._channel_keys` and the channel read it."""
    sessions, opened = record.get("sessions"), record.get("opened", [])
    if not isinstance(record.get("binding_id"), str) or not isinstance(sessions, list) or not sessions:
        raise EncodingError("a pairing record needs a binding id and its sessions")
    for session in sessions:
        if not isinstance(session, dict):
            raise EncodingError("a pairing session is not a map")
        PairingSecrets.from_record(session)
    EncryptionPolicy.from_dict(record.get("policy"))
    if not isinstance(opened, list) or not all(isinstance(sid, bytes) for sid in opened):
        raise EncodingError("a pairing's opened sessions are not a list of session ids")


def _offer_session(offer: bytes) -> bytes | None:
    """The session nonce an offer claims (unverified: it only picks the reason of a refusal)."""
    try:
        value = strict_loads(offer, max_bytes=1024)
    except EncodingError:
        return None
    nonce = value.get("session_nonce") if isinstance(value, dict) else None
    return nonce if isinstance(nonce, bytes) else None


def rejection(reason: Reason, detail: str) -> dict[str, Any]:
    """The JSON body of a 4xx answer."""
    return {"error": reason.value, "detail": detail}
