"""``modbatt demo``: bind, pair, and talk securely on a CAN bus.

1. An auth controller binds a pack controller and a battery module over their real HTTP binding
   APIs (uvicorn on 127.0.0.1; or in process), and the binding is proven from the ledger with an
   inclusion proof that needs nothing but the controller's public key.
2. The controller issues a pairing certificate; the entities swap key halves and report
   completion, which is recorded.
3. Over a python-can bus (the bus rule's choice: the embedded ``virtual`` bus when nothing is
   configured), the pack sends a charge command at the pairing
   tier and the module answers a voltage reading at the exchange tier.
4. Validation levels 1-7 run between them, then the seed's escalation example (with abuse
   attempts refused); everything lands in the ledger or the event log (``modbatt audit``).
"""

from __future__ import annotations

import base64
import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from ..can.ids import SEED_LAYOUT
from ..can.payloads import Transport, transport_for
from ..can.secured import SecuredPdu
from ..can.wiretime import CLASSIC, isotp_frame_lengths
from ..errors import ConfigError, Reason, TransportError, VerificationError
from ..ledger import verify_inclusion
from ..model.access import AccessData, LctRef, TransportProtocol
from ..model.pairing import ControllerMode
from ..model.policy import MessageClass
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile
from ..model.tier import Tier
from ..nodes.audit import EVENT_LOG_NAME, EventLog
from ..nodes.controller import AuthController
from ..nodes.entity import EntityNode
from ..nodes.entity_api import create_entity_app
from ..nodes.link import Received
from ..nodes.pairing_flow import pair_entities
from ..nodes.validation import run_all_levels, run_escalation_scenario
from ..transport.canbus import BusConfig, open_bus, resolve_bus
from ..transport.http import EntityClient, HttpEntityClient, InProcessEntityClient, ServerThread
from ..transport.isotp_link import IsoTpLink
from .deployment import Deployment

__all__ = ["DemoResult", "demo_network", "run_demo"]

PACK_ID = "pack-controller-01"
MODULE_ID = "battery-module-01"


