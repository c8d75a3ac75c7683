"""Shared fixture for binding tests: the in-memory deployment, named for the tests.

``World`` is :class:`modbatt.nodes.inmemory.InMemoryDeployment` with one module, a pack reached
over HTTP, and the entities kept in a dict by role so a test can swap one (e.g. re-home it on a
disk key store or behind a real HTTP server) and have ``pack``/``module``/``bind`` follow.
"""

from __future__ import annotations

from typing import Any

from modbatt.model import AccessData, LctRef, TransportProtocol
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.inmemory import InMemoryDeployment, ManualClock

PACK_ACCESS = AccessData(
    "http://pack.invalid", TransportProtocol.HTTP, "pack-01", LctRef("lct:web4:test", "test-ledger")
)


class World(InMemoryDeployment):
    """A controller, an authority, a pack and a module, all in memory and seeded."""

    def __init__(self, seed: int = 7, clock: ManualClock | None = None) -> None:
        super().__init__(seed=seed, clock=clock or ManualClock(), modules=1, pack_access=PACK_ACCESS)
        self.nodes["module"] = self.modules[1]
        self.access = {role: node.access_data for role, node in self.nodes.items()}
        self.stores = {role: node.keystore for role, node in self.nodes.items()}

    # The base class assigns ``self.pack``; keep it in ``nodes`` so swapping a node is one assignment.
    @property  # type: ignore[override]
    def pack(self) -> EntityNode:
        return self.nodes["pack"]

    @pack.setter
    def pack(self, node: EntityNode) -> None:
        self.__dict__.setdefault("nodes", {})["pack"] = node

    @property
    def module(self) -> EntityNode:
        return self.nodes["module"]

    def restart(self, node: EntityNode) -> EntityNode:
        """A simulated restart that ``pack``/``module`` follow."""
        reborn = super().restart(node)
        for role, held in self.nodes.items():
            if held is node:
                self.nodes[role] = reborn
        return reborn

    def authorization(self) -> Any:
        return self.authorize(self.pack, self.module)

    def bind(self, a: EntityNode | None = None, b: EntityNode | None = None) -> Any:  # type: ignore[override]
        return super().bind(a or self.pack, b or self.module)
