"""An auth controller you can run: its state directory and the clients that reach entities anywhere.

``modbatt controller`` (docs/controller.md) keeps everything under one directory:

=======================  ===========================================================================
``controller.json``      what this directory is (format, key ids, where grants come from)
``controller.keystore``  the controller's signing key and its records: bindings (semi-public keys),
                         pairings, claims, revocations (encrypted; key file ``controller.kek``)
``authority.keystore``   the binding authority's key for grants (absent with an external authority)
``controller.pub.der``   the controller's public key (SPKI DER): ``entity serve --controller-key``
``authority.pub.der``    the authority's public key (SPKI DER)
``ledger.sqlite``        the RFC 9162 ledger (``modbatt ledger verify``, ``modbatt audit DIR``)
``events.jsonl``         the event log (:mod:`modbatt.nodes.audit`)
=======================  ===========================================================================

:class:`EntityClients` reaches an entity through the protocol its endpoint names: HTTP, MQTT (one
client per broker, opened when first needed) and CAN (ISO-TP on the bus the bus rule chooses,
opened when first needed). :meth:`EntityClients.check_reachable` tries each endpoint's carrier
before anything is claimed or written, so an entity that is down, a broker that is down or a bus
that cannot be opened is a one-line error and leaves the state as it was.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..crypto.keystore import KeyStore
from ..crypto.rng import RandomSource, SystemRandom
from ..crypto.suite import PrivateKey, PublicKey
from ..errors import ConfigError, TransportError
from ..files import write_atomic
from ..ledger import Ledger
from ..model.access import TransportProtocol
from ..model.binding import BindingAuthorization
from ..nodes.audit import EVENT_LOG_NAME, EventLog
from ..nodes.authority import AUTHORIZATION_LIFETIME_S
from ..nodes.controller import AuthController
from ..transport.canbus import BusConfig
from ..transport.http import HttpEntityClient
from ..transport.routing import protocol_of
from .deployment import open_keystore

__all__ = ["MANIFEST", "ControllerHome", "EntityClients", "read_entity_facts"]

MANIFEST = "controller.json"
_FORMAT = 1
_CONTROLLER_KEY = "controller"
_AUTHORITY_KEY = "authority"


def _key_id(key: PublicKey) -> str:
    return key.key_id().hex()


@dataclass
class ControllerHome:
    """A controller's state directory, opened (:meth:`open`) or created (:meth:`init`)."""

    root: Path
    controller_key: PrivateKey
    authority_public: PublicKey
    records: Any  # the controller's KeyStore
    authority_key: PrivateKey | None  # None when grants come from an external authority
    ledger: Ledger
    events: EventLog
    clock: Callable[[], float] = time.time
    rng: RandomSource = field(default_factory=SystemRandom)

    # -- creation and opening ------------------------------------------------------------------

    @classmethod
    def init(
        cls, root: str | os.PathLike[str], *, authority_key: PublicKey | None = None
    ) -> tuple[ControllerHome, bool]:
        """Create the state (keys, ledger, public key files); ``(home, created)``. Idempotent.

        ``authority_key`` trusts an external binding authority (its grants only) instead of
        creating one here.
        """
        path = Path(root)
        if (path / MANIFEST).exists():
            home = cls.open(path)
            if authority_key is not None and authority_key != home.authority_public:
                home.close()
                raise ConfigError(f"{path} is initialised with another binding authority")
            return home, False
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"{os.fspath(path)!r} exists and is not an empty directory: choose a new --state")
        path.mkdir(parents=True, exist_ok=True)
        records = open_keystore(path / "controller.keystore")
        controller_key = PrivateKey.generate()
        records.put_private_key(_CONTROLLER_KEY, controller_key)
        if authority_key is None:
            authority_store = open_keystore(path / "authority.keystore")
            own = PrivateKey.generate()
            authority_store.put_private_key(_AUTHORITY_KEY, own)
            authority_store.close()
            authority_key = own.public_key
            source = "local"
        else:
            source = "external"
        records.close()
        _write_atomic(path / "controller.pub.der", controller_key.public_key.to_spki_der())
        _write_atomic(path / "authority.pub.der", authority_key.to_spki_der())
        Ledger(path / "ledger.sqlite", signer=controller_key).close()
        manifest = {
            "format": _FORMAT,
            "controller_key_id": _key_id(controller_key.public_key),
            "authority_key_id": _key_id(authority_key),
            "authority": source,
        }
        # The manifest last: until it exists the directory is not a controller state.
        _write_atomic(path / MANIFEST, json.dumps(manifest, indent=2).encode())
        return cls.open(path), True

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> ControllerHome:
        path = Path(root)
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            raise ConfigError(f"{os.fspath(path)!r} is not a controller state: run modbatt controller init --state DIR")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            source = manifest["authority"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{manifest_path} is unreadable") from None
        records = KeyStore.open(path / "controller.keystore", key_file=path / "controller.kek")
        controller_key = records.private_key(_CONTROLLER_KEY)
        authority_public = PublicKey.from_spki_der((path / "authority.pub.der").read_bytes())
        authority_key = None
        if source == "local":
            store = KeyStore.open(path / "authority.keystore", key_file=path / "authority.kek")
            authority_key = store.private_key(_AUTHORITY_KEY)
            store.close()
        ledger = Ledger(path / "ledger.sqlite", signer=controller_key)
        return cls(
            path, controller_key, authority_public, records, authority_key, ledger, EventLog(path / EVENT_LOG_NAME)
        )

    @property
    def public_key_file(self) -> Path:
        return self.root / "controller.pub.der"

    def controller(self, client: Any) -> AuthController:
        return AuthController(
            controller_key=self.controller_key, authority_key=self.authority_public, ledger=self.ledger,
            client=client, records=self.records, clock=self.clock, rng=self.rng,
        )  # fmt: skip

    def grant(
        self, a: dict[str, Any], b: dict[str, Any], lifetime_s: int = AUTHORIZATION_LIFETIME_S
    ) -> BindingAuthorization:
        """The authority's grant for two entities (``read_entity_facts`` of each ``entity show``)."""
        if self.authority_key is None:
            raise ConfigError("this controller trusts an external binding authority: grants come from it")
        if a["device_id"] == b["device_id"]:
            raise ConfigError("a grant binds two different entities")
        if not 0 < lifetime_s <= 30 * 24 * 3600:
            raise ConfigError("a grant's lifetime is 1 s to 30 days")
        now = int(self.clock())
        return BindingAuthorization(
            a["device_id"], a["identity"], b["device_id"], b["identity"], now, now + lifetime_s,
            self.rng.token_bytes(16),
        ).sign(self.authority_key)  # fmt: skip

    def close(self) -> None:
        self.ledger.close()
        self.records.close()


def _write_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, data)


