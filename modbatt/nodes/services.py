"""Everything an entity answers on its one endpoint: binding API, pairing steps, validation.

One place builds the :class:`~modbatt.transport.serving.OpRouter` every transport serves
(``modbatt entity serve`` over HTTP, MQTT or CAN, the mixed-transport bench), so an entity reached
at its access data answers the same ops whichever carrier reaches it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ..transport.serving import OpRouter
from .entity import EntityNode
from .pairing_flow import PAIRING_OPS, PairingService
from .validation import ValidationService

__all__ = ["entity_services"]


def entity_services(node: EntityNode, *, clock: Callable[[], float] = time.time) -> OpRouter:
    """``node``'s binding API, its pairing ops (:data:`PAIRING_OPS`) and ``validate``, on one handler."""
    pairing = PairingService(node)
    return OpRouter(node, {"validate": ValidationService(node, clock=clock), **dict.fromkeys(PAIRING_OPS, pairing)})
