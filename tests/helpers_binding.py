"""Shared fixtures for binding tests: a reproducible deployment with a settable clock."""

from __future__ import annotations

from dataclasses import dataclass, field

from modbatt.crypto.keystore import KeyStore
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import PrivateKey
from modbatt.ledger import Ledger
from modbatt.model import AccessData, LctRef, TransportProtocol
from modbatt.nodes.authority import authorize_binding
from modbatt.nodes.controller import AuthController
from modbatt.nodes.entity import EntityNode
from modbatt.transport.http import InProcessEntityClient

T0 = 1_800_000_000.0


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """A controller, an authority and two entities, all in memory and seeded."""

    seed: int = 7
    clock: Clock = field(default_factory=Clock)

    def __post_init__(self) -> None:
        self.rng = SeededRandom(self.seed)
        self.controller_key = PrivateKey.generate(self.rng)
        self.authority_key = PrivateKey.generate(self.rng)
        self.ledger = Ledger(":memory:", signer=self.controller_key, clock=self.clock)
        self.controller_store = KeyStore.in_memory(reproducible=True)
        lct = LctRef("lct:web4:test", "test-ledger")
        self.access = {
            "pack": AccessData("http://pack.invalid", TransportProtocol.HTTP, "pack-01", lct),
            "module": AccessData("can://can0/0x01", TransportProtocol.CAN, "module-01"),
        }
        self.stores = {name: KeyStore.in_memory(reproducible=True) for name in self.access}
        self.nodes = {
            name: EntityNode.provision(
                self.stores[name],
                access_data=a,
                controller_key=self.controller_key.public_key,
                clock=self.clock,
                rng=self.rng,
            )
            for name, a in self.access.items()
        }
        self.client = InProcessEntityClient({a.endpoint: self.nodes[n] for n, a in self.access.items()})
        self.controller = AuthController(
            controller_key=self.controller_key,
            authority_key=self.authority_key.public_key,
            ledger=self.ledger,
            client=self.client,
            records=self.controller_store,
            clock=self.clock,
            rng=self.rng,
        )

    @property
    def pack(self) -> EntityNode:
        return self.nodes["pack"]

    @property
    def module(self) -> EntityNode:
        return self.nodes["module"]

    def authorization(self, **overrides):
        auth = authorize_binding(self.authority_key, self.pack, self.module, self.clock(), self.rng)
        return auth

    def bind(self):
        return self.controller.bind(self.pack.access_data, self.module.access_data, self.authorization())
