"""Selective encryption on a paired CAN link (docs/seed.md §2.4, §4.2).

One :class:`SelectiveLink` is one entity's end of the link between a pack controller (pairing
role ``a``, sending controller→node) and a module (role ``b``). It holds a secured sender and a
receiver per tier — clear, exchange key, pairing key, and at the binding tier the binding keys
(``seed``) or the binding MAC secret's keys (``efficient``, docs/profiles.md) — and picks the tier
per message from the pairing certificate's :class:`~modbatt.model.policy.EncryptionPolicy`:

* sending below a class's minimum is refused (``tier_too_low``), escalation may only raise it
  (``floor``);
* on receipt, the tier signalled in the identifier is checked against the minimum for the
  class the function code claims, so stripping the flag bits or re-sending a command in clear is
  refused and counted, before any key is used.

Freshness streams are per session, tier and direction. A link has no freshness of its own: the
caller passes the counter stores (reservation windows, so a restart never reuses a nonce) and the
replay windows explicitly. :class:`~modbatt.nodes.channel.PairedChannel` is the one owner that
builds links for a pairing (per session, persisted, resynchronised after a restart); nothing else
should construct one except a test of the link itself.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..can.functions import function_for, message_class_of
from ..can.ids import SEED_LAYOUT, CanIdFields, IdLayout
from ..can.secured import Direction, SecuredPdu, SecuredReceiver, SecuredSender, TrafficKeys, derive_traffic_keys
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.freshness import DEFAULT_RESERVATION, CounterStore, FreshnessCounter, ReplayWindow
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import Reason, VerificationError
from ..model.access import AccessData
from ..model.policy import EncryptionPolicy, MessageClass
from ..model.tier import Tier
from ..protocol.pairing import PairingSecrets

__all__ = [
    "DEFAULT_NODE",
    "FLOOR_EXEMPT",
    "Classifier",
    "Received",
    "SelectiveLink",
    "node_id_of",
    "session_traffic_keys",
]

#: Asked after a frame failed authentication on this link: a more precise refusal (an authentic
#: frame of an earlier session, say), or None to keep ``bad_mac``/``bad_signature``.
Classifier = Callable[[Tier, int, bytes, bool], "VerificationError | None"]

#: CAN node used for a module whose access data names no CAN address (e.g. reached over HTTP).
DEFAULT_NODE = 0x01
#: Classes an escalation floor never raises (docs/lifecycle.md §4, ``raise_floor``): a 1-byte
#: emergency shutdown stays one pairing-tier frame instead of a 72-byte signed multi-frame unit.
FLOOR_EXEMPT = frozenset({MessageClass.EMERGENCY_SHUTDOWN})


def node_id_of(module_access: AccessData) -> int:
    """The CAN node id a module's frames carry: its ``can://…/0xNN`` address, else :data:`DEFAULT_NODE`."""
    node = module_access.can_node
    return DEFAULT_NODE if node is None else node


def session_traffic_keys(
    secrets: PairingSecrets,
    tier: Tier,
    direction: Direction,
    *,
    signer: PrivateKey | None = None,
    verifier: PublicKey | None = None,
) -> TrafficKeys:
    """The CAN keys of one tier and key direction of a pairing session: the one place they are made.

    Exchange and pairing tiers derive from the session's tier secrets. The binding tier follows
    the pairing's protocol profile (docs/profiles.md): ``seed`` signs with the sender's binding key
    (``signer`` when sending, the partner's ``verifier`` when receiving), with the pairing and
    session ids as signature context, so a frame of another pairing or session never verifies;
    ``efficient`` derives AEAD keys from the session's binding MAC secret, which is itself bound
    to the pairing and session. Binding keys outlive pairings; the session's keys do not.
    """
    tier = Tier(tier)
    if tier is Tier.NONE:
        return TrafficKeys.clear(direction)
    if tier is Tier.EXCHANGE:
        return derive_traffic_keys(secrets.exchange_secret, tier, direction)
    if tier is Tier.PAIRING:
        return derive_traffic_keys(secrets.pairing_secret, tier, direction)
    if secrets.binding_secret is not None:
        return derive_traffic_keys(secrets.binding_secret, tier, direction)
    return TrafficKeys.binding(direction, signer=signer, verifier=verifier, context=secrets.context)


@dataclass(frozen=True, slots=True)
class Received:
    """A verified message: what it is, at which tier it came, its payload."""

    message_class: MessageClass
    tier: Tier
    payload: bytes
    fields: CanIdFields


