"""Everything an entity answers on its one endpoint: binding API, pairing steps, validation.

One place builds the :class:`~modbatt.transport.serving.OpRouter` every transport serves
(``modbatt entity serve`` over HTTP, MQTT or CAN, the mixed-transport bench), so an entity reached
at its access data answers the same ops whichever carrier reaches it.
"""

from __future__ import annotations

import base64
import collections
import time
from collections.abc import Callable
from typing import Any

from ..errors import Reason, VerificationError
from ..protocol.validation import BindingValidationSubject
from ..protocol.validation._common import Message
from ..protocol.validation.binding_validation import BindingChallenge
from ..transport.serving import OpRouter
from .entity import EntityNode
from .pairing_flow import PAIRING_OPS, PairingService

__all__ = ["ValidationService", "entity_services"]


def entity_services(node: EntityNode, *, clock: Callable[[], float] = time.time) -> OpRouter:
    """``node``'s binding API, its pairing ops (:data:`PAIRING_OPS`) and ``validate``, on one handler."""
    pairing = PairingService(node)
    return OpRouter(node, {"validate": ValidationService(node, clock=clock), **dict.fromkeys(PAIRING_OPS, pairing)})


class ValidationService:
    """An entity's validation endpoint, speaking the :class:`EntityClient` contract (``handle``).

    Op ``validate`` takes ``{"message": base64 CBOR}`` and answers ``{"message": …}``; today it
    serves L7 ``binding_challenge`` (proof of binding-key possession), which is what a controller
    sends a device it has just discovered.
    """

    def __init__(self, node: EntityNode, *, clock: Callable[[], float]) -> None:
        self.node = node
        self._clock = clock
        self.rejections: collections.Counter[Reason] = collections.Counter()

    def handle(self, op: str, payload: Any) -> tuple[int, dict[str, Any]]:
        if op != "validate":
            return 404, {"error": "not_found", "detail": f"no validation operation {op!r}"}
        try:
            data = base64.b64decode(str(payload.get("message", "")), validate=True)
            level = Message.peek_level(data)
            if level != 7:
                raise VerificationError(Reason.WRONG_LEVEL, f"this endpoint serves level 7, not {level}")
            ch = BindingChallenge.decode(data)
            state = self.node.binding(ch.binding_id)
            if state is None:
                raise VerificationError(Reason.UNKNOWN_BINDING, "no such binding here")
            subject = BindingValidationSubject(
                binding_id=ch.binding_id, device_id=self.node.access_data.device_id, binding_key=state.private_key
            )
            proof = subject.prove(data, self._clock())
        except VerificationError as exc:
            self.rejections[exc.reason] += 1
            return 400, {"error": exc.reason.value, "detail": exc.detail}
        except (ValueError, AttributeError):
            return 400, {"error": "malformed", "detail": "payload must be {'message': base64}"}
        return 200, {"message": base64.b64encode(proof).decode("ascii")}
