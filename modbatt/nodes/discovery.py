"""Dynamic discovery (seed success criterion "access data enables dynamic device discovery").

The controller keeps a :class:`Directory` of where each bound entity is *now*: every level-1
announce that arrives on any transport (CAN broadcast, MQTT announce topic, HTTP announce POST,
see :mod:`modbatt.transport.announce`) is verified by the level-1 machine
(:class:`~modbatt.protocol.validation.announce.AnnounceVerifier`, binding-key signature, freshness,
sequence) against the semi-public keys of the controller's binding records, and the access data it
carries becomes the entity's current address. A :class:`~modbatt.transport.routing.RoutingEntityClient`
given ``resolver=directory.endpoint_for`` then reaches each entity through the protocol its
announced access data names, even after it moved (a module re-addressed on CAN, a sensor on a
new topic, a gateway on a new IP).

Why only bound entities: a level-1 announce is signed with the binding key, so only the controller
and the partner can verify it. An entity that was never bound has nothing the controller could
verify; its access data comes from the binding authority's paperwork or an unauthenticated probe
(:func:`probe_http_entity`, ``GET /api/entity``), and binding then pins its identity key, so a lie
there fails the binding (``bad_signature``) instead of misleading the controller. A redirect by a
valid announce can at worst misroute traffic for the announcer itself: requests stay signed and
addressed to their target device.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..crypto.rng import RandomSource, SystemRandom
from ..errors import ConfigError, ModbattError, Reason, TransportError, VerificationError
from ..model.access import AccessData, TransportProtocol
from ..model.binding import BindingRecord
from ..protocol.validation.announce import AnnounceVerifier, BindingKeyRef
from ..transport.http import EntityClient
from ..transport.routing import protocol_of
from .controller import AuthController
from .liveness import prove_binding_key

__all__ = ["Directory", "Discovered", "DiscoveredEntity", "Discovery", "probe_http_entity"]


@dataclass(frozen=True, slots=True)
class DiscoveredEntity:
    """What a verified announce taught the controller."""

    device_id: str
    access_data: AccessData
    binding_id: str
    via: TransportProtocol  # the transport the announce arrived on
    source: str  # where exactly (can://can0/0x05, mqtt://…/modbatt/announce/x, http://peer)
    seq: int
    seen_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "endpoint": self.access_data.endpoint,
            "protocol": self.access_data.protocol.value,
            "binding_id": self.binding_id,
            "via": self.via.value,
            "source": self.source,
            "seq": self.seq,
        }


def _refs(record: BindingRecord) -> list[BindingKeyRef]:
    return [
        BindingKeyRef(record.binding_id, side.access_data.device_id, side.semi_public_key)
        for side in (record.entity_a, record.entity_b)
    ]


class Directory:
    """The controller's view of where bound entities are; an announce sink for every carrier."""

    def __init__(self, records: Iterable[BindingRecord] = (), *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._verifier = AnnounceVerifier([ref for record in records for ref in _refs(record)])
        self.entities: dict[str, DiscoveredEntity] = {}

    @property
    def rejections(self) -> collections.Counter[Reason]:
        """Refused announces by reason (the level-1 machine's counters)."""
        return self._verifier.rejections

    def trust(self, record: BindingRecord) -> None:
        """Accept announces signed with either binding key of ``record`` from now on."""
        with self._lock:
            for ref in _refs(record):
                self._verifier.add(ref)

    def offer(self, data: bytes, source: str) -> Reason | None:
        """The announce sink: verify, then learn the access data. Never raises; returns the reason if refused."""
        try:
            self.learn(data, self._clock(), source=source)
        except VerificationError as exc:
            return exc.reason
        return None

    def learn(self, data: bytes, now: float, *, source: str | None = None) -> DiscoveredEntity:
        """Verify an announce heard at ``source`` and learn the access data it carries.

        Raises :class:`~modbatt.errors.VerificationError` (counted in :attr:`rejections`); anything
        else malformed is ``malformed``. Without ``source`` (an announce handed over directly), the
        announce is taken to come from the endpoint it names.
        """
        try:
            via = protocol_of(source) if source is not None else None
        except TransportError:
            self._verifier.rejections[Reason.MALFORMED] += 1
            raise VerificationError(Reason.MALFORMED, f"{source!r} is not a transport address") from None
        with self._lock:
            try:
                announce = self._verifier.receive(bytes(data), now)
            except VerificationError:
                raise
            except ModbattError:
                self._verifier.rejections[Reason.MALFORMED] += 1
                raise VerificationError(Reason.MALFORMED, "the announce is not a level-1 message") from None
            access = announce.access_data
            entity = DiscoveredEntity(
                announce.sender,
                access,
                announce.binding_id,
                via or access.protocol,
                access.endpoint if source is None else source,
                announce.seq,
                now,
            )
            self.entities[announce.sender] = entity
        return entity

    def access_for(self, device_id: str) -> AccessData | None:
        entry = self.entities.get(device_id)
        return entry.access_data if entry else None

    def endpoint_for(self, device_id: str) -> str | None:
        """The announced endpoint of ``device_id`` (a resolver for the routing client)."""
        entry = self.entities.get(device_id)
        return entry.access_data.endpoint if entry else None

    def wait_for(self, device_ids: Iterable[str], timeout: float) -> bool:
        """Poll (bounded) until every device in ``device_ids`` was discovered."""
        wanted = set(device_ids)
        deadline = time.monotonic() + timeout
        while not wanted <= self.entities.keys():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def probe_http_entity(url: str, *, timeout: float = 3.0) -> tuple[AccessData, str]:
    """``GET {url}/api/entity``: the entity's *claimed* access data and identity key id (unverified).

    For entities that were never bound (no binding key, so no verifiable announce). The binding
    authorization pins the identity key, so a false claim cannot survive a binding.
    """
    target = url.rstrip("/") + "/api/entity"
    try:
        response = httpx.get(target, timeout=timeout)
        answer = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise TransportError(f"cannot probe {target}: {type(exc).__name__}") from None
    if response.status_code != 200 or not isinstance(answer, dict):
        raise TransportError(f"{target} answered HTTP {response.status_code}")
    key_id = answer.get("identity_key_id")
    if not isinstance(key_id, str):
        raise VerificationError(Reason.MALFORMED, f"{target} gave no identity key id")
    return AccessData.from_dict(answer.get("access_data")), key_id


@dataclass(frozen=True)
class Discovered:
    """A device the controller learned from an announce and reached."""

    device_id: str
    binding_id: str
    access_data: AccessData
    moved: bool
    reached_via: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "binding_id": self.binding_id, "access_data": self.access_data.to_dict(),
            "moved": self.moved, "reached_via": self.reached_via,
        }  # fmt: skip