class SelectiveLink:
    """One end of a paired link (one session) with per-class tier selection and policy enforcement.

    ``counter_stores(tier)`` gives the durable store of this end's sending stream at ``tier`` and
    ``windows[tier]`` the replay window of the receiving stream; both are required, so where
    freshness lives is always the caller's explicit choice. ``reservation`` is how many values a
    counter reserves per durable write. ``classify`` refines an authentication failure (see
    :data:`Classifier`).
    """

    def __init__(
        self,
        *,
        secrets: PairingSecrets,
        policy: EncryptionPolicy,
        node: int,
        binding_key: PrivateKey,
        partner_key: PublicKey,
        counter_stores: Callable[[Tier], CounterStore],
        windows: Mapping[Tier, ReplayWindow],
        layout: IdLayout = SEED_LAYOUT,
        profile: BusProfile = CLASSIC,
        classify: Classifier | None = None,
        reservation: int = DEFAULT_RESERVATION,
    ) -> None:
        self.policy = policy
        self.node = node
        self.layout = layout
        self.profile = profile
        self.floor = Tier.NONE
        self.session_id = secrets.session_id
        self.rejects: collections.Counter[Reason] = collections.Counter()
        self._classify = classify
        out_dir = Direction.INITIATOR_TO_RESPONDER if secrets.role == "a" else Direction.RESPONDER_TO_INITIATOR
        in_dir = Direction(1 - out_dir)
        self._out_dir = int(out_dir)
        self.protocol = secrets.profile
        self._senders: dict[Tier, SecuredSender] = {}
        self._receivers: dict[Tier, SecuredReceiver] = {}
        for tier in Tier:
            tx = session_traffic_keys(secrets, tier, out_dir, signer=binding_key)
            rx = session_traffic_keys(secrets, tier, in_dir, verifier=partner_key)
            counter = FreshnessCounter(counter_stores(tier), window=reservation) if tier is not Tier.NONE else None
            self._senders[tier] = SecuredSender(layout, profile, tx, counter)
            if tier is not Tier.NONE and tier not in windows:
                raise ValueError(f"no replay window given for the {tier.label} tier")
            # Clear frames carry no freshness: their receiver's window is never consulted.
            window = windows[tier] if tier is not Tier.NONE else ReplayWindow(1)
            self._receivers[tier] = SecuredReceiver(layout, profile, rx, window)

    @property
    def sending_direction(self) -> int:
        """The seed layout's ``dir`` bit this end sends with (0 controller→node, 1 node→controller)."""
        return self._out_dir

    def escalate(self, floor: Tier) -> None:
        """Raise (or with ``Tier.NONE`` reset) the minimum tier for everything sent but :data:`FLOOR_EXEMPT`."""
        self.floor = Tier(floor)

    def floor_for(self, message_class: MessageClass) -> Tier:
        """The escalation floor that applies to ``message_class`` (none for :data:`FLOOR_EXEMPT`)."""
        return Tier.NONE if MessageClass(message_class) in FLOOR_EXEMPT else self.floor

    def tier_for(self, message_class: MessageClass) -> Tier:
        """The tier :meth:`send` picks for ``message_class``: the policy minimum, raised to the floor."""
        return self.policy.tier_for(message_class, floor=self.floor_for(message_class))

    def send(self, message_class: MessageClass, payload: bytes, *, tier: Tier | None = None) -> SecuredPdu:
        """Protect ``payload`` as ``message_class``; refuses a tier below the policy minimum or the floor."""
        message_class = MessageClass(message_class)
        chosen = self.tier_for(message_class) if tier is None else Tier(tier)
        self.policy.check(message_class, chosen)
        floor = self.floor_for(message_class)
        if chosen < floor:
            raise VerificationError(Reason.TIER_TOO_LOW, f"escalated: nothing below {floor.label}")
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
            try:
                opened = self._receivers[tier].open(can_id, data, reassembled=reassembled)
            except VerificationError as exc:
                if self._classify is None or exc.reason not in (Reason.BAD_MAC, Reason.BAD_SIGNATURE):
                    raise
                better = self._classify(tier, can_id, data, reassembled)
                if better is None:
                    raise
                raise better from None
        except VerificationError as exc:
            self.rejects[exc.reason] += 1
            raise
        return Received(message_class, tier, opened.payload, opened.fields)

    def sender(self, tier: Tier) -> SecuredSender:
        """The secured sender of ``tier`` (the channel answers resync challenges with it)."""
        return self._senders[Tier(tier)]

    def receiver(self, tier: Tier) -> SecuredReceiver:
        """The secured receiver of ``tier`` (the channel resynchronises and classifies with it)."""
        return self._receivers[Tier(tier)]

    def counters(self) -> dict[str, int]:
        """Rejections by reason, for monitors and the attack matrix."""
        return {reason.value: n for reason, n in self.rejects.items()}
