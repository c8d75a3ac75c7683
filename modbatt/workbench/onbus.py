"""An in-memory deployment whose binding and pairing transactions cross a real python-can bus.

:class:`DeploymentOnBus` serves every entity of an
:class:`~modbatt.nodes.inmemory.InMemoryDeployment` on a bus handle of its own side (the field
bus), each behind a :class:`~modbatt.transport.can_entity.CanEntityServer` (what
:func:`~modbatt.nodes.services.entity_services` serves on every endpoint: binding API, pairing
steps and the validation service, on its node's ISO-TP link), and points the deployment's
controller at a :class:`~modbatt.transport.can_entity.CanEntityClient` on a second handle (the
controller's gateway). From then on ``deployment.bind``, revocation, re-binding and
:meth:`DeploymentOnBus.pair` are ISO-TP frames on the bus; a third handle, a
:class:`~modbatt.transport.tap.BusTap`, hears every frame so a notebook can count them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import can

from ..nodes.entity import EntityNode
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import PairingOutcome, pair_over
from ..nodes.services import entity_services
from ..transport.can_entity import CanEntityClient, CanEntityServer
from ..transport.canbus import BusConfig, open_bus
from ..transport.faultbus import FaultBus
from ..transport.http import EntityClient
from ..transport.tap import BusTap, WireSpan

__all__ = ["DeploymentOnBus"]


class DeploymentOnBus:
    """Serve ``deployment``'s entities over CAN on ``config`` and route its controller through it.

    A context manager; :meth:`close` puts the controller's previous client back.
    """

    def __init__(
        self, deployment: InMemoryDeployment, config: BusConfig, *, timeout: float = 5.0, retries: int = 2
    ) -> None:
        self.deployment = deployment
        self.config = config
        self._previous: EntityClient = deployment.controller.client
        self.servers: dict[str, CanEntityServer] = {}
        self._stack = contextlib.ExitStack()
        try:
            self.tap = BusTap(open_bus(config))
            self._stack.callback(self.tap.close)
            self.gateway_bus = open_bus(config)
            self._stack.callback(self.gateway_bus.shutdown)
            self.field_bus = open_bus(config)
            self._stack.callback(self.field_bus.shutdown)
            # Three tries: a repeated request is answered from the node's cache, never applied twice.
            self.client = CanEntityClient(self.gateway_bus, timeout=timeout, retries=retries)
            self._stack.callback(self.client.close)
            self.field_notifier = can.Notifier(self.field_bus, [], timeout=0.05)
            self._stack.callback(self.field_notifier.stop)
            for node in (deployment.pack, *deployment.modules.values()):
                self.serve(node)
        except BaseException:
            self._stack.close()
            raise
        deployment.controller.client = self.client

    def serve(self, node: EntityNode) -> CanEntityServer:
        """Serve one more entity (one added to the deployment later) on its node's ISO-TP link."""
        server = CanEntityServer(
            entity_services(node, clock=self.deployment.clock), self.field_bus, notifier=self.field_notifier
        )
        server.start()
        self._stack.callback(server.stop)
        self.servers[node.access_data.device_id] = server
        return server

    def pair(self, binding_id: str, **issue: Any) -> PairingOutcome:
        """Issue a certificate and run the pairing session over the bus (:func:`pair_over`)."""
        return pair_over(self.deployment.controller, self.client, binding_id, **issue)

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[WireSpan]]:
        """``with on_bus.measure() as span:`` ... ``span[0]`` is what the tap heard inside the block."""
        self.tap.settle()
        mark = self.tap.mark()
        out: list[WireSpan] = []
        yield out
        self.tap.settle()
        out.append(WireSpan.of(self.tap.since(mark)))

    def fault_buses(self) -> list[FaultBus]:
        """The gateway and field handles when ``config`` names faults (the tap hears the wire as is)."""
        return [b for b in (self.gateway_bus, self.field_bus) if isinstance(b, FaultBus)]

    def set_faults(self, spec: str | None) -> None:
        """Change every handle's faults from now on (``None``: the bus recovers)."""
        for bus in self.fault_buses():
            bus.set_spec(spec)

    def describe(self) -> str:
        return self.config.describe()

    def close(self) -> None:
        """Stop the servers, the client and the bus handles; the controller gets its client back."""
        self.deployment.controller.client = self._previous
        self._stack.close()

    def __enter__(self) -> DeploymentOnBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
