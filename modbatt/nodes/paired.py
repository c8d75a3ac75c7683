"""A pack bound and paired with its modules through the real protocol: the one fixture.

:func:`paired_deployment` makes an :class:`~modbatt.nodes.inmemory.InMemoryDeployment` (real
auth controller, ledger and key stores, explicitly ephemeral channel freshness), binds the pack
to every module and pairs each binding with :func:`~modbatt.nodes.pairing_flow.pair_entities`;
:meth:`PairedDeployment.of` does the same for a deployment the caller made (a test's own world),
and :meth:`PairedDeployment.bind` binds and pairs one module at a time for a caller that runs
something between modules.
What it returns, a :class:`PairedDeployment`, hands out each end's link through its entity's own
:class:`~modbatt.nodes.channel.PairedChannel` (the channel owner), the context that runs the
validation levels over a pairing, and an entity's key store copied to disk for a process that
restores it there. The simulator, the attack scenarios, the notebooks and the tests all start
from here; a pack kept on disk (``modbatt.sim.state.pack_on_disk``) binds and pairs through the
same :func:`bind_and_pair`.

``seed`` makes runs reproducible (it needs ``MODBATT_REPRODUCIBLE=1``, like every seeded source);
``None`` uses the system CSPRNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..can.ids import SEED_LAYOUT, IdLayout
from ..can.wiretime import CLASSIC, BusProfile
from ..crypto.keystore import KeyStore
from ..crypto.rng import RandomSource
from ..crypto.suite import PrivateKey
from ..model.access import AccessData
from ..model.binding import BindingRecord
from ..model.pairing import ControllerMode, PairingCertificate
from ..model.policy import EncryptionPolicy
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from .authority import authorize_binding
from .channel import PairedChannel
from .controller import AuthController
from .entity import EntityNode
from .inmemory import InMemoryDeployment
from .pairing_flow import PairingOutcome, pair_entities

if TYPE_CHECKING:
    from .validation import ValidationContext

__all__ = ["PairedDeployment", "Side", "bind_and_pair", "paired_deployment", "persist_entity"]

#: Which end of a module's pairing: the pack controller's or the module's.
Side = Literal["pack", "module"]


@dataclass
class PairedDeployment:
    """A deployment whose pack is bound to modules ``1..n`` and (unless made with ``pair=False``) paired."""

    dep: InMemoryDeployment
    #: The protocol profile its pairings are issued under (docs/profiles.md).
    profile: ProtocolProfile = DEFAULT_PROFILE
    records: dict[int, BindingRecord] = field(default_factory=dict)
    pairings: dict[int, PairingOutcome] = field(default_factory=dict)
    #: Ledger index of each module's binding record (level 7 proves inclusion of it).
    record_indexes: dict[int, int] = field(default_factory=dict)

    @property
    def pack(self) -> EntityNode:
        return self.dep.pack

    @property
    def controller(self) -> AuthController:
        return self.dep.controller

    def module(self, node_id: int) -> EntityNode:
        return self.dep.modules[node_id]

    def binding_id(self, node_id: int) -> str:
        return self.records[node_id].binding_id

    def pairing_id(self, node_id: int) -> str:
        return self.pairings[node_id].certificate.metadata.pairing_id

    def pairing_ids(self) -> dict[int, str]:
        """Module id to the pairing id of its link."""
        return {node_id: self.pairing_id(node_id) for node_id in self.pairings}

    @property
    def policy(self) -> EncryptionPolicy:
        """The encryption policy the pairing certificates carry (the same for every module)."""
        return next(iter(self.pairings.values())).certificate.metadata.encryption_policy

    def issue_pairing(self, node_id: int, **issue: Any) -> PairingCertificate:
        """A new pairing certificate for module ``node_id``'s binding (``issue`` as for the controller's)."""
        return self.dep.controller.issue_pairing(self.binding_id(node_id), **issue)

    def entity(self, node_id: int, side: Side) -> EntityNode:
        return self.dep.pack if side == "pack" else self.module(node_id)

    def channel(
        self, node_id: int, side: Side, *, profile: BusProfile = CLASSIC, layout: IdLayout = SEED_LAYOUT
    ) -> PairedChannel:
        """The live channel of module ``node_id``'s pairing on the pack's or the module's side."""
        return self.entity(node_id, side).channel(self.pairing_id(node_id), profile=profile, layout=layout)

    def validation(self, node_id: int = 1, **options: Any) -> ValidationContext:
        """The :class:`~modbatt.nodes.validation.ValidationContext` of module ``node_id``'s pairing.

        ``options`` as for :meth:`ValidationContext.from_nodes` (events, clock, rng, carrier).
        """
        from .validation import ValidationContext  # the levels' wiring sits above the fixture

        options.setdefault("record_index", self.record_indexes.get(node_id))
        return ValidationContext.from_nodes(
            self.dep.controller, self.dep.pack, self.module(node_id), self.binding_id(node_id),
            self.pairing_id(node_id), **options,
        )  # fmt: skip

    def restart(self, node_id: int, side: Side) -> EntityNode:
        """Restart one end (a new node on the same key store and channel state)."""
        return self.dep.restart(self.entity(node_id, side))

    def close(self) -> None:
        self.dep.ledger.close()

    @classmethod
    def of(
        cls,
        dep: InMemoryDeployment,
        *,
        profile: ProtocolProfile | str = DEFAULT_PROFILE,
        mode: ControllerMode = ControllerMode.STANDARD,
        pair: bool = True,
    ) -> PairedDeployment:
        """``dep``'s pack bound to each of its modules and, unless ``pair=False``, paired under ``profile``."""
        made = cls(dep, profile_named(profile))
        for node_id in dep.modules:
            made.bind(node_id, mode=mode, pair=pair)
        return made

    def bind(self, node_id: int, *, mode: ControllerMode = ControllerMode.STANDARD, pair: bool = True) -> None:
        """Bind the pack to module ``node_id`` and, unless ``pair=False``, pair them under :attr:`profile`."""
        dep = self.dep
        record, index, pairing = _bind_and_pair_one(
            dep.controller, dep.pack, self.module(node_id), dep.authority_key, dep.clock, dep.rng, self.profile,
            mode=mode, pair=pair,
        )  # fmt: skip
        self.records[node_id], self.record_indexes[node_id] = record, index
        if pairing is not None:
            self.pairings[node_id] = pairing


