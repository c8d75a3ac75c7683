"""One :class:`~modbatt.transport.http.EntityClient` in front of several: route by access-data protocol.

The controller's protocol machines never know how an entity is reached: they hand the endpoint
from its access data to ``call``. The endpoint's scheme names the protocol unambiguously, because
:class:`~modbatt.model.access.AccessData` only accepts ``http(s)://`` for HTTP, ``can://`` for CAN
and ``mqtt://`` for MQTT, so routing needs nothing but the endpoint.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..errors import TransportError
from ..model.access import AccessData, TransportProtocol
from .http import EntityClient

__all__ = ["RoutingEntityClient", "protocol_of"]

_SCHEMES = {
    "http": TransportProtocol.HTTP,
    "https": TransportProtocol.HTTP,
    "can": TransportProtocol.CAN,
    "mqtt": TransportProtocol.MQTT,
}


def protocol_of(endpoint: str) -> TransportProtocol:
    """The protocol an endpoint speaks, from its scheme (TransportError for anything else)."""
    scheme = urlsplit(endpoint).scheme.lower()
    try:
        return _SCHEMES[scheme]
    except KeyError:
        raise TransportError(f"{endpoint!r} has no known transport scheme (http, https, can, mqtt)") from None


class RoutingEntityClient:
    """Delivers each call through the client registered for the endpoint's protocol.

    ``overrides`` maps exact endpoints to a client and wins over the protocol table: for an entity
    co-located with the controller (reached in process) or behind a particular gateway.

    ``resolver`` maps a device id to its current endpoint (e.g. ``Directory.endpoint_for`` of
    :mod:`modbatt.nodes.discovery`, learnt from verified announces). When it knows the request's
    ``target`` device, the call goes to that endpoint, over the protocol *it* names, instead of the
    one in the stale binding record. Requests stay signed and addressed to their target, so a
    wrong endpoint can only make a call fail, never make another device accept it.
    """

    def __init__(
        self,
        routes: Mapping[TransportProtocol, EntityClient],
        *,
        overrides: Mapping[str, EntityClient] | None = None,
        resolver: Callable[[str], str | None] | None = None,
    ) -> None:
        self.routes = {TransportProtocol(p): c for p, c in routes.items()}
        self.overrides = dict(overrides or {})
        self.resolver = resolver
        #: Calls per protocol (and ``override``), to show which transport carried what.
        self.calls: collections.Counter[str] = collections.Counter()

    def client_for(self, endpoint: str) -> EntityClient:
        if endpoint in self.overrides:
            return self.overrides[endpoint]
        protocol = protocol_of(endpoint)
        client = self.routes.get(protocol)
        if client is None:
            raise TransportError(f"no {protocol.value} transport is configured to reach {endpoint}")
        return client

    def call(self, endpoint: str, op: str, payload: dict[str, Any]) -> Any:
        target = payload.get("target") if isinstance(payload, dict) else None
        if self.resolver is not None and isinstance(target, str):
            current = self.resolver(target)
            if current and current != endpoint:
                self.calls["rerouted"] += 1
                endpoint = current
        client = self.client_for(endpoint)
        self.calls["override" if endpoint in self.overrides else protocol_of(endpoint).value] += 1
        return client.call(endpoint, op, payload)

    def reach(self, access: AccessData, op: str, payload: dict[str, Any]) -> Any:
        """``call`` for an access-data record (checks the endpoint agrees with the named protocol)."""
        if protocol_of(access.endpoint) is not access.protocol:
            raise TransportError(f"{access.device_id}: endpoint {access.endpoint} does not speak {access.protocol}")
        return self.call(access.endpoint, op, payload)

    def close(self) -> None:
        """Close every distinct client that can be closed."""
        seen: set[int] = set()
        for client in (*self.routes.values(), *self.overrides.values()):
            if id(client) not in seen and hasattr(client, "close"):
                seen.add(id(client))
                client.close()
