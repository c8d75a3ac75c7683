"""Decrypting a monitored bus with one entity's key store (``modbatt monitor --keystore``).

A :class:`KeyStoreDecryptor` holds, for every pairing in the key store, two receive-only ends of
the paired link: the entity's own (frames from its partner) and a mirror (frames the entity sent
itself), so both directions of the conversation show in clear. It verifies before it shows:
a frame that fails (bad MAC, replay, tier below the policy) is reported with its reason.
Freshness windows advance only after a frame verifies, so forged frames cannot disturb them;
a monitor that joins mid-stream on classic CAN may need to see a resync before truncated
freshness values reconstruct (docs/can-frames.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..model.policy import DEFAULT_POLICY, EncryptionPolicy
from .entity import EntityNode
from .link import SelectiveLink, node_id_of

__all__ = ["KeyStoreDecryptor"]


class KeyStoreDecryptor:
    """Implements the monitor's ``Decryptor`` hook from an entity key store."""

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
        self._links: dict[int, tuple[SelectiveLink, SelectiveLink]] = {}
        for pairing_id, binding_id in node.pairings_held():
            state = node.binding(binding_id)
            secrets = node.pairing_secrets(pairing_id)
            if state is None or state.partner_key is None or secrets is None:
                continue
            can_node = node_id_of(state.partner_access if secrets.role == "a" else node.access_data)
            own_public = state.private_key.public_key
            own = SelectiveLink(secrets=secrets, policy=policy, node=can_node, binding_key=state.private_key,
                                partner_key=state.partner_key, layout=layout, profile=profile)  # fmt: skip
            mirror_secrets = replace(secrets, role="b" if secrets.role == "a" else "a")
            mirror = SelectiveLink(secrets=mirror_secrets, policy=policy, node=can_node, binding_key=state.private_key,
                                   partner_key=own_public, layout=layout, profile=profile)  # fmt: skip
            self._links[can_node] = (own, mirror)

    @property
    def nodes(self) -> list[int]:
        """CAN node ids this key store can decrypt."""
        return sorted(self._links)

    def decrypt(self, msg: Any, id_fields: Any) -> bytes | None:
        ends = self._links.get(getattr(id_fields, "node", None))
        if ends is None:
            return None
        own, mirror = ends
        # Frames in the entity's own sending direction are its own: the mirror end reads them.
        link = mirror if id_fields.direction == own._out_dir else own
        return link.receive(
            msg.arbitration_id, bytes(msg.data), reassembled=len(msg.data) > 8 and not msg.is_fd
        ).payload