def _bind_and_pair_one(
    controller: AuthController,
    pack: EntityNode,
    module: EntityNode,
    authority_key: PrivateKey,
    clock: Callable[[], float],
    rng: RandomSource,
    protocol: ProtocolProfile,
    *,
    mode: ControllerMode,
    pair: bool,
) -> tuple[BindingRecord, int, PairingOutcome | None]:
    grant = authorize_binding(authority_key, pack, module, clock(), rng)
    bound = controller.bind(pack.access_data, module.access_data, grant)
    if not pair:
        return bound.record, bound.ledger_index, None
    pairing = pair_entities(controller, pack, module, bound.record.binding_id, mode=mode, profile=protocol)
    return bound.record, bound.ledger_index, pairing


def bind_and_pair(
    controller: AuthController,
    pack: EntityNode,
    modules: dict[int, EntityNode],
    authority_key: PrivateKey,
    clock: Callable[[], float],
    rng: RandomSource,
    protocol: ProtocolProfile = DEFAULT_PROFILE,
    *,
    mode: ControllerMode = ControllerMode.STANDARD,
    pair: bool = True,
) -> tuple[dict[int, BindingRecord], dict[int, PairingOutcome], dict[int, int]]:
    """Bind the pack to every module through ``controller`` (``authority_key`` grants each) and,
    unless ``pair=False``, pair them under ``protocol``: the records, the pairing outcomes, and
    each binding record's ledger index, by module id."""
    records: dict[int, BindingRecord] = {}
    pairings: dict[int, PairingOutcome] = {}
    indexes: dict[int, int] = {}
    for node_id, module in modules.items():
        records[node_id], indexes[node_id], pairing = _bind_and_pair_one(
            controller, pack, module, authority_key, clock, rng, protocol, mode=mode, pair=pair
        )
        if pairing is not None:
            pairings[node_id] = pairing
    return records, pairings, indexes


def paired_deployment(
    seed: int | None = None,
    modules: int = 1,
    *,
    profile: ProtocolProfile | str = DEFAULT_PROFILE,
    mode: ControllerMode = ControllerMode.STANDARD,
    pair: bool = True,
    clock: Callable[[], float] | None = None,
    pack_access: AccessData | None = None,
) -> PairedDeployment:
    """An in-memory pack bound to ``modules`` modules, each pairing issued under ``profile``.

    ``mode`` is the pairings' controller mode; ``pair=False`` stops after binding (scenarios
    that run the pairing themselves); ``clock`` and ``pack_access`` as for :class:`InMemoryDeployment`.
    """
    chosen = profile_named(profile)  # an unknown name fails before anything is made
    dep = InMemoryDeployment(seed=seed, modules=modules, clock=clock, pack_access=pack_access)
    return PairedDeployment.of(dep, profile=chosen, mode=mode, pair=pair)


def persist_entity(node: EntityNode, path: Path) -> Path:
    """Write ``node``'s key store to an encrypted store at ``path`` (key file beside it); the key file.

    What a module in another process restores its entity, and so its channel, from.
    """
    key_file = KeyStore.generate_key_file(path.with_suffix(".kek"))
    source = node.keystore
    disk = KeyStore.create(path, key_file=key_file, reproducible=source.reproducible)
    with disk.transaction():
        for name in source.key_names():
            disk.put_private_key(name, source.private_key(name))
        for name in source.record_names():
            disk.put_record(name, source.record(name))
    disk.close()
    return key_file
