"""The victim every scenario attacks: a real pack, bound and paired through the real protocol.

Nothing here is a stand-in: an :class:`~modbatt.workbench.inmemory.InMemoryDeployment` with a real
auth controller, ledger and key stores; bindings and pairings made by the real flows; links are
the real :class:`~modbatt.nodes.link.SelectiveLink`. ``seed`` makes runs reproducible (it needs
``MODBATT_REPRODUCIBLE=1``, like every seeded source); ``None`` uses the system CSPRNG.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..can.wiretime import CLASSIC, BusProfile
from ..model.binding import BindingRecord
from ..model.pairing import ControllerMode
from ..nodes.entity import EntityNode
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.link import SelectiveLink, node_id_of
from ..nodes.pairing_flow import PairingOutcome, pair_entities

__all__ = ["Pack", "RecordingClient", "paired_pack", "tap"]

Side = Literal["pack", "module"]


@dataclass
class Pack:
    """A deployment whose pack is bound and paired with modules ``1..n``."""

    dep: InMemoryDeployment
    records: dict[int, BindingRecord] = field(default_factory=dict)
    pairings: dict[int, PairingOutcome] = field(default_factory=dict)

    def module(self, node_id: int) -> EntityNode:
        return self.dep.modules[node_id]

    def pairing_id(self, node_id: int) -> str:
        return self.pairings[node_id].certificate.metadata.pairing_id

    def link(self, node_id: int, side: Side, *, profile: BusProfile = CLASSIC) -> SelectiveLink:
        """A fresh link end for module ``node_id``'s pairing, on the pack's or the module's side."""
        entity = self.dep.pack if side == "pack" else self.module(node_id)
        binding_id = self.records[node_id].binding_id
        state = entity.binding(binding_id)
        secrets = entity.pairing_secrets(self.pairing_id(node_id))
        assert state is not None and state.partner_key is not None and secrets is not None
        return SelectiveLink(
            secrets=secrets,
            policy=self.pairings[node_id].certificate.metadata.encryption_policy,
            node=node_id_of(self.module(node_id).access_data),
            binding_key=state.private_key,
            partner_key=state.partner_key,
            profile=profile,
        )

    def close(self) -> None:
        self.dep.ledger.close()


def paired_pack(
    seed: int | None, modules: int = 1, *, mode: ControllerMode = ControllerMode.STANDARD, pair: bool = True
) -> Pack:
    """Bind the pack to ``modules`` modules and (unless ``pair=False``) pair each one."""
    pack = Pack(InMemoryDeployment(seed=seed, modules=modules))
    for node_id, module in pack.dep.modules.items():
        pack.records[node_id] = pack.dep.bind(pack.dep.pack, module).record
        if pair:
            pack.pairings[node_id] = pair_entities(
                pack.dep.controller, pack.dep.pack, module, pack.records[node_id].binding_id, mode=mode
            )
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