def read_entity_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``modbatt entity show`` printed: ``{"device_id", "identity", "access_data"}``; ConfigError otherwise."""
    from ..model.access import AccessData

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
        access = AccessData.from_dict(value["access_data"])
        import base64

        identity = PublicKey.from_spki_der(base64.b64decode(value["identity_public_key"], validate=True))
    except OSError as exc:
        raise ConfigError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None
    except Exception as exc:  # any shape error of a file the user named: one line
        raise ConfigError(
            f"{os.fspath(path)!r} is not the output of modbatt entity show ({type(exc).__name__})"
        ) from None
    return {"device_id": access.device_id, "identity": identity, "access_data": access}


class EntityClients:
    """One :class:`~modbatt.transport.routing.RoutingEntityClient`-compatible client for every transport.

    ``bus`` is called to choose the CAN bus the first time a ``can://`` endpoint is reached
    (the bus rule, with a private bus refused: entities elsewhere cannot share it).
    """

    def __init__(self, *, bus: Callable[[], BusConfig], timeout: float = 5.0, retries: int = 1) -> None:
        self._bus = bus
        self.timeout = timeout
        self.retries = retries
        self.http = HttpEntityClient(timeout=timeout, retries=retries)
        self._mqtt: dict[tuple[str, int], Any] = {}
        self._can: Any = None
        self._can_bus: Any = None
        self.bus_config: BusConfig | None = None

    def _mqtt_client(self, host: str, port: int) -> Any:
        from ..transport.mqtt import MqttEntityClient

        key = (host, port)
        if key not in self._mqtt:
            client = MqttEntityClient(host, port, timeout=self.timeout, retries=self.retries)
            if not client.wait_ready(min(self.timeout, 3.0)):
                client.close()
                raise TransportError(f"MQTT broker {host}:{port} is not reachable")
            self._mqtt[key] = client
        return self._mqtt[key]

    def _can_client(self) -> Any:
        if self._can is None:
            from ..transport.can_entity import CanEntityClient
            from ..transport.canbus import open_bus

            self.bus_config = self._bus()
            self._can_bus = open_bus(self.bus_config)
            self._can = CanEntityClient(
                self._can_bus, timeout=self.timeout, retries=self.retries, fd=self.bus_config.fd
            )
        return self._can

    def client_for(self, endpoint: str) -> Any:
        protocol = protocol_of(endpoint)
        if protocol is TransportProtocol.HTTP:
            return self.http
        if protocol is TransportProtocol.MQTT:
            from ..transport.mqtt import mqtt_endpoint

            host, port, _ = mqtt_endpoint(endpoint)
            return self._mqtt_client(host, port)
        return self._can_client()

    def call(self, endpoint: str, op: str, payload: dict[str, Any]) -> Any:
        return self.client_for(endpoint).call(endpoint, op, payload)

    def check_reachable(self, endpoints: Iterable[str]) -> None:
        """Open each endpoint's carrier (TCP to an HTTP entity, the MQTT broker, the CAN bus) or raise
        one TransportError naming it, before anything is claimed or written."""
        for endpoint in endpoints:
            client = self.client_for(endpoint)
            if client is self.http:
                parts = urlsplit(endpoint)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                try:
                    socket.create_connection((parts.hostname or "", port), timeout=min(self.timeout, 3.0)).close()
                except OSError as exc:
                    raise TransportError(f"entity at {endpoint} is not reachable: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.http.close()
        for client in self._mqtt.values():
            client.close()
        if self._can is not None:
            self._can.close()
        if self._can_bus is not None:
            self._can_bus.shutdown()
