"""Binding round trip: in-process and over real HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ..workbench.demo import MODULE_ID, PACK_ID, demo_network
from ..workbench.deployment import Deployment
from . import time_per_call

NAME = "binding"
DESCRIPTION = "binding round trip (authorize, generate-keys x2, distribute x2, sign, append) in-process and over HTTP"


def run(quick: bool) -> list[dict]:
    rows = []
    for transport in ("in-process", "http"):
        with tempfile.TemporaryDirectory(prefix="modbatt-bench-") as tmp:
            deployment = Deployment(Path(tmp))
            with demo_network(deployment, transport, lambda _line: None) as controller:
                pack, module = deployment.entities[PACK_ID], deployment.entities[MODULE_ID]

                def bind(controller=controller, pack=pack, module=module, deployment=deployment) -> None:
                    controller.bind(pack.access_data, module.access_data, deployment.authorize(pack, module))

                seconds = time_per_call(bind, min_seconds=0.5 if quick else 3.0, repeats=3 if quick else 5)
            deployment.close()
        rows.append(
            {"benchmark": "binding_round_trip", "transport": transport, "ms_per_binding": round(seconds * 1e3, 2)}
        )
    return rows
