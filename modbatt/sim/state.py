"""What a pack simulation runs on: its entities, their pairings and where their state lives.

Two setups, and the choice is always explicit (docs/simulation.md, "modbatt sim"):

* :func:`ephemeral_pack` — everything in memory (:func:`~modbatt.nodes.paired.paired_deployment`):
  keys, ledger and channel freshness are gone when the process ends. Tests, notebooks, and
  ``modbatt sim --ephemeral``.
* :func:`pack_on_disk` — a pack under a state directory: the controller's and the authority's key
  stores, the ledger, and one encrypted key store per entity (key file beside it), each entity's
  channel freshness in files beside its store (:class:`~modbatt.nodes.channel_store.FileFreshness`).
  The first run binds and pairs every module through the real controller; every later run opens
  the same entities, so their channels restart on the same sessions with counters past every
  value they ever reserved (a rerun never reuses a nonce) and resynchronise on the bus.

Either is a :class:`PackSetup`, which :class:`~modbatt.sim.pack.PackSimulation` takes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..crypto.keystore import KeyStore
from ..crypto.rng import SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ConfigError
from ..files import write_atomic
from ..ledger import Ledger
from ..model.access import MODULE_NODES, AccessData, LctRef, TransportProtocol
from ..model.policy import EncryptionPolicy
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..nodes.controller import AuthController
from ..nodes.entity import EntityNode
from ..nodes.inmemory import module_access
from ..nodes.paired import bind_and_pair, paired_deployment
from ..transport.http import InProcessEntityClient

__all__ = ["MANIFEST", "PackSetup", "check_modules", "ephemeral_pack", "pack_on_disk"]

#: The state directory's description of its pack (module count, pairing per module).
MANIFEST = "pack.json"
_FORMAT = 1
PACK_DEVICE = "pack-01"


@dataclass
class PackSetup:
    """A bound and paired pack: the pack controller's node, each module's node, the pairings."""

    pack: EntityNode
    modules: dict[int, EntityNode]
    pairings: dict[int, str]  # module id -> pairing id
    policy: EncryptionPolicy
    #: Where channel freshness lives: ``"ephemeral"`` or the state directory.
    freshness: str
    #: The protocol profile of every pairing (docs/profiles.md).
    protocol: ProtocolProfile = DEFAULT_PROFILE
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def close(self) -> None:
        """Close every channel (freshness files are let go) and the stores behind them."""
        for node in (self.pack, *self.modules.values()):
            node.close_channels()
        while self._closers:
            self._closers.pop()()


def check_modules(modules: int) -> None:
    """ConfigError unless ``modules`` is a pack's size (1-31)."""
    if not 1 <= modules <= len(MODULE_NODES):
        raise ConfigError("a pack has 1-31 modules (module ids 0x01-0x1F)")


def ephemeral_pack(
    modules: int, seed: int | None = None, protocol: ProtocolProfile | str = DEFAULT_PROFILE
) -> PackSetup:
    """A pack bound and paired in memory under ``protocol`` (``seed``: reproducible keys,
    ``MODBATT_REPRODUCIBLE=1`` only): :func:`~modbatt.nodes.paired.paired_deployment`."""
    check_modules(modules)
    made = paired_deployment(seed, modules, profile=protocol)
    dep = made.dep
    return PackSetup(
        dep.pack, dict(dep.modules), made.pairing_ids(), made.policy, "ephemeral", made.profile, [dep.ledger.close]
    )


