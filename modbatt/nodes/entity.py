"""An entity (pack controller, battery module, …) serving the binding API.

Wires :class:`~modbatt.protocol.binding.BindingEntity` to a key store: every accepted
request is persisted in one atomic key-store transaction *before* the in-memory machine
changes and the answer leaves, and a rejected request changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ConfigError, ModbattError, Reason, VerificationError
from ..model.access import AccessData
from ..protocol.binding import BindingEntity, EntityBindingState, EntityDecision
from ..protocol.messages import OPERATIONS, ControllerRequest
from .errors_http import http_status

__all__ = ["EntityNode", "rejection"]

log = logging.getLogger(__name__)

_IDENTITY = "identity"
_CONFIG = "entity-config"
_SEEN = "seen-requests"
_BINDING_PREFIX = "binding/"


def _key_name(binding_id: str) -> str:
    return f"{_BINDING_PREFIX}{binding_id}/key"


def _record_name(binding_id: str) -> str:
    return f"{_BINDING_PREFIX}{binding_id}"


class EntityNode:
    """An entity's binding service over a key store (any object with the KeyStore API)."""

    def __init__(
        self, keystore: Any, *, clock: Callable[[], float] = time.time, rng: RandomSource | None = None
    ):
        self._store = keystore
        self._clock = clock
        self._lock = threading.Lock()
        config = keystore.record(_CONFIG) if _CONFIG in keystore else None
        if config is None:
            raise ModbattError("this key store holds no provisioned entity (run provisioning first)")
        bindings = {}
        for name in keystore.names():
            if name.startswith(_BINDING_PREFIX) and not name.endswith("/key"):
                record = keystore.record(name)
                key = keystore.private_key(_key_name(record["binding_id"]))
                bindings[record["binding_id"]] = EntityBindingState.from_record(record, key)
        seen = keystore.record(_SEEN) if _SEEN in keystore else {}
        self.machine = BindingEntity(
            identity=keystore.private_key(_IDENTITY),
            access_data=AccessData.from_dict(config["access_data"]),
            controller_key=PublicKey.from_bytes(config["controller_key"]),
            bindings=bindings,
            seen_requests={bytes.fromhex(k): float(v) for k, v in seen.items()},
            rng=rng or SystemRandom(),
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
        return cls(keystore, clock=clock, rng=rng)

    @property
    def access_data(self) -> AccessData:
        return self.machine.access_data

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
            return http_status(exc.reason), rejection(exc.reason, exc.detail)
        except ModbattError as exc:
            # Storage failed: nothing was applied, the caller may retry.
            log.error("binding %s failed on this entity: %s", op, exc.__class__.__name__)
            return 503, {"error": "unavailable", "detail": "the entity could not persist the change"}
        return 200, decision.response.to_json()

    def _persist(self, decision: EntityDecision) -> None:
        seen = {rid.hex(): exp for rid, exp in self.machine.seen_requests.items() if exp >= self._clock()}
        seen[decision.request_id.hex()] = decision.forget_after
        with self._store.transaction():
            if decision.store is not None:
                state = decision.store
                if _key_name(state.binding_id) not in self._store:
                    self._store.put_private_key(_key_name(state.binding_id), state.private_key)
                self._store.put_record(_record_name(state.binding_id), state.to_record())
            if decision.remove is not None:
                # Revocation destroys the binding key: nothing to extract afterwards.
                for name in (_key_name(decision.remove), _record_name(decision.remove)):
                    if name in self._store:
                        self._store.delete(name)
            self._store.put_record(_SEEN, seen)


def rejection(reason: Reason, detail: str) -> dict[str, Any]:
    """The JSON body of a 4xx answer."""
    return {"error": reason.value, "detail": detail}