@dataclass
class DemoResult:
    """What the demo did, for people (``steps``) and for tools (:meth:`to_json`)."""

    state_dir: Path
    ledger_path: Path
    binding_record: dict[str, Any]
    ledger_index: int
    tree_head: dict[str, Any]
    controller_public_key: bytes
    transport: str
    pairing: dict[str, Any] = field(default_factory=dict)
    pairing_certificate: bytes = b""
    frames: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, dict[str, Any]] = field(default_factory=dict)
    escalation: list[dict[str, Any]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    bus: dict[str, Any] = field(default_factory=dict)  # BusConfig.to_json() of the bus the frames crossed

    def to_json(self) -> dict[str, Any]:
        return {
            "bus": self.bus,
            "binding_record": self.binding_record,
            "ledger": str(self.ledger_path),
            "ledger_index": self.ledger_index,
            "tree_head": self.tree_head,
            "controller_public_key": base64.b64encode(self.controller_public_key).decode("ascii"),
            "transport": self.transport,
            "state": str(self.state_dir),
            "pairing": self.pairing,
            "pairing_certificate": base64.b64encode(self.pairing_certificate).decode("ascii"),
            "frames": self.frames,
            "validation": self.validation,
            "escalation": self.escalation,
        }


@contextmanager
def demo_network(deployment: Deployment, transport: str, say: Callable[[str], None]) -> Iterator[AuthController]:
    """Provision the pack controller and the module, reachable over ``transport``; yield the controller."""
    with ExitStack() as stack:
        lct = LctRef("lct:web4:demo-pack", "modbatt-demo-ledger")
        if transport == "http":
            servers = {d: stack.enter_context(ServerThread()) for d in (PACK_ID, MODULE_ID)}
            access = {d: AccessData(srv.url, TransportProtocol.HTTP, d, lct) for d, srv in servers.items()}
        elif transport == "in-process":
            access = {
                d: AccessData(f"http://{d}.invalid", TransportProtocol.HTTP, d, lct) for d in (PACK_ID, MODULE_ID)
            }
        else:
            raise ConfigError(f"unknown demo transport {transport!r} (http or in-process)")
        nodes = {d: deployment.entity(a) for d, a in access.items()}
        client: EntityClient
        if transport == "http":
            for d, srv in servers.items():
                srv.start(create_entity_app(nodes[d]))
                say(f"entity {d} serves its binding API at {srv.url}")
            client = stack.enter_context(closing(HttpEntityClient()))
        else:
            client = InProcessEntityClient({a.endpoint: nodes[d] for d, a in access.items()})
            say("entities answer in-process (no sockets)")
        yield deployment.controller(client)


def run_demo(
    state_dir: Path | None = None,
    *,
    transport: str = "http",
    progress: Callable[[str], None] | None = None,
    mode: ControllerMode = ControllerMode.STANDARD,
    bus: BusConfig | None = None,
    profile: ProtocolProfile = DEFAULT_PROFILE,
) -> DemoResult:
    """Bind, pair, and exchange one command and one telemetry frame over a python-can bus.

    ``transport`` (``"http"`` or ``"in-process"``) carries the binding API; ``bus`` the CAN
    frames (default: the bus rule, :func:`~modbatt.transport.canbus.resolve_bus`: python-can's
    configuration, else the embedded virtual bus on a private channel); ``profile`` is the
    pairing's protocol profile (docs/profiles.md).
    """
    config = bus if bus is not None else resolve_bus()
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="modbatt-demo-"))
    steps: list[str] = []

    def say(text: str) -> None:
        steps.append(text)
        if progress is not None:
            progress(text)

    deployment = Deployment(state)
    with closing(deployment), demo_network(deployment, transport, say) as controller:
        pack, module = deployment.entities[PACK_ID], deployment.entities[MODULE_ID]
        authorization = deployment.authorize(pack, module)
        say(f"binding authority granted {PACK_ID} <-> {MODULE_ID} (signed authorization)")
        earlier = controller.binding_of(PACK_ID, MODULE_ID)
        if earlier is None:
            outcome = controller.bind(pack.access_data, module.access_data, authorization)
        else:  # a state directory reused: one live binding per relationship, so revoke and re-bind
            say(f"{PACK_ID} and {MODULE_ID} are already bound ({earlier}): revoking it to re-bind")
            outcome = controller.rebind(earlier, authorization)
        record = outcome.record
        say(f"controller collected both semi-public keys and distributed them cross-wise: {record.binding_id}")
        for node in (pack, module):
            held = node.binding(record.binding_id)
            if held is None or not held.bound:
                raise VerificationError(Reason.UNKNOWN_BINDING, f"{node.access_data.device_id} lacks the binding")
            say(f"{node.access_data.device_id} holds its binding key and its partner's semi-public key")
        sth = deployment.ledger.signed_tree_head()
        proof = deployment.ledger.inclusion_proof(outcome.ledger_index, sth.tree_size)
        verify_inclusion(record.ledger_entry(), outcome.ledger_index, proof, sth, deployment.controller_public_key)
        say(
            f"ledger entry #{outcome.ledger_index} proven under the signed tree head "
            f"(size {sth.tree_size}, {len(proof)} proof hashes) with only the controller's public key"
        )
        outcome_pairing = pair_entities(controller, pack, module, record.binding_id, mode=mode, profile=profile)
        meta = outcome_pairing.certificate.metadata
        cert_bytes = outcome_pairing.certificate.encode()
        say(
            f"controller issued pairing {meta.pairing_id} ({mode.value} mode, {meta.profile.value} profile, "
            f"{len(cert_bytes)}-byte certificate) and erased the pairing key; the entities swapped halves under "
            "the exchange key"
        )
        say(f"completion proof verified and recorded as ledger entry #{outcome_pairing.ledger_index}")
        frames = _talk_over_can(pack, module, meta.pairing_id, config, say)
        events = EventLog(state / EVENT_LOG_NAME)
        validation = run_all_levels(controller, pack, module, record.binding_id, meta.pairing_id, events=events)
        say("validation levels 1-7: " + ", ".join(f"L{k} {v['outcome']}" for k, v in sorted(validation.items())))
        escalation = run_escalation_scenario(
            controller, pack, module, record.binding_id, meta.pairing_id, events=events
        )
        say(f"escalation: {len(escalation)} events (seed example L1 -> 5 -> 7, abuse refused, de-escalation)")
        say(f"audit trail: modbatt audit {state}")
        return DemoResult(
            state_dir=state,
            ledger_path=deployment.ledger_path,
            binding_record=record.to_json(),
            ledger_index=outcome.ledger_index,
            tree_head=sth.to_dict(),
            controller_public_key=deployment.controller_public_key.to_spki_der(),
            transport=transport,
            pairing={
                "pairing_id": meta.pairing_id,
                "controller_mode": mode.value,
                "profile": meta.profile.value,
                "certificate_bytes": len(cert_bytes),
                "sections": outcome_pairing.certificate.describe()["sections"],
                "ledger_index": outcome_pairing.ledger_index,
            },
            pairing_certificate=cert_bytes,
            frames=frames,
            validation=validation,
            escalation=escalation,
            steps=steps,
            bus=config.to_json(),
        )