class Discovery:
    """The controller's side of dynamic discovery.

    It verifies announces with the semi-public keys of every live binding it recorded and learns
    the device's current access data (a :class:`~modbatt.nodes.discovery.Directory`), picks the
    client for the protocol that access data names, and proves the device is live there
    (:func:`~modbatt.nodes.liveness.prove_binding_key`: a level-7 ``binding_challenge`` answered
    with a binding-key signature the controller checks against its record).
    """

    def __init__(
        self,
        controller: AuthController,
        clients: Mapping[TransportProtocol, EntityClient],
        *,
        rng: RandomSource | None = None,
    ) -> None:
        self.controller = controller
        self.clients = dict(clients)
        self._rng = rng or SystemRandom()
        self.directory: dict[str, AccessData] = {}
        #: Rejections by reason: announces refused, devices that could not prove their key.
        self.rejections: collections.Counter[Reason] = collections.Counter()
        live = (controller.record(binding_id) for binding_id in controller.binding_ids())
        self._announces = Directory(r for r in live if r is not None and not controller.is_revoked(r.binding_id))

    def on_announce(self, data: bytes, now: float) -> Discovered:
        """Verify an announce, learn where the device is, and reach it there."""
        try:
            return self._on_announce(data, now)
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            raise

    def _on_announce(self, data: bytes, now: float) -> Discovered:
        found = self._announces.learn(data, now)
        access = found.access_data
        client = self.clients.get(access.protocol)
        if client is None:
            raise ConfigError(f"no client for {access.protocol.value}: cannot reach {access.device_id}")
        prove_binding_key(
            self.controller, client, found.binding_id, found.device_id,
            clock=lambda: now, rng=self._rng, endpoint=access.endpoint,
        )  # fmt: skip
        record = self.controller.record(found.binding_id)
        assert record is not None  # the directory trusts recorded bindings only
        moved = access != record.entity(found.device_id).access_data
        self.directory[found.device_id] = access
        return Discovered(found.device_id, found.binding_id, access, moved, access.protocol.value)