def _store(path: Path) -> KeyStore:
    """The encrypted key store at ``path`` (key file beside it), created on first use."""
    key_file = path.with_suffix(".kek")
    if path.exists():
        return KeyStore.open(path, key_file=key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        KeyStore.generate_key_file(key_file)
    return KeyStore.create(path, key_file=key_file)


def _role_key(store: KeyStore, name: str) -> PrivateKey:
    if name not in store.names():
        store.put_private_key(name, PrivateKey.generate())
    return store.private_key(name)


def pack_on_disk(
    state_dir: str | os.PathLike[str], modules: int, protocol: ProtocolProfile | str | None = None
) -> PackSetup:
    """The pack kept under ``state_dir``: created, bound and paired on first use, reopened afterwards.

    ``protocol`` is the pairings' protocol profile (docs/profiles.md): the default profile for a new
    pack; a reopened pack keeps the one it was paired under, and naming another is refused.
    Raises :class:`~modbatt.errors.ConfigError` when the directory holds a pack of another size,
    another profile, or something that is not a pack, before anything is written.
    """
    check_modules(modules)
    wanted = profile_named(protocol) if protocol is not None else None
    root = Path(state_dir)
    if root.exists() and not root.is_dir():
        raise ConfigError(f"state {os.fspath(root)!r} exists and is not a directory")
    manifest_path = root / MANIFEST
    manifest = None
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            held = int(manifest["modules"])
            pairings = {int(k): str(v) for k, v in manifest["pairings"].items()}
            held_protocol = ProtocolProfile(manifest.get("protocol", DEFAULT_PROFILE.value))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"{manifest_path} is not a modbatt sim state (unreadable {MANIFEST})") from None
        if held != modules:
            raise ConfigError(
                f"state {os.fspath(root)!r} holds a pack of {held} modules, not {modules}: pass --modules {held} "
                f"or another --state"
            )
        if wanted is not None and wanted is not held_protocol:
            raise ConfigError(
                f"state {os.fspath(root)!r} holds a pack paired under the {held_protocol.value} profile, "
                f"not {wanted.value}: pass --profile {held_protocol.value} or another --state"
            )
    elif root.exists() and any(root.iterdir()):
        raise ConfigError(f"state {os.fspath(root)!r} is not empty and holds no {MANIFEST}: not a modbatt sim state")
    entities = root / "entities"
    stores: list[KeyStore] = []

    def entity(access: AccessData, controller_key: PublicKey | None = None) -> EntityNode:
        store = _store(entities / f"{access.device_id}.keystore")
        stores.append(store)
        if controller_key is None:
            return EntityNode(store)  # freshness: files beside the store (FileFreshness)
        return EntityNode.provision(store, access_data=access, controller_key=controller_key)

    def close_stores() -> None:
        for store in stores:
            store.close()

    lct = LctRef("lct:web4:pack-01", "modbatt-ledger")
    pack_access = AccessData("can://can0/0xff", TransportProtocol.CAN, PACK_DEVICE, lct)
    if manifest is not None:
        pack = entity(pack_access)
        nodes = {n: entity(module_access(n)) for n in range(1, modules + 1)}
        policy = EncryptionPolicy.from_dict(manifest["policy"])
        return PackSetup(pack, nodes, pairings, policy, os.fspath(root), held_protocol, [close_stores])
    chosen = wanted if wanted is not None else DEFAULT_PROFILE
    root.mkdir(parents=True, exist_ok=True)
    controller_store = _store(root / "controller.keystore")
    controller_key = _role_key(controller_store, "controller")
    authority_key = _role_key(_store(root / "authority.keystore"), "authority")
    ledger = Ledger(root / "ledger.sqlite", signer=controller_key, clock=time.time)
    try:
        pack = entity(pack_access, controller_key.public_key)
        nodes = {n: entity(module_access(n), controller_key.public_key) for n in range(1, modules + 1)}
        client = InProcessEntityClient({n.access_data.endpoint: n for n in (pack, *nodes.values())})
        controller = AuthController(
            controller_key=controller_key, authority_key=authority_key.public_key, ledger=ledger, client=client,
            records=controller_store,
        )  # fmt: skip
        _, outcomes, _ = bind_and_pair(controller, pack, nodes, authority_key, time.time, SystemRandom(), chosen)
        pairings = {n: outcome.certificate.metadata.pairing_id for n, outcome in outcomes.items()}
        policy = next(iter(outcomes.values())).certificate.metadata.encryption_policy
    finally:
        ledger.close()
    # The manifest last: a crash before it leaves a directory the next run refuses, never half a pack.
    manifest = {
        "format": _FORMAT,
        "modules": modules,
        "protocol": chosen.value,
        "pairings": pairings,
        "policy": policy.to_dict(),
    }
    write_atomic(manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
    return PackSetup(pack, nodes, pairings, policy, os.fspath(root), chosen, [close_stores])
