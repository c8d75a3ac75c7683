"""A node's escalation intake: the gate, its replay windows in the node's key store, the policy.

The rules (signature, replay window, rate limit, the policy's levels and hold time) live in
:mod:`modbatt.protocol.validation.escalation`; this module keeps the gate's windows where a restart
finds them (docs/validation.md §3, escalation replay across restarts).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from ..crypto.suite import PublicKey, sha256
from ..errors import VerificationError
from ..protocol.validation import (
    EscalationGate,
    EscalationPolicy,
    SeenWindow,
    SignedEscalation,
)
from .entity import EntityNode

__all__ = ["EscalationReceiver"]


#: Key-store records of a receiving node's escalation replay windows, one per binding and sender.
_ESCALATION_SEEN_PREFIX = "escalation-seen/"


def _seen_name(window: SeenWindow) -> str:
    stream = f"{window.binding_id}\n{window.sender}".encode()
    return _ESCALATION_SEEN_PREFIX + sha256(stream).hex()


class EscalationReceiver:
    """A node's escalation intake: the gate, its replay windows kept in the node's key store, the policy.

    The gate's windows are loaded from ``node``'s key store at construction and every change is
    written back, in one key-store transaction, *before* the policy acts on the request: a
    request accepted once stays refused (``replay``) after the node restarts, and a request the
    node could not record is not acted on. ``keys`` (sender device id to the binding key it signs
    with) defaults to the partners of every binding ``node`` holds. One request at a time.
    """

    def __init__(
        self,
        node: EntityNode,
        policy: EscalationPolicy,
        *,
        keys: Mapping[str, PublicKey] | None = None,
        burst: int = 3,
        refill_s: float = 60.0,
    ) -> None:
        self.node = node
        self.policy = policy
        store = node.keystore
        if keys is None:
            keys = {
                state.partner_access.device_id: state.partner_key
                for state in node.machine.bindings.values()
                if state.partner_key is not None and state.partner_access is not None
            }
        seen = [
            SeenWindow.from_record(store.record(n))
            for n in store.record_names()
            if n.startswith(_ESCALATION_SEEN_PREFIX)
        ]
        self.gate = EscalationGate(keys, receiver=node.access_data.device_id, seen=seen, burst=burst, refill_s=refill_s)
        self._lock = threading.Lock()

    def receive(self, escalation: SignedEscalation, now: float) -> dict[str, Any]:
        """Admit, persist, then act; returns the policy's event (``rejected`` for a refused request)."""
        with self._lock:
            try:
                request = self.gate.admit(escalation, now)
            except VerificationError as exc:
                return self.policy.reject(escalation.sender, exc.reason, now)
            store = self.node.keystore
            with store.transaction():
                for window in self.gate.drain_seen():
                    store.put_record(_seen_name(window), window.to_record())
            return self.policy.request(request, escalation.sender, now)
