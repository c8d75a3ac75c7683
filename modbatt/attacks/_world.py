"""The victim every scenario attacks: a real pack, bound and paired through the real protocol.

Nothing here is a stand-in: the deployment is :func:`~modbatt.nodes.paired.paired_deployment`
(a real auth controller, ledger and key stores; bindings and pairings made by the real flows);
link ends are the entities' own :class:`~modbatt.nodes.channel.PairedChannel` (what a deployment
uses), delivered across the attack bus when one is active.
``seed`` makes runs reproducible (it needs ``MODBATT_REPRODUCIBLE=1``, like every seeded
source); ``None`` uses the system CSPRNG.

What an attacker builds for itself (a sender from secrets it stole) is :func:`forged_sender`:
its in-memory counter is the attacker's explicit choice, never the victim's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from ..can.ids import SEED_LAYOUT
from ..can.secured import Direction, SecuredSender, TrafficKeys, derive_traffic_keys
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.freshness import FreshnessCounter, MemoryCounterStore
from ..crypto.suite import PrivateKey
from ..model.pairing import ControllerMode
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.channel import PairedChannel
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.paired import PairedDeployment, Side, paired_deployment
from ..protocol.pairing import PairingSecrets
from . import onbus

__all__ = ["Pack", "RecordingClient", "forged_sender", "on_bus", "paired_pack", "tap"]


class Pack(PairedDeployment):
    """The victim: a :class:`~modbatt.nodes.paired.PairedDeployment` whose links cross the attack bus."""

    def link(self, node_id: int, side: Side, *, profile: BusProfile = CLASSIC) -> PairedChannel:
        """The live channel of module ``node_id``'s pairing on the pack's or the module's side.

        Inside :func:`~modbatt.attacks.onbus.attack_bus` its receive path is the bus (see :func:`on_bus`).
        """
        return on_bus(self.channel(node_id, side, profile=profile))


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
    made = paired_deployment(seed, modules, mode=mode, pair=pair, profile=profile)
    return Pack(made.dep, made.profile, made.records, made.pairings, made.record_indexes)


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
