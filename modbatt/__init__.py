"""modbatt: a workbench for the Modbatt trust protocol for modular battery packs.

The main entry points, importable from here (loaded on first use, so ``import modbatt`` stays
fast)::

    dep = modbatt.InMemoryDeployment(seed=7, modules=1)           # controller, ledger, pack, modules
    record = dep.bind(dep.pack, dep.modules[1]).record            # Binding
    out = modbatt.pair_entities(dep.controller, dep.pack, dep.modules[1], record.binding_id)  # Pairing
    pid = out.certificate.metadata.pairing_id
    pack, module = dep.pack.channel(pid), dep.modules[1].channel(pid)  # the PairedChannel of each end
    frame = pack.send(modbatt.MessageClass.CHARGE_COMMAND, b"\\x01\\x00\\x64")
    module.receive(frame.can_id, frame.data)
    modbatt.pump(pack, module)                                    # carry resync frames in process
    modbatt.run_all_levels(dep.controller, dep.pack, dep.modules[1], record.binding_id, pid)  # levels 1-7
    bus = modbatt.open_bus(modbatt.resolve_bus(bus_interface, bus_channel, options=bus_options))  # the bus rule

``modbatt.resolve_bus`` is the one bus rule (docs/buses.md §2): notebooks pass their ``bus_*``
parameters to it, and nothing configured means the embedded virtual bus, named as such.

``modbatt.SPEC_VERSION`` is the version of the specification (docs/spec) this package implements.

Layers (docs/architecture.md), bottom to top: ``crypto`` and ``encoding``; ``model`` and
``ledger``; ``protocol`` (sans-I/O) and ``can``; ``nodes`` and ``transport``; ``sim``;
``attacks``, ``workbench``, ``bench`` and ``cli``. A lower layer never imports a higher one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ModbattError, Reason, VerificationError

#: Public name -> the module that defines it (imported on first access).
_LAZY = {
    # the specification version every versioned structure carries (docs/spec)
    "SPEC_VERSION": "modbatt.crypto.labels",
    # deployments and nodes
    "InMemoryDeployment": "modbatt.nodes.inmemory",
    "Deployment": "modbatt.workbench.deployment",
    "EntityNode": "modbatt.nodes.entity",
    "AuthController": "modbatt.nodes.controller",
    # pairing
    "issue_certificate": "modbatt.protocol.pairing",
    "pair_entities": "modbatt.nodes.pairing_flow",
    "pair_over": "modbatt.nodes.pairing_flow",
    "run_session": "modbatt.nodes.pairing_flow",
    # the channel (the one owner of a pairing's CAN link) and where its freshness lives
    "PairedChannel": "modbatt.nodes.channel",
    "pump": "modbatt.nodes.channel",
    "EphemeralFreshness": "modbatt.nodes.channel_store",
    "FileFreshness": "modbatt.nodes.channel_store",
    "MessageClass": "modbatt.model.policy",
    "Tier": "modbatt.model.tier",
    # validation levels 1-7
    "LEVELS": "modbatt.nodes.validation",
    "run_level": "modbatt.nodes.validation",
    "run_all_levels": "modbatt.nodes.validation",
    # buses (python-can, from configuration)
    "BusConfig": "modbatt.transport.canbus",
    "open_bus": "modbatt.transport.canbus",
    "resolve_bus": "modbatt.transport.canbus",
}

__all__ = [
    "LEVELS",
    "SPEC_VERSION",
    "AuthController",
    "BusConfig",
    "Deployment",
    "EntityNode",
    "EphemeralFreshness",
    "FileFreshness",
    "InMemoryDeployment",
    "MessageClass",
    "ModbattError",
    "PairedChannel",
    "Reason",
    "Tier",
    "VerificationError",
    "__version__",
    "issue_certificate",
    "open_bus",
    "pair_entities",
    "pair_over",
    "pump",
    "resolve_bus",
    "run_all_levels",
    "run_level",
    "run_session",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .crypto.labels import SPEC_VERSION
    from .model.policy import MessageClass
    from .model.tier import Tier
    from .nodes.channel import PairedChannel, pump
    from .nodes.channel_store import EphemeralFreshness, FileFreshness
    from .nodes.controller import AuthController
    from .nodes.entity import EntityNode
    from .nodes.inmemory import InMemoryDeployment
    from .nodes.pairing_flow import pair_entities, pair_over, run_session
    from .nodes.validation import LEVELS, run_all_levels, run_level
    from .protocol.pairing import issue_certificate
    from .transport.canbus import BusConfig, open_bus, resolve_bus
    from .workbench.deployment import Deployment


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modbatt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
