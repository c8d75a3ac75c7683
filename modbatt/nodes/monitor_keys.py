"""Decrypting a monitored bus with one entity's key store (``modbatt monitor --keystore``).

A :class:`KeyStoreDecryptor` holds, for every pairing in the key store, a receive-only
:class:`~modbatt.nodes.channel.ChannelObserver` of its current session: the entity's own end
(frames from its partner) and a mirror (frames the entity sent itself), so both directions of
the conversation show in clear. It never sends and never touches the entity's freshness state.
It verifies before it shows: a frame that fails (bad MAC, replay, tier below the policy) is
reported with its reason. Freshness windows advance only after a frame verifies, so forged
frames cannot disturb them; a monitor that joins mid-stream on classic CAN sees frames whose
truncated freshness is far from zero fail until it has followed the stream (docs/can-frames.md).
Resync frames carry no application payload and are shown without plaintext; the observer
follows them, so decryption continues across a restart of either end.
"""

from __future__ import annotations

from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..errors import VerificationError
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy
from .channel import ChannelObserver
from .entity import EntityNode

__all__ = ["KeyStoreDecryptor"]


class KeyStoreDecryptor:
    """Implements the monitor's ``Decryptor`` hook from an entity key store.

    ``policy`` is kept for callers that pass one; the entity's stored policy of each pairing
    (the certificate's) is what the observer checks.
    """

    def __init__(
        self,
        keystore: Any,
        *,
        layout: IdLayout = SEED_LAYOUT,
        profile: BusProfile = CLASSIC,
        policy: EncryptionPolicy = DEFAULT_POLICY,
    ) -> None:
        node = EntityNode(keystore)
        self.device_id = node.access_data.device_id
        self._observers: dict[int, ChannelObserver] = {}
        for pairing_id, _binding_id in node.pairings_held():
            try:
                observer = node.observer(pairing_id, layout=layout, profile=profile)
            except VerificationError:
                continue  # its binding is gone: nothing to decrypt with
            self._observers[observer.node] = observer

    @property
    def nodes(self) -> list[int]:
        """CAN node ids this key store can decrypt."""
        return sorted(self._observers)

    def decrypt(self, msg: Any, id_fields: Any) -> bytes | None:
        observer = self._observers.get(getattr(id_fields, "node", None))
        if observer is None:
            return None
        # Resync frames carry no payload; the observer follows them to keep its windows in step.
        got = observer.receive(msg.arbitration_id, bytes(msg.data), reassembled=len(msg.data) > 8 and not msg.is_fd)
        return None if got is None else got.payload
