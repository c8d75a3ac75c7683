"""The victim every scenario attacks: a real pack, bound and paired through the real protocol.

Nothing here is a stand-in: an :class:`~modbatt.nodes.inmemory.InMemoryDeployment` with a real
auth controller, ledger and key stores; bindings and pairings made by the real flows; link ends
are the entities' own :class:`~modbatt.nodes.channel.PairedChannel` (what a deployment uses).
``seed`` makes runs reproducible (it needs ``MODBATT_REPRODUCIBLE=1``, like every seeded
source); ``None`` uses the system CSPRNG.

What an attacker builds for itself (a sender from secrets it stole) is :func:`forged_sender`:
its in-memory counter is the attacker's explicit choice, never the victim's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..can.ids import SEED_LAYOUT
from ..can.secured import Direction, SecuredSender, TrafficKeys, derive_traffic_keys
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.freshness import FreshnessCounter, MemoryCounterStore
from ..crypto.suite import PrivateKey
from ..model.binding import BindingRecord
from ..model.pairing import ControllerMode
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.channel import PairedChannel
from ..nodes.entity import EntityNode
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import PairingOutcome, pair_entities
from ..protocol.pairing import PairingSecrets
from . import onbus

__all__ = ["Pack", "RecordingClient", "forged_sender", "on_bus", "paired_pack", "tap"]

Side = Literal["pack", "module"]


@dataclass
class Pack:
    """A deployment whose pack is bound and paired with modules ``1..n``."""

    dep: InMemoryDeployment
    #: The protocol profile its pairings are issued under (docs/profiles.md).
    profile: ProtocolProfile = DEFAULT_PROFILE
    records: dict[int, BindingRecord] = field(default_factory=dict)
    pairings: dict[int, PairingOutcome] = field(default_factory=dict)

    def module(self, node_id: int) -> EntityNode:
        return self.dep.modules[node_id]

    def pairing_id(self, node_id: int) -> str:
        return self.pairings[node_id].certificate.metadata.pairing_id

    def entity(self, node_id: int, side: Side) -> EntityNode:
        return self.dep.pack if side == "pack" else self.module(node_id)

    def link(self, node_id: int, side: Side, *, profile: BusProfile = CLASSIC) -> PairedChannel:
        """The live channel of module ``node_id``'s pairing on the pack's or the module's side.

        Inside :func:`~modbatt.attacks.onbus.attack_bus` its receive path is the bus (see :func:`on_bus`).
        """
        return on_bus(self.entity(node_id, side).channel(self.pairing_id(node_id), profile=profile))

    def restart(self, node_id: int, side: Side) -> EntityNode:
        """Restart one end (a new node on the same key store and channel state)."""
        return self.dep.restart(self.entity(node_id, side))

    def close(self) -> None:
        self.dep.ledger.close()


def on_bus(channel: PairedChannel) -> PairedChannel:
    """``channel`` as scenarios use it: what is delivered to it crosses the attack bus when one is active."""
    bus = onbus.active()
    return channel if bus is None else bus.wrap(channel)  # type: ignore[return-value]


def forged_sender(
    secrets: PairingSecrets,
    tier: Tier,
    *,
    direction: Direction = Direction.INITIATOR_TO_RESPONDER,
    profile: BusProfile = CLASSIC,
    signer: PrivateKey | None = None,
    secret: bytes | None = None,
    start: int = 0,
) -> SecuredSender:
    """An attacker's own sender at ``tier`` from secrets (or a binding key) it holds.

    At the binding tier it signs with ``signer`` when the pairing's profile signs (``seed``) and
    seals under keys from ``secret`` (its guess of the binding MAC secret) when it does not.
    The counter is in memory and starts at ``start``: an attacker does not care about nonce
    reuse, and this is never a channel of the victim's.
    """
    if tier is Tier.BINDING and secrets.profile.binding_mac:
        keys = derive_traffic_keys(secret if secret is not None else bytes(32), tier, direction)
    elif tier is Tier.BINDING:
        keys = TrafficKeys.binding(direction, signer=signer, context=secrets.context)
    else:
        secret = secrets.pairing_secret if tier is Tier.PAIRING else secrets.exchange_secret
        keys = derive_traffic_keys(secret, tier, direction)
    return SecuredSender(SEED_LAYOUT, profile, keys, FreshnessCounter(MemoryCounterStore(start)))


def paired_pack(
    seed: int | None,
    modules: int = 1,
    *,
    mode: ControllerMode = ControllerMode.STANDARD,
    pair: bool = True,
    profile: ProtocolProfile = DEFAULT_PROFILE,
) -> Pack:
    """Bind the pack to ``modules`` modules and (unless ``pair=False``) pair each one under ``profile``."""
    pack = Pack(InMemoryDeployment(seed=seed, modules=modules), profile=ProtocolProfile(profile))
    for node_id, module in pack.dep.modules.items():
        pack.records[node_id] = pack.dep.bind(pack.dep.pack, module).record
        if pair:
            pack.pairings[node_id] = pair_entities(
                pack.dep.controller, pack.dep.pack, module, pack.records[node_id].binding_id, mode=mode,
                profile=profile,
            )  # fmt: skip
    return pack


class RecordingClient:
    """Wraps the controller's entity client: keeps every request and answer (a network tap).

    ``tamper(endpoint, op, answer) -> answer`` lets a man in the middle rewrite answers.
    """

    def __init__(self, inner: Any, tamper: Callable[[str, str, Any], Any] | None = None) -> None:
        self.inner = inner
        self.tamper = tamper
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def call(self, endpoint: str, op: str, payload: dict[str, Any]) -> Any:
        self.calls.append((endpoint, op, copy.deepcopy(payload)))
        answer = self.inner.call(endpoint, op, payload)
        return self.tamper(endpoint, op, answer) if self.tamper is not None else answer


def tap(dep: InMemoryDeployment, tamper: Callable[[str, str, Any], Any] | None = None) -> RecordingClient:
    """Put a :class:`RecordingClient` between the controller and the entities."""
    client = RecordingClient(dep.controller.client, tamper)
    dep.controller.client = client
    return client
