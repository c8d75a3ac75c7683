"""A recorded escalation replayed: to the same receiver after it restarted, and to another gate.

The victim is the ``modbatt demo`` deployment on disk: the pack controller's
:class:`~modbatt.nodes.validation.EscalationReceiver` keeps its replay windows in the pack's
encrypted key store, and every escalation names its receiver under the sender's signature.
The attacker holds a genuine escalation the module sent (recorded off the bus), and no key.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import Reason
from ..nodes.entity import EntityNode
from ..nodes.validation import EscalationReceiver
from ..protocol.validation import (
    EscalationGate,
    EscalationPolicy,
    EscalationReason,
    EscalationRequest,
    SignedEscalation,
)
from .grants import DemoWorld, demo_deployment
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

__all__ = ["EscalationWorld", "escalation_world"]

FAMILY = "replay"


@dataclass
class EscalationWorld:
    """The demo deployment, bound, with one genuine escalation the pack accepted."""

    world: DemoWorld
    binding_id: str
    receiver: EscalationReceiver
    recorded: SignedEscalation
    first: dict[str, object]

    def restart_pack(self) -> EscalationReceiver:
        """The pack process restarts: its node and intake are rebuilt from its key store file alone."""
        node: EntityNode = self.world.deployment.entity(self.world.pack.access_data)  # reopens the file
        return EscalationReceiver(node, EscalationPolicy())


@contextlib.contextmanager
def escalation_world(seed: int | None = None) -> Iterator[EscalationWorld]:
    """Bind the pack and module, then let the module send one escalation the pack accepts."""
    with tempfile.TemporaryDirectory(prefix="modbatt-attack-") as tmp, demo_deployment(Path(tmp), seed) as world:
        grant = world.deployment.authorize(world.pack, world.module)
        binding_id = world.controller.bind(world.pack.access_data, world.module.access_data, grant).record.binding_id
        state = world.module.binding(binding_id)
        assert state is not None
        receiver = EscalationReceiver(world.pack, EscalationPolicy())
        escalation = SignedEscalation.create(
            EscalationRequest(5, EscalationReason.ANOMALY_DETECTED),
            binding_id=binding_id,
            sender=world.module.access_data.device_id,
            receiver=world.pack.access_data.device_id,
            seq=1,
            now=world.deployment.clock(),
            key=state.private_key,
        )
        first = receiver.receive(escalation, world.deployment.clock())
        yield EscalationWorld(world, binding_id, receiver, escalation, first)


@scenario("escalation_replay_restart", family=FAMILY, expected=("blocked", "replay"))
def escalation_replay_restart(seed: int | None = None) -> Outcome:
    """Replay a recorded escalation to the pack controller after it restarted, inside the skew window."""
    with escalation_world(seed) as w:
        receiver = w.restart_pack()
        event = receiver.receive(w.recorded, w.world.deployment.clock() + 1)
        counters = {
            "first_accepted": int(w.first["event"] == "escalated"),
            **counted("pack_gate.rejections", receiver.gate.rejections),
            "required_level_after_replay": receiver.policy.required_level,
        }
    reason = None if event["event"] != "rejected" else Reason(str(event["rejection"]))
    return judge([reason], Reason.REPLAY, counters, detail="the replay window is in the pack's key store")


@scenario("escalation_replay_other_gate", family=FAMILY, expected=("blocked", "wrong_peer"))
def escalation_replay_other_gate(seed: int | None = None) -> Outcome:
    """Replay a recorded escalation to another gate holding the module's binding key (the controller's)."""
    with escalation_world(seed) as w:
        record = w.world.controller.record(w.binding_id)
        assert record is not None
        sender = w.world.module.access_data.device_id
        # The controller holds both semi-public keys of every binding: a gate it runs accepts the signature.
        other = EscalationGate({sender: record.entity(sender).semi_public_key}, receiver="auth-controller")
        policy, now = EscalationPolicy(), w.world.deployment.clock() + 1
        reason = attempt(lambda: policy.request(other.admit(w.recorded, now), sender, now))
        counters = {
            "first_accepted": int(w.first["event"] == "escalated"),
            **counted("controller_gate.rejections", other.rejections),
            "required_level_at_other_gate": policy.required_level,
        }
    return judge([reason], Reason.WRONG_PEER, counters, detail="the signed body names its receiver")
