"""An in-memory deployment: controller, authority, ledger, a pack controller and N modules.

No disk, no sockets: for the simulator, notebooks, benchmarks and tests. With ``seed`` set
(reproducible mode only, ``MODBATT_REPRODUCIBLE=1``) every key and identifier is the same on
every run; the clock is a settable :class:`ManualClock` unless one is passed in.

Channel freshness is ephemeral here, by explicit choice: every entity gets its own
:class:`~modbatt.nodes.channel_store.EphemeralFreshness` (:attr:`InMemoryDeployment.freshness`),
which survives a simulated restart of a node (:meth:`InMemoryDeployment.restart`) but not the
process. A deployment that must survive the process keeps its entities on disk
(``modbatt.workbench.deployment``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..crypto.keystore import KeyStore
from ..crypto.rng import RandomSource, SeededRandom, SystemRandom
from ..crypto.suite import PrivateKey
from ..ledger import Ledger
from ..model.access import AccessData, LctRef, TransportProtocol
from ..model.binding import BindingAuthorization
from ..transport.http import InProcessEntityClient
from .authority import authorize_binding
from .channel_store import EphemeralFreshness
from .controller import AuthController, BindingOutcome
from .entity import EntityNode

__all__ = ["InMemoryDeployment", "ManualClock", "module_access"]

#: 2027-01-15T08:00:00Z: a fixed start for reproducible runs.
EPOCH = 1_800_000_000.0
PACK_DEVICE = "pack-01"


@dataclass
class ManualClock:
    """A clock the caller advances (simulated time)."""

    now: float = EPOCH

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def module_access(node_id: int, channel: str = "can0") -> AccessData:
    """Access data of module ``node_id`` (0x01-0x1F) on a CAN channel."""
    return AccessData(f"can://{channel}/0x{node_id:02x}", TransportProtocol.CAN, f"module-{node_id:02d}")


class InMemoryDeployment:
    """A pack controller and modules bound and paired through a real controller, all in memory."""

    def __init__(
        self,
        *,
        seed: int | None = None,
        clock: Callable[[], float] | None = None,
        modules: int = 1,
        pack_access: AccessData | None = None,
    ) -> None:
        self.rng: RandomSource = SeededRandom(seed) if seed is not None else SystemRandom()
        self.clock = clock or ManualClock()
        reproducible = self.rng.reproducible
        self.controller_key = PrivateKey.generate(self.rng)
        self.authority_key = PrivateKey.generate(self.rng)
        self.ledger = Ledger(":memory:", signer=self.controller_key, clock=self.clock)
        self.controller_store = KeyStore.in_memory(reproducible=reproducible)
        self.client = InProcessEntityClient({})
        #: Each entity's channel state, by device id (ephemeral: this deployment lives in memory).
        self.freshness: dict[str, EphemeralFreshness] = {}
        self.controller = AuthController(
            controller_key=self.controller_key,
            authority_key=self.authority_key.public_key,
            ledger=self.ledger,
            client=self.client,
            records=self.controller_store,
            clock=self.clock,
            rng=self.rng,
        )
        lct = LctRef("lct:web4:pack-01", "modbatt-ledger")
        self.pack = self.add_entity(
            pack_access or AccessData("can://can0/0xff", TransportProtocol.CAN, PACK_DEVICE, lct)
        )
        self.modules: dict[int, EntityNode] = {}
        for node_id in range(1, modules + 1):
            self.modules[node_id] = self.add_entity(module_access(node_id))

    def add_entity(self, access: AccessData) -> EntityNode:
        freshness = self.freshness.setdefault(access.device_id, EphemeralFreshness())
        node = EntityNode.provision(
            KeyStore.in_memory(reproducible=self.rng.reproducible),
            access_data=access,
            controller_key=self.controller_key.public_key,
            clock=self.clock,
            rng=self.rng,
            freshness=freshness,
        )
        self.client.nodes[access.endpoint] = node
        return node

    def restart(self, node: EntityNode) -> EntityNode:
        """Simulate a restart of ``node``: a new node on the same key store and channel state.

        What the node held only in memory is gone (pairings in progress, live channels and their
        replay windows); the old object's channels are closed, as a dead process lets go of them.
        Callers keep using the returned node (the old one is replaced in :attr:`client`).
        """
        node.close_channels()
        reborn = EntityNode(
            node.keystore, clock=self.clock, rng=self.rng, freshness=self.freshness[node.access_data.device_id]
        )
        self.client.nodes[node.access_data.endpoint] = reborn
        if node is self.pack:
            self.pack = reborn
        for node_id, module in self.modules.items():
            if module is node:
                self.modules[node_id] = reborn
        return reborn

    def authorize(self, a: EntityNode, b: EntityNode) -> BindingAuthorization:
        """The binding authority's grant for ``a`` and ``b`` (the out-of-band step)."""
        return authorize_binding(self.authority_key, a, b, self.clock(), self.rng)

    def bind(self, a: EntityNode, b: EntityNode) -> BindingOutcome:
        return self.controller.bind(a.access_data, b.access_data, self.authorize(a, b))
