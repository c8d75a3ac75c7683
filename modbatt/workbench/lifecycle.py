"""A pack's life from manufacture to key loss, on a python-can bus: what notebook 10 shows.

:func:`run_lifecycle` drives a real in-memory deployment (controller, ledger, a pack controller,
two modules) through manufacture → binding → pairing → renewal → replacement → key loss and
recovery, with the pack's :class:`~modbatt.protocol.pack_state.PackSecurity` of each module moved
by the real events, and CAN traffic between the entities' own channels carried on the bus a
:class:`~modbatt.transport.canbus.BusConfig` names (a private ``virtual`` channel by default): a
command and a reading per module after each step, across the renewal switch, and the key-loss
announce as broadcast fragments. After each step it keeps the trust graph of the ledger, the
states, what the ledger gained and the frames that crossed (docs/lifecycle.md).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import can
import networkx as nx

from ..can.fragment import Reassembler, ReassemblyLimits
from ..encoding import strict_loads
from ..errors import TransportError, VerificationError
from ..model.access import AccessData, TransportProtocol
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..nodes.entity import EntityNode
from ..nodes.inmemory import InMemoryDeployment
from ..nodes.pairing_flow import PairingService, pair_entities, renew_entities
from ..nodes.recovery import KeyLossIntake, accept_key_loss, lose_binding_keys, recover
from ..protocol.pack_state import PackEvent, PackSecurity, Step
from ..protocol.validation.key_loss import KeyLossVerifier
from ..sim.gateway import confirm_keys
from ..transport.announce import MAX_ANNOUNCE_BYTES, CanAnnounceSender, announce_can_id
from ..transport.canbus import BusConfig, open_bus
from ..transport.http import InProcessEntityClient
from .figures import trust_graph

__all__ = ["STEPS", "LifecycleStep", "LifecycleStory", "run_lifecycle"]

STEPS = ("manufacture", "binding", "pairing", "renewal", "replacement", "key loss")
_RECV_TIMEOUT_S = 2.0


@dataclass
class LifecycleStep:
    """The deployment after one step."""

    name: str
    graph: nx.MultiGraph
    states: dict[str, str]  # module device id -> the pack's security state of that relationship
    ledger_added: list[str]  # kinds of the entries this step appended
    frames: int  # CAN frames that crossed the bus in this step
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {
            "step": self.name, "states": ", ".join(f"{k}: {v}" for k, v in sorted(self.states.items())),
            "ledger +": ", ".join(self.ledger_added) or "-", "frames": self.frames,
        }  # fmt: skip


@dataclass
class LifecycleStory:
    """Every step, and every transition the pack's machines took (in order)."""

    steps: list[LifecycleStep]
    transitions: list[dict[str, Any]]
    ledger_size: int
    bus: str

    def table(self) -> list[dict[str, Any]]:
        return [s.row() for s in self.steps]