def _frame_view(direction: str, pdu_id: int, data: bytes, got: Received) -> dict[str, Any]:
    return {
        "direction": direction,
        "message_class": got.message_class.value,
        "tier": got.tier.label,
        "can_id": f"0x{pdu_id:08X}",
        "data": data.hex(),
        "payload": got.payload.hex(),
    }


def _await_frame(bus: can.BusABC, can_id: int, timeout: float) -> can.Message | None:
    """The next frame with ``can_id``; a shared bus (udp_multicast, a real one) carries other traffic too."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(timeout=left)
        if msg is not None and msg.arbitration_id == can_id and not msg.is_error_frame:
            return msg
    return None


def _talk_over_can(
    pack: EntityNode,
    module: EntityNode,
    pairing_id: str,
    config: BusConfig,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """A charge command (pairing tier), a voltage reading (exchange tier) and a validation message
    (binding tier, over ISO-TP) on a real python-can bus."""
    # Each entity's own channel: keys of the current session, freshness persisted beside its key
    # store under the state directory (a rerun resumes past the reserved counters).
    links = {name: node.channel(pairing_id) for name, node in (("pack", pack), ("module", module))}
    frames = []
    say(f"CAN bus: {config.describe(source=True)}")
    with open_bus(config) as pack_bus, open_bus(config) as module_bus:
        buses = {"pack": pack_bus, "module": module_bus}
        for sender, receiver, cls, payload, label in (
            ("pack", "module", MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", "charge command"),
            ("module", "pack", MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80", "voltage reading"),
            ("module", "pack", MessageClass.VALIDATION, b"module-01 status: ok", "validation message"),
        ):
            pdu = links[sender].send(cls, payload)
            can_id, data, frame_count = _carry(pdu, buses[sender], buses[receiver], config)
            got = links[receiver].receive(can_id, data, reassembled=not pdu.single_frame)
            if got is None:  # pragma: no cover - a fresh channel sends no control frames
                raise TransportError(f"the {label} arrived as a control frame")
            frames.append(_frame_view(f"{sender}->{receiver}", can_id, data, got))
            how = "one frame" if pdu.single_frame else f"{frame_count} frames over ISO-TP"
            auth = "verified and decrypted"
            if got.tier is Tier.BINDING:
                signed = not links[sender].protocol.binding_mac
                auth = "signature verified" if signed else "verified and decrypted under the binding MAC secret's keys"
            say(
                f"{label} {sender} -> {receiver} on {config.interface} {config.channel}: id 0x{can_id:08X}, "
                f"{len(data)} bytes in {how} ({got.tier.label} tier, {links[sender].protocol.value} profile), "
                f"{auth}; payload {got.payload.hex(' ')}"
            )
    return frames


def _carry(pdu: SecuredPdu, tx_bus: can.BusABC, rx_bus: can.BusABC, config: BusConfig) -> tuple[int, bytes, int]:
    """Put one secured unit on the bus and take it off the other handle: ``(id, bytes, frames)``.

    The transport follows from the identifier (:func:`~modbatt.can.payloads.transport_for`): a
    single frame goes as it is, anything else through ISO-TP, flow control on the identifier of
    the reverse direction (docs/can-fragmentation-and-dbc.md); ``frames`` counts flow control.
    """
    fields = SEED_LAYOUT.decode(pdu.can_id)
    assert fields.tier is not None
    if transport_for(fields.function, fields.tier, CLASSIC) is Transport.SINGLE_FRAME:
        tx_bus.send(can.Message(arbitration_id=pdu.can_id, data=pdu.data, is_extended_id=True))
        msg = _await_frame(rx_bus, pdu.can_id, 2.0)
        if msg is None:
            raise TransportError(f"a frame did not arrive on {config.describe()}")
        return msg.arbitration_id, bytes(msg.data), 1
    reverse = SEED_LAYOUT.encode(dataclasses.replace(fields, direction=1 - fields.direction))
    with IsoTpLink(tx_bus, pdu.can_id, reverse) as tx, IsoTpLink(rx_bus, reverse, pdu.can_id) as rx:
        tx.send(pdu.data)
        data = rx.recv(timeout=5.0)
    if data is None:
        raise TransportError(f"an ISO-TP unit did not arrive on {config.describe()}")
    return pdu.can_id, data, len(isotp_frame_lengths(len(data), CLASSIC))
