"""``modbatt entity``: run an entity's binding API, or show what an authority needs to know."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..crypto.suite import PublicKey
from ..errors import ConfigError
from ..model._fields import b64
from ..model.access import AccessData, LctRef, TransportProtocol
from ..nodes.entity import EntityNode
from ..nodes.entity_api import create_entity_app
from ..transport.http import ServerThread
from ..workbench.deployment import open_keystore

_STORE = "entity.keystore"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("entity", help="run an entity (pack controller, module) binding API")
    actions = p.add_subparsers(dest="entity_command", metavar="ACTION")
    actions.required = True

    serve = actions.add_parser("serve", help="serve POST /api/binding/* with uvicorn")
    serve.add_argument("--port", type=int, required=True, help="TCP port (0 = any free port)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--state", type=Path, required=True, help="the entity's state directory")
    _provisioning(serve)
    serve.set_defaults(handler=_serve)

    show = actions.add_parser("show", help="print the entity's access data and identity public key")
    show.add_argument("--state", type=Path, required=True)
    show.set_defaults(handler=_show)


def _provisioning(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("first run (provisioning)")
    g.add_argument("--device-id", help="this entity's device id")
    g.add_argument("--controller-key", type=Path, help="DER SubjectPublicKeyInfo of the one controller to obey")
    g.add_argument("--endpoint", help="advertised endpoint URL (default http://HOST:PORT)")
    g.add_argument("--lct-id", help="bound LCT id (lct:...)")
    g.add_argument("--chain-id", default="modbatt-ledger", help="bound LCT chain or ledger id")


def _open_node(args: argparse.Namespace, endpoint: str | None) -> EntityNode:
    store_path = args.state / _STORE
    if not store_path.exists() and not (getattr(args, "device_id", None) and getattr(args, "controller_key", None)):
        raise ConfigError(f"{args.state} holds no entity yet: pass --device-id and --controller-key on first run")
    store = open_keystore(store_path)
    if getattr(args, "device_id", None) and endpoint is not None:
        try:
            controller_key = PublicKey.from_spki_der(args.controller_key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.controller_key}: {exc.strerror}") from None
        lct = LctRef(args.lct_id, args.chain_id) if args.lct_id else None
        access = AccessData(endpoint, TransportProtocol.HTTP, args.device_id, lct)
        return EntityNode.provision(store, access_data=access, controller_key=controller_key)
    return EntityNode(store)


def _serve(args: argparse.Namespace) -> int:
    server = ServerThread(host=args.host, port=args.port)  # binds now, so the endpoint is known
    try:
        node = _open_node(args, args.endpoint or server.url)
        server.start(create_entity_app(node))
        print(f"entity {node.access_data.device_id} serving its binding API at {server.url}", flush=True)
        while server.running:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _show(args: argparse.Namespace) -> int:
    node = _open_node(args, None)
    print(
        json.dumps(
            {
                "access_data": node.access_data.to_dict(),
                "identity_public_key": b64(node.identity_key.to_spki_der()),
            },
            indent=2,
        )
    )
    return 0