class _Bus:
    """Two handles on one python-can bus: the pack's and the modules'. Every unit really crosses it."""

    def __init__(self, config: BusConfig) -> None:
        self.config = config
        self.pack = open_bus(config)
        self.modules = open_bus(config)
        self.frames = 0

    def carry(self, src: can.BusABC, dst: can.BusABC, data: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """Send frames on ``src``; what ``dst`` receives (own echoes and strangers' frames skipped)."""
        for can_id, payload in data:
            src.send(can.Message(arbitration_id=can_id, data=payload, is_extended_id=True))
            self.frames += 1
        got: list[tuple[int, bytes]] = []
        wanted = list(data)
        while wanted:
            msg = dst.recv(_RECV_TIMEOUT_S)
            if msg is None:
                raise TransportError(f"{len(wanted)} frame(s) did not arrive on {self.config.interface}")
            item = (msg.arbitration_id, bytes(msg.data))
            if item in wanted:
                wanted.remove(item)
                got.append(item)
        return got

    def close(self) -> None:
        for bus in (self.pack, self.modules):
            with contextlib.suppress(Exception):
                bus.shutdown()


class _Story:
    def __init__(self, bus: _Bus, seed: int | None, profile: ProtocolProfile) -> None:
        self.bus = bus
        self.profile = profile
        self.dep = InMemoryDeployment(seed=seed, modules=2)
        self.security: dict[str, PackSecurity] = {}
        self.links: dict[str, tuple[Any, Any]] = {}  # device -> (pack end, module end)
        self.certificates: dict[str, Any] = {}
        self.bindings: dict[str, str] = {}
        self.transitions: list[dict[str, Any]] = []
        self.steps: list[LifecycleStep] = []
        self._size = 0
        self._frames = 0
        self.modules: dict[str, EntityNode] = {m.access_data.device_id: m for m in self.dep.modules.values()}

    # -- helpers -----------------------------------------------------------------------------

    def now(self) -> float:
        return self.dep.clock()

    def handle(self, device: str, event: PackEvent, **kw: Any) -> Step:
        step = self.security.setdefault(device, PackSecurity()).handle(event, self.now(), **kw)
        self.transitions.append({"module": device, "event": event.value, "from": step.source.value,
                                 "to": step.target.value, "actions": [a.value for a in step.actions]})  # fmt: skip
        return step

    def client(self) -> InProcessEntityClient:
        nodes = [self.dep.pack, *self.modules.values()]
        return InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in nodes})

    def pair(self, device: str) -> None:
        module = self.modules[device]
        outcome = pair_entities(self.dep.controller, self.dep.pack, module, self.bindings[device], profile=self.profile)
        meta = outcome.certificate.metadata
        self.certificates[device] = outcome.certificate
        self.handle(device, PackEvent.PAIRED, pairing_id=meta.pairing_id, policy=meta.encryption_policy,
                    expires_at=meta.expires_at_ms / 1000)  # fmt: skip
        confirm_keys(self.dep.pack, module, meta.pairing_id, self.now())
        self.handle(device, PackEvent.CONFIRMED)
        self.links[device] = (self.dep.pack.channel(meta.pairing_id), module.channel(meta.pairing_id))

    def down(self, device: str, tag: int) -> None:
        """A charge command from the pack, across the bus, verified by the module's end."""
        pack_end, module_end = self.links[device]
        pdu = pack_end.send(MessageClass.CHARGE_COMMAND, bytes([1, 0, tag]))
        for can_id, data in self.bus.carry(self.bus.pack, self.bus.modules, [(pdu.can_id, pdu.data)]):
            assert module_end.receive(can_id, data) is not None

    def up(self, device: str, tag: int) -> None:
        """A voltage reading from the module, across the bus, verified by the pack's end."""
        pack_end, module_end = self.links[device]
        pdu = module_end.send(MessageClass.VOLTAGE_TELEMETRY, bytes([0x0C, tag]))
        for can_id, data in self.bus.carry(self.bus.modules, self.bus.pack, [(pdu.can_id, pdu.data)]):
            assert pack_end.receive(can_id, data) is not None

    def traffic(self, device: str, tag: int) -> None:
        self.down(device, tag)
        self.up(device, tag)

    def snapshot(self, name: str, **notes: Any) -> None:
        ledger = self.dep.ledger
        graph = trust_graph(ledger.entries())
        for device in (self.dep.pack, *self.modules.values()):  # provisioned entities, bound or not
            graph.add_node(device.access_data.device_id, protocol=device.access_data.protocol.value)
        added = [strict_loads(e)["kind"] for e in ledger.entries(self._size)]
        self._size = ledger.size
        frames, self._frames = self.bus.frames - self._frames, self.bus.frames
        states = {d: m.state.value for d, m in sorted(self.security.items())}
        self.steps.append(LifecycleStep(name, graph, states, added, frames, notes))

    # -- the life ----------------------------------------------------------------------------

    def manufacture(self) -> None:
        # Provisioned: identity keys, access data, the controller each entity obeys; nothing bound yet.
        for device in self.modules:
            self.security[device] = PackSecurity()
        self.snapshot("manufacture", identity_keys=1 + len(self.modules))

    def binding(self) -> None:
        for device, module in self.modules.items():
            outcome = self.dep.bind(self.dep.pack, module)
            self.bindings[device] = outcome.record.binding_id
            self.handle(device, PackEvent.BOUND, binding_id=outcome.record.binding_id)
        self.snapshot("binding")

    def pairing(self) -> None:
        for i, device in enumerate(self.modules):
            self.pair(device)
            self.traffic(device, i)
        self.snapshot("pairing")

    def renewal(self, device: str) -> None:
        self.dep.clock.advance(20 * 3600)  # four hours before expiry: inside the renewal lead time
        old = self.certificates[device]
        assert self.security[device].renewal_due(self.now(), lead_s=6 * 3600)
        module = self.modules[device]
        outcome = renew_entities(self.dep.controller, self.dep.pack, module, old)
        new_id = outcome.certificate.metadata.pairing_id
        hp = self.dep.pack.handover(old.metadata.pairing_id, new_id)
        hm = module.handover(old.metadata.pairing_id, new_id)
        self.links[device] = (hp, hm)
        self.up(device, 0x20)  # the module still sends on the old pairing: accepted in the overlap
        self.down(device, 0x20)  # the pack sends on the new one; the module hears it and switches too
        self.up(device, 0x21)  # on the new pairing
        meta = outcome.certificate.metadata
        self.handle(device, PackEvent.RENEWED, pairing_id=new_id, policy=meta.encryption_policy,
                    expires_at=meta.expires_at_ms / 1000)  # fmt: skip
        accepted = dict(hp.accepted)
        end = self.dep.clock.advance(hp.overlap_s)
        hp.tick(end - hp.overlap_s), hm.tick(end - hm.overlap_s)  # the grace starts
        assert hp.tick(end) and hm.tick(end)
        self.dep.controller.revoke_pairing(old.metadata.pairing_id, "renewed")
        self.certificates[device] = outcome.certificate
        self.links[device] = (hp.channel, hm.channel)
        self.traffic(device, 0x22)
        self.snapshot("renewal", module=device, accepted_during_overlap=accepted,
                      old_pairing_erased=self.dep.pack.pairing_secrets(old.metadata.pairing_id) is None)  # fmt: skip

    def replacement(self, device: str) -> str:
        old = self.modules.pop(device)
        self.dep.controller.revoke(self.bindings[device], "module replaced")
        self.handle(device, PackEvent.BINDING_REVOKED, binding_id=self.bindings[device])
        self.links.pop(device)
        access = AccessData(old.access_data.endpoint, TransportProtocol.CAN, f"{device}-r")
        new = self.dep.add_entity(access)  # a new device in the same slot (same CAN node)
        self.modules[access.device_id] = new
        outcome = self.dep.bind(self.dep.pack, new)
        self.bindings[access.device_id] = outcome.record.binding_id
        self.handle(access.device_id, PackEvent.BOUND, binding_id=outcome.record.binding_id)
        self.pair(access.device_id)
        self.traffic(access.device_id, 0x30)
        self.snapshot("replacement", removed=device, added=access.device_id)
        return access.device_id

    def key_loss(self, device: str) -> None:
        module = self.modules[device]
        lose_binding_keys(module)
        module = self.modules[device] = self.dep.restart(module)  # the module finds its key gone at start-up
        (announce,) = module.announce_key_loss()
        node = int(module.access_data.endpoint.rsplit("0x", 1)[1], 16)
        sender = CanAnnounceSender(self.bus.modules, node)
        fragments = sender.send(announce)
        self.bus.frames += fragments
        received = self._reassemble(announce_can_id(node), fragments)
        intake = KeyLossIntake(self.dep.controller)
        if intake.offer(received, f"can://{self.bus.config.channel}/0x{node:02x}") is not None:
            raise VerificationError(next(iter(intake.rejections)), "the key-loss announce was refused")
        claim = intake.take()
        assert claim is not None
        bundle = intake.validate(claim)
        verifier = KeyLossVerifier(controller_key=self.dep.controller.public_key)
        _, step = accept_key_loss(verifier, bundle, self.security[device], self.now())
        assert step is not None
        self.transitions.append({"module": device, "event": step.event.value, "from": step.source.value,
                                 "to": step.target.value, "actions": [a.value for a in step.actions]})  # fmt: skip
        self.links.pop(device, None)
        grant = self.dep.authorize(self.dep.pack, module)
        done = recover(self.dep.controller, claim, grant, self.client(), profile=self.profile)
        self.bindings[device] = done.binding.record.binding_id
        self.handle(device, PackEvent.BOUND, binding_id=self.bindings[device])
        meta = done.pairing.certificate.metadata
        self.certificates[device] = done.pairing.certificate
        self.handle(device, PackEvent.PAIRED, pairing_id=meta.pairing_id, policy=meta.encryption_policy,
                    expires_at=meta.expires_at_ms / 1000)  # fmt: skip
        confirm_keys(self.dep.pack, module, meta.pairing_id, self.now())
        self.handle(device, PackEvent.CONFIRMED)
        self.links[device] = (self.dep.pack.channel(meta.pairing_id), module.channel(meta.pairing_id))
        self.traffic(device, 0x40)
        self.snapshot("key loss", module=device, announce_fragments=fragments, announce_bytes=len(announce))

    def _reassemble(self, can_id: int, fragments: int) -> bytes:
        reassembler = Reassembler(ReassemblyLimits(max_message_size=MAX_ANNOUNCE_BYTES))
        while True:
            msg = self.bus.pack.recv(_RECV_TIMEOUT_S)
            if msg is None:
                raise TransportError("the key-loss announce did not arrive")
            if msg.arbitration_id == can_id:
                done = reassembler.feed(msg.arbitration_id, bytes(msg.data), self.now())
                if done:
                    return done[0].payload


@contextlib.contextmanager
def _bus(config: BusConfig | None) -> Iterator[_Bus]:
    bus = _Bus(config or BusConfig(interface="virtual", channel=f"modbatt-lifecycle-{uuid.uuid4().hex}"))
    try:
        yield bus
    finally:
        bus.close()


def run_lifecycle(
    *, bus: BusConfig | None = None, seed: int | None = None, profile: ProtocolProfile | str = DEFAULT_PROFILE
) -> LifecycleStory:
    """Manufacture, binding, pairing, renewal (module-01), replacement (module-02), key loss (module-01).

    Every pairing (renewals included) is issued under the protocol ``profile`` (docs/profiles.md).
    """
    chosen = profile_named(profile)
    with _bus(bus) as carrier:
        story = _Story(carrier, seed, chosen)
        try:
            story.manufacture()
            story.binding()
            story.pairing()
            story.renewal("module-01")
            story.replacement("module-02")
            story.key_loss("module-01")
            size = story.dep.ledger.size
        finally:
            for node in (story.dep.pack, *story.modules.values()):
                node.close_channels()
            story.dep.ledger.close()
        return LifecycleStory(story.steps, story.transitions, size, carrier.config.interface)

