"""What a transport server needs from an entity, so transports never import the nodes layer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from ..model.access import AccessData

__all__ = ["EntityHandler", "OpRouter"]


class EntityHandler(Protocol):
    """An entity answering binding-API requests: :class:`~modbatt.nodes.entity.EntityNode` fits.

    ``handle(op, payload_json)`` returns ``(status, answer_json)`` with HTTP status numbers and
    never raises for bad input; every transport maps those two values onto its own framing.
    """

    @property
    def access_data(self) -> AccessData: ...

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]: ...


class OpRouter:
    """Several handlers behind one transport endpoint, chosen by op.

    ``primary`` (the entity node) answers every op not in ``extra``; e.g.
    ``OpRouter(node, {"validate": ValidationService(node, clock=…)})`` lets the controller's
    discovery send its level-7 liveness challenge over the same MQTT topic, CAN link or HTTP app
    as the binding API. Other attributes (``identity_key`` for the HTTP app) come from ``primary``.
    """

    def __init__(self, primary: EntityHandler, extra: Mapping[str, Any]) -> None:
        self._primary = primary
        self._extra = dict(extra)

    @property
    def access_data(self) -> AccessData:
        return self._primary.access_data

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]:
        return self._extra.get(op, self._primary).handle(op, payload)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._primary, name)
