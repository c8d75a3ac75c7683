"""A small deployment on disk: an auth controller, a binding authority and entities.

Used by ``modbatt demo``, the notebooks and the tests. Each role has its own encrypted key
store under the state directory, unlocked by a key file beside it (0600). A key file next
to its store protects only against a copied store without the key file; a real deployment
passes a passphrase or keeps the key file on other media (see docs/crypto.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crypto.keystore import KeyStore
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ConfigError
from ..ledger import Ledger
from ..model.access import AccessData
from ..model.binding import BindingAuthorization
from ..nodes.authority import authorize_binding
from ..nodes.controller import AuthController
from ..nodes.entity import EntityNode
from ..transport.http import EntityClient

__all__ = ["Deployment", "open_keystore"]

_CONTROLLER_KEY = "controller"
_AUTHORITY_KEY = "authority"


def open_keystore(path: Path, *, rng: RandomSource | None = None) -> Any:
    """Open the key store at ``path``, creating it (and its 0600 key file) on first use."""
    key_file = path.with_suffix(".kek")
    if path.exists():
        return KeyStore.open(path, key_file=key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(os.urandom(32))
    reproducible = bool(rng is not None and rng.reproducible)
    return KeyStore.create(path, key_file=key_file, reproducible=reproducible)


def _role_key(store: Any, name: str, rng: RandomSource) -> PrivateKey:
    if name not in store.names():
        store.put_private_key(name, PrivateKey.generate(rng))
    return store.private_key(name)


@dataclass
class Deployment:
    """Key stores, ledger and nodes of one workbench deployment under ``state_dir``."""

    state_dir: Path
    clock: Callable[[], float] = time.time
    rng: RandomSource = field(default_factory=SystemRandom)

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir)
        if self.state_dir.exists() and not self.state_dir.is_dir():
            raise ConfigError(f"{self.state_dir} exists and is not a directory")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.controller_store = open_keystore(self.state_dir / "controller.keystore", rng=self.rng)
        self.controller_key = _role_key(self.controller_store, _CONTROLLER_KEY, self.rng)
        # The binding authority is a separate party; it lives here only for the workbench.
        self.authority_store = open_keystore(self.state_dir / "authority.keystore", rng=self.rng)
        self.authority_key = _role_key(self.authority_store, _AUTHORITY_KEY, self.rng)
        self.ledger_path = self.state_dir / "ledger.sqlite"
        self.ledger = Ledger(self.ledger_path, signer=self.controller_key, clock=self.clock)
        self.entities: dict[str, EntityNode] = {}

    @property
    def controller_public_key(self) -> PublicKey:
        return self.controller_key.public_key

    def entity(self, access_data: AccessData) -> EntityNode:
        """The entity node for ``access_data`` (provisioned on first use, endpoint refreshed)."""
        store = open_keystore(self.state_dir / "entities" / f"{access_data.device_id}.keystore", rng=self.rng)
        node = EntityNode.provision(
            store,
            access_data=access_data,
            controller_key=self.controller_public_key,
            clock=self.clock,
            rng=self.rng,
        )
        self.entities[access_data.device_id] = node
        return node

    def controller(self, client: EntityClient) -> AuthController:
        return AuthController(
            controller_key=self.controller_key,
            authority_key=self.authority_key.public_key,
            ledger=self.ledger,
            client=client,
            records=self.controller_store,
            clock=self.clock,
            rng=self.rng,
        )

    def authorize(self, a: EntityNode, b: EntityNode) -> BindingAuthorization:
        return authorize_binding(self.authority_key, a, b, self.clock(), self.rng)

    def close(self) -> None:
        for node in self.entities.values():
            node.close_channels()  # let go of the freshness files (nothing is lost: they are durable)
        self.ledger.close()
