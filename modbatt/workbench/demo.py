"""``modbatt demo``: an auth controller binds a pack controller and a battery module.

Over real HTTP by default (each entity's binding API served by uvicorn on 127.0.0.1),
or in-process. Ends with the binding proven from the ledger: an inclusion proof under
the controller-signed tree head, verified with nothing but the controller's public key.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Reason, VerificationError
from ..ledger import verify_inclusion
from ..model.access import AccessData, LctRef, TransportProtocol
from ..nodes.controller import AuthController
from ..nodes.entity_api import create_entity_app
from ..transport.http import EntityClient, HttpEntityClient, InProcessEntityClient, ServerThread
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
    steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "binding_record": self.binding_record,
            "ledger": str(self.ledger_path),
            "ledger_index": self.ledger_index,
            "tree_head": self.tree_head,
            "controller_public_key": base64.b64encode(self.controller_public_key).decode("ascii"),
            "transport": self.transport,
            "state": str(self.state_dir),
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
) -> DemoResult:
    """Bind a pack controller and a battery module; ``transport`` is ``"http"`` or ``"in-process"``."""
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
        outcome = controller.bind(pack.access_data, module.access_data, authorization)
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
        return DemoResult(
            state_dir=state,
            ledger_path=deployment.ledger_path,
            binding_record=record.to_json(),
            ledger_index=outcome.ledger_index,
            tree_head=sth.to_dict(),
            controller_public_key=deployment.controller_public_key.to_spki_der(),
            transport=transport,
            steps=steps,
        )
