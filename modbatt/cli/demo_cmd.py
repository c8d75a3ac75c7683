"""``modbatt demo``: the main job on the embedded default."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..model.pairing import ControllerMode
from ..model.profile import DEFAULT_PROFILE, ProtocolProfile, profile_named
from ..workbench.demo import run_demo
from .bus_options import add_bus_arguments, bus_from_args, bus_given


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="bind and pair a pack controller and a battery module, then talk securely on CAN",
        description="An auth controller binds a pack controller and a battery module over their HTTP binding "
        "APIs (uvicorn on 127.0.0.1), records and proves the binding in the ledger, issues a pairing "
        "certificate, and the two exchange a pairing-tier command and exchange-tier telemetry on a "
        "python-can bus: the one the flags, CAN_* variables or a python-can config file name, else the embedded "
        "virtual bus (docs/buses.md §2).",
    )
    p.add_argument("--state", type=Path, default=None, help="state directory (default: a new temporary one)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the narrative")
    p.add_argument("--in-process", action="store_true", help="call the entities in-process instead of over HTTP")
    p.add_argument(
        "--mode", choices=[m.value for m in ControllerMode], default="standard", help="controller mode for pairing"
    )
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE.value,
        metavar="NAME",
        help=f"protocol profile of the pairing: {', '.join(p.value for p in ProtocolProfile)} (docs/profiles.md)",
    )
    add_bus_arguments(p)
    mixed = p.add_argument_group("one controller, any protocol (access data names the transport)")
    mixed.add_argument(
        "--transports",
        metavar="LIST",
        help="bind and pair one entity per transport instead, e.g. can,http,mqtt (see docs/transports.md)",
    )
    mixed.add_argument("--mqtt-broker", metavar="HOST:PORT", help="MQTT broker (default: start a private mosquitto)")
    p.set_defaults(handler=_run)


def _run_mixed(args: argparse.Namespace) -> int:
    from ..workbench.mixed import parse_broker, run_mixed_demo

    profile = profile_named(args.profile)
    names = args.transports.split(",")
    if not any(n.strip().lower() == "can" for n in names) and bus_given(args):
        raise ConfigError("the bus options go with a CAN transport: add can to --transports")
    bus = bus_from_args(args) if any(n.strip().lower() == "can" for n in names) else None
    result = run_mixed_demo(names, parse_broker(args.mqtt_broker), bus=bus, profile=profile)
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        if bus is not None:
            print(f"CAN bus: {bus.describe(source=True)}")
        for e in result["entities"]:
            flags = ", ".join(k for k in ("bound", "paired", "discovered") if e.get(k))
            print(f"{e['name']:12} over {e['transport']:4}: {flags or 'FAILED'}")
    return 0 if all(e.get("bound") for e in result["entities"]) else 1


def _run(args: argparse.Namespace) -> int:
    if args.transports:
        return _run_mixed(args)
    if args.mqtt_broker:
        raise ConfigError("--mqtt-broker goes with --transports")
    profile = profile_named(args.profile)
    bus = bus_from_args(args)  # the bus rule: flags, python-can's configuration, else the embedded bus
    progress = None if args.json else (lambda line: print(f"  - {line}", flush=True))
    if not args.json:
        print("modbatt demo: binding, pairing and a secured CAN exchange")
    result = run_demo(
        args.state,
        transport="in-process" if args.in_process else "http",
        progress=progress,
        mode=ControllerMode(args.mode),
        bus=bus,
        profile=profile,
    )
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2)
        print()
        return 0
    print()
    print("binding record (seed shape):")
    print(json.dumps(result.binding_record, indent=2))
    print()
    print(f"ledger: {result.ledger_path}  (check it: modbatt ledger verify {result.ledger_path})")
    return 0
