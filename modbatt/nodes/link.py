"""Selective encryption on a paired CAN link (seed 2.4, 4.2).

One :class:`SelectiveLink` is one entity's end of the link between a pack controller (pairing
role ``a``, sending controller→node) and a module (role ``b``). It holds a secured sender and a
receiver per tier — clear, exchange key, pairing key, binding keys — and picks the tier per
message from the pairing certificate's :class:`~modbatt.model.policy.EncryptionPolicy`:

* sending below a class's minimum is refused (``tier_too_low``), escalation may only raise it
  (``floor``);
* on receipt, the tier signalled in the identifier is checked against the minimum for the
  class the function code claims, so stripping the flag bits or re-sending a command in clear is
  refused and counted, before any key is used.

Freshness streams are per tier and direction; their counters persist through ``counter_stores``
with a reservation window, so a restart never reuses a nonce.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..can.functions import function_for, message_class_of
from ..can.ids import SEED_LAYOUT, CanIdFields, IdLayout
from ..can.secured import Direction, SecuredPdu, SecuredReceiver, SecuredSender, TrafficKeys, derive_traffic_keys
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.freshness import CounterStore, FreshnessCounter, MemoryCounterStore, ReplayWindow
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import Reason, VerificationError
from ..model.access import AccessData
from ..model.policy import EncryptionPolicy, MessageClass
from ..model.tier import Tier
from ..protocol.pairing import PairingSecrets

__all__ = ["DEFAULT_NODE", "Received", "SelectiveLink", "node_id_of"]

#: CAN node used for a module whose access data names no CAN address (e.g. reached over HTTP).
DEFAULT_NODE = 0x01


def node_id_of(module_access: AccessData) -> int:
    """The CAN node id a module's frames carry: its ``can://…/0xNN`` address, else :data:`DEFAULT_NODE`."""
    node = module_access.can_node
    return DEFAULT_NODE if node is None else node


@dataclass(frozen=True, slots=True)
class Received:
    """A verified message: what it is, at which tier it came, its payload."""

    message_class: MessageClass
    tier: Tier
    payload: bytes
    fields: CanIdFields


class SelectiveLink:
    """One end of a paired link with per-class tier selection and policy enforcement."""

    def __init__(
        self,
        *,
        secrets: PairingSecrets,
        policy: EncryptionPolicy,
        node: int,
        binding_key: PrivateKey,
        partner_key: PublicKey,
        layout: IdLayout = SEED_LAYOUT,
        profile: BusProfile = CLASSIC,
        counter_stores: Callable[[Tier], CounterStore] | None = None,
        windows: Mapping[Tier, ReplayWindow] | None = None,
    ) -> None:
        self.policy = policy
        self.node = node
        self.layout = layout
        self.profile = profile
        self.floor = Tier.NONE
        self.rejects: collections.Counter[Reason] = collections.Counter()
        out_dir = Direction.INITIATOR_TO_RESPONDER if secrets.role == "a" else Direction.RESPONDER_TO_INITIATOR
        in_dir = Direction(1 - out_dir)
        self._out_dir = int(out_dir)
        store_for = counter_stores or (lambda _tier: MemoryCounterStore())
        secret = {Tier.EXCHANGE: secrets.exchange_secret, Tier.PAIRING: secrets.pairing_secret}
        self._senders: dict[Tier, SecuredSender] = {}
        self._receivers: dict[Tier, SecuredReceiver] = {}
        for tier in Tier:
            if tier is Tier.NONE:
                tx, rx = TrafficKeys.clear(out_dir), TrafficKeys.clear(in_dir)
            elif tier is Tier.BINDING:
                # Binding keys outlive pairings: the pairing id in each signature stops a frame of an
                # earlier pairing of the same binding replaying into this link's fresh window.
                context = secrets.pairing_id.encode("ascii")
                tx = TrafficKeys.binding(out_dir, signer=binding_key, context=context)
                rx = TrafficKeys.binding(in_dir, verifier=partner_key, context=context)
            else:
                tx, rx = (
                    derive_traffic_keys(secret[tier], tier, out_dir),
                    derive_traffic_keys(secret[tier], tier, in_dir),
                )
            counter = FreshnessCounter(store_for(tier)) if tier is not Tier.NONE else None
            self._senders[tier] = SecuredSender(layout, profile, tx, counter)
            window = (windows or {}).get(tier)
            self._receivers[tier] = SecuredReceiver(layout, profile, rx, window)

    @property
    def sending_direction(self) -> int:
        """The seed layout's ``dir`` bit this end sends with (0 controller→node, 1 node→controller)."""
        return self._out_dir

    def escalate(self, floor: Tier) -> None:
        """Raise (or with ``Tier.NONE`` reset) the minimum tier for everything sent."""
        self.floor = Tier(floor)

    def send(self, message_class: MessageClass, payload: bytes, *, tier: Tier | None = None) -> SecuredPdu:
        """Protect ``payload`` as ``message_class``; refuses a tier below the policy minimum."""
        message_class = MessageClass(message_class)
        chosen = self.policy.tier_for(message_class, floor=self.floor) if tier is None else Tier(tier)
        self.policy.check(message_class, chosen)
        if chosen < self.floor:
            raise VerificationError(Reason.TIER_TOO_LOW, f"escalated: nothing below {self.floor.label}")
        fields = function_for(message_class).id_fields(self.node, self._out_dir)
        return self._senders[chosen].protect(fields, payload)

    def receive(self, can_id: int, data: bytes, *, reassembled: bool = False) -> Received:
        """Verify one unit from the partner; raises and counts ``VerificationError``."""
        try:
            fields = self.layout.decode(can_id)
            if fields.direction == self._out_dir:
                raise VerificationError(Reason.WRONG_PEER, "frame travels in this end's own direction")
            message_class = message_class_of(fields.function)
            tier = fields.tier if fields.tier is not None else Tier.NONE
            self.policy.check(message_class, tier)  # downgrade: refused before any key is used
            opened = self._receivers[tier].open(can_id, data, reassembled=reassembled)
        except VerificationError as exc:
            self.rejects[exc.reason] += 1
            raise
        return Received(message_class, tier, opened.payload, opened.fields)

    def counters(self) -> dict[str, int]:
        """Rejections by reason, for monitors and the attack matrix."""
        return {reason.value: n for reason, n in self.rejects.items()}
