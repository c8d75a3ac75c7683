"""``modbatt controller``: an auth controller you can run against entities served anywhere.

    modbatt controller init --state DIR                      keys, ledger; prints the public key
    modbatt controller grant --state DIR A.json B.json -o G  the binding authority's grant (entity show files)
    modbatt controller bind --state DIR --grant G A B        A, B: entity show files or endpoints (http, mqtt, can)
    modbatt controller pair --state DIR BINDING_ID           issue a certificate, run the pairing over the transports
    modbatt controller validate --state DIR BINDING_ID       level 7: each entity proves its binding key
    modbatt controller escalate --state DIR BINDING_ID --level 7 --reason audit_required
    modbatt controller revoke --state DIR BINDING_ID         ledger first, then both entities are told
    modbatt controller rebind --state DIR BINDING_ID --grant G
    modbatt controller status --state DIR [--json]

Everything lands in the state's ledger and event log (``modbatt audit DIR``). A user mistake, an
unreachable entity, a broker that is down or a bus that cannot be opened is one line (exit 2) and
changes nothing; a refusal by an entity or a failed check is one line with its reason (exit 1).
See docs/controller.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModbattError
from .bus_options import add_bus_arguments, bus_from_args

_LEVEL7 = 7


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("controller", help="run an auth controller: bind, pair, validate and revoke remote entities")
    actions = p.add_subparsers(dest="controller_command", metavar="ACTION")
    actions.required = True

    def action(name: str, help_text: str, handler: Callable[[argparse.Namespace], int], *, network: bool = False
               ) -> argparse.ArgumentParser:  # fmt: skip
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("--state", type=Path, required=True, help="the controller's state directory")
        a.add_argument("--json", action="store_true", help="print one JSON object")
        if network:
            a.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an entity's answer")
            add_bus_arguments(a, title="bus for can:// entities (the bus rule, docs/buses.md §2; must be shared)")
        a.set_defaults(handler=handler)
        return a

    init = action("init", "create the controller's keys and ledger and print its public key", _init)
    init.add_argument("--authority-key", type=Path, metavar="DER", help="trust this external binding authority")

    grant = action("grant", "sign a binding grant for two entities (the local binding authority)", _grant)
    grant.add_argument("entity_a", type=Path, metavar="A.json", help="output of modbatt entity show")
    grant.add_argument("entity_b", type=Path, metavar="B.json", help="output of modbatt entity show")
    grant.add_argument("-o", "--output", type=Path, help="write the grant here (default: print it)")
    grant.add_argument("--lifetime", type=int, default=600, help="seconds the grant stays valid (default 600)")

    bind = action("bind", "bind two entities given their access data, under a grant", _bind, network=True)
    bind.add_argument("entity_a", metavar="A", help="entity show JSON file, or its endpoint (http://, mqtt://, can://)")
    bind.add_argument("entity_b", metavar="B", help="likewise for the second entity")
    bind.add_argument("--grant", type=Path, required=True, help="the grant file (modbatt controller grant)")

    pair = action("pair", "issue a pairing certificate and run the pairing over the transports", _pair, network=True)
    pair.add_argument("binding_id")
    pair.add_argument("--mode", choices=("standard", "blind"), default="standard")
    pair.add_argument("--max-uses", type=int, default=1)
    pair.add_argument("--valid-for", type=int, default=24 * 3600, metavar="S", help="certificate validity, seconds")

    validate = action("validate", "level 7: each entity proves it holds its binding key", _validate, network=True)
    validate.add_argument("binding_id")
    validate.add_argument("--entity", metavar="DEVICE_ID", help="only this entity of the binding")
    validate.add_argument("--level", type=int, default=_LEVEL7, help="the level to run (7: the one run remotely)")

    esc = action("escalate", "raise a binding's required level, record it, and run level 7 now", _escalate,
                 network=True)  # fmt: skip
    esc.add_argument("binding_id")
    esc.add_argument("--level", type=int, required=True, help="target level 1-7")
    esc.add_argument("--reason", choices=("anomaly_detected", "security_threat", "audit_required"), required=True)
    esc.add_argument("--urgency", choices=("immediate", "deferred"), default="immediate")

    revoke = action("revoke", "revoke a binding (ledger first) and tell both entities", _revoke, network=True)
    revoke.add_argument("binding_id")
    revoke.add_argument("--reason", default="unbound")

    rebind = action("rebind", "revoke a binding and bind the same entities with fresh keys", _rebind, network=True)
    rebind.add_argument("binding_id")
    rebind.add_argument("--grant", type=Path, required=True)

    action("status", "keys, ledger, bindings, pairings and the latest events", _status)


# ----------------------------------------------------------------------------- plumbing


def _emit(args: argparse.Namespace, result: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        json.dump(result, sys.stdout, indent=2, default=str)
        print()
    else:
        for line in lines:
            print(line)


@contextmanager
def _session(args: argparse.Namespace) -> Iterator[tuple[Any, Any, Any]]:
    """The home, its controller and the clients reaching entities; everything closed afterwards."""
    from ..workbench.controller_home import ControllerHome, EntityClients

    if getattr(args, "timeout", 5.0) <= 0:
        raise ConfigError("--timeout must be positive")
    home = ControllerHome.open(args.state)
    clients = None
    try:
        if hasattr(args, "interface"):
            # A failed ISO-TP transfer is the TransportError's one line, not can-isotp's warnings too.
            logging.getLogger("isotp").setLevel(logging.ERROR)
            clients = EntityClients(
                bus=lambda: bus_from_args(args, embedded=False, purpose="reaching can:// entities"),
                timeout=args.timeout,
            )
        yield home, home.controller(clients), clients
    finally:
        if clients is not None:
            clients.close()
        home.close()


def _logged(home: Any, kind: str, fields: dict[str, Any], op: Callable[[], Any]) -> Any:
    """Run ``op``; its failure goes into the event log (with its reason) and is raised on."""
    try:
        return op()
    except ModbattError as exc:
        reason = getattr(exc, "reason", None)
        home.events.log(kind, outcome="failed", t=home.clock(), reason=getattr(reason, "value", None),
                        detail=str(exc), **fields)  # fmt: skip
        raise


def _read_grant(path: Path) -> Any:
    from ..model.binding import BindingAuthorization

    try:
        return BindingAuthorization.from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not a grant file (modbatt controller grant): {exc}") from None


def _access(text: str, device_id: str) -> Any:
    """Access data from an ``entity show`` file, or from an endpoint plus the device the grant names."""
    from ..model.access import AccessData
    from ..transport.routing import protocol_of
    from ..workbench.controller_home import read_entity_facts

    if "://" not in text:
        facts = read_entity_facts(text)
        if facts["device_id"] != device_id:
            raise ConfigError(f"{text} describes {facts['device_id']}, but the grant names {device_id} here")
        return facts["access_data"]
    try:
        return AccessData(text, protocol_of(text), device_id)
    except ModbattError as exc:
        raise ConfigError(f"{text}: {exc}") from None


# ----------------------------------------------------------------------------- actions


def _init(args: argparse.Namespace) -> int:
    from ..crypto.suite import PublicKey
    from ..workbench.controller_home import ControllerHome

    external = None
    if args.authority_key is not None:
        try:
            external = PublicKey.from_spki_der(args.authority_key.read_bytes())
        except OSError as exc:
            raise ConfigError(f"cannot read {args.authority_key}: {exc.strerror or exc}") from None
    home, created = ControllerHome.init(args.state, authority_key=external)
    try:
        if created:
            home.events.log(
                "controller_init", t=home.clock(), controller_key_id=home.controller_key.public_key.key_id()
            )
        der = home.controller_key.public_key.to_spki_der()
        result = {
            "created": created,
            "state": str(home.root),
            "controller_public_key_file": str(home.public_key_file),
            "controller_public_key": der.hex(),
            "controller_key_id": home.controller_key.public_key.key_id().hex(),
            "authority": "local" if home.authority_key is not None else "external",
        }
        _emit(args, result, [
            f"controller {'initialised' if created else 'already initialised'} in {home.root}",
            f"public key (SPKI DER) written to {home.public_key_file}; give it to each entity:",
            f"  modbatt entity serve ... --controller-key {home.public_key_file}",
            f"key id {result['controller_key_id']}",
            f"public key {result['controller_public_key']}",
        ])  # fmt: skip
    finally:
        home.close()
    return 0


def _grant(args: argparse.Namespace) -> int:
    from ..workbench.controller_home import ControllerHome, read_entity_facts

    a, b = read_entity_facts(args.entity_a), read_entity_facts(args.entity_b)
    home = ControllerHome.open(args.state)
    try:
        grant = home.grant(a, b, args.lifetime)
        home.events.log("grant", t=home.clock(), device_a=grant.device_a, device_b=grant.device_b,
                        not_after=grant.not_after)  # fmt: skip
    finally:
        home.close()
    text = json.dumps(grant.to_json(), indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")
        if not args.json:
            print(f"grant for {grant.device_a} <-> {grant.device_b} written to {args.output} "
                  f"(valid {args.lifetime} s)")  # fmt: skip
    if args.output is None or args.json:
        print(text)
    return 0


def _bind(args: argparse.Namespace) -> int:
    grant = _read_grant(args.grant)
    a, b = _access(args.entity_a, grant.device_a), _access(args.entity_b, grant.device_b)
    with _session(args) as (home, controller, clients):
        if controller.binding_of(a.device_id, b.device_id) is not None:
            raise ConfigError(
                f"{a.device_id} and {b.device_id} are bound already ({controller.binding_of(a.device_id, b.device_id)})"
                ": revoke or rebind it"
            )
        clients.check_reachable([a.endpoint, b.endpoint])  # before anything is claimed
        fields = {"device_a": a.device_id, "device_b": b.device_id, "endpoints": [a.endpoint, b.endpoint]}
        outcome = _logged(home, "binding", fields, lambda: controller.bind(a, b, grant))
        record = outcome.record
        home.events.log("binding", t=home.clock(), binding_id=record.binding_id, ledger_index=outcome.ledger_index,
                        **fields)  # fmt: skip
        result = {"binding_id": record.binding_id, "ledger_index": outcome.ledger_index, **fields,
                  "bus": clients.bus_config.to_json() if clients.bus_config else None}  # fmt: skip
        lines = [f"bound {a.device_id} ({a.endpoint}) and {b.device_id} ({b.endpoint})",
                 f"binding {record.binding_id}, ledger entry #{outcome.ledger_index}"]  # fmt: skip
        if clients.bus_config is not None:
            lines.append(f"CAN bus: {clients.bus_config.describe(source=True)}")
        _emit(args, result, lines)
    return 0


def _endpoints_of(controller: Any, binding_id: str) -> list[str]:
    from ..errors import Reason, VerificationError

    record = controller.record(binding_id)
    if record is None:
        raise VerificationError(Reason.UNKNOWN_BINDING, f"no binding {binding_id}")
    return [record.entity_a.access_data.endpoint, record.entity_b.access_data.endpoint]


def _pair(args: argparse.Namespace) -> int:
    from ..model.pairing import ControllerMode
    from ..nodes.pairing_flow import pair_over

    with _session(args) as (home, controller, clients):
        clients.check_reachable(_endpoints_of(controller, args.binding_id))
        fields = {"binding_id": args.binding_id, "mode": args.mode}
        outcome = _logged(home, "pairing", fields, lambda: pair_over(
            controller, clients, args.binding_id, mode=ControllerMode(args.mode), max_uses=args.max_uses,
            valid_for_s=args.valid_for,
        ))  # fmt: skip
        meta = outcome.certificate.metadata
        home.events.log("pairing", t=home.clock(), pairing_id=meta.pairing_id, ledger_index=outcome.ledger_index,
                        offers=list(outcome.offer_sizes), **fields)  # fmt: skip
        result = {"pairing_id": meta.pairing_id, "ledger_index": outcome.ledger_index,
                  "certificate_bytes": len(outcome.certificate.encode()), **fields}  # fmt: skip
        _emit(args, result, [f"paired binding {args.binding_id}: pairing {meta.pairing_id} ({args.mode} mode)",
                             f"completion recorded as ledger entry #{outcome.ledger_index}"])  # fmt: skip
    return 0


def _run_level7(home: Any, controller: Any, clients: Any, binding_id: str, only: str | None, event: str) -> list[dict]:
    """Each entity (or ``only``) proves its binding key; every proof is recorded (ledger and events)."""
    from ..model.statements import sign_statement
    from ..nodes.liveness import prove_binding_key

    record = controller.record(binding_id)
    devices = [e.access_data.device_id for e in (record.entity_a, record.entity_b)] if record else []
    if only is not None and only not in devices:
        raise ConfigError(f"{only} is not an entity of binding {binding_id}")
    targets = [only] if only else devices
    clients.check_reachable(_endpoints_of(controller, binding_id))
    results = []
    for device in targets:
        fields = {"binding_id": binding_id, "subject": device, "event": event}
        proof = _logged(home, "validation", {**fields, "level": _LEVEL7}, lambda d=device: prove_binding_key(
            controller, clients, binding_id, d, clock=home.clock, rng=home.rng, event=event))  # fmt: skip
        statement = sign_statement(home.controller_key, "validation", {
            **fields, "level": _LEVEL7, "verifier": "controller", "method": "binding_key_challenge", "status": "active",
        }, home.clock())  # fmt: skip
        index = home.ledger.append(statement)
        home.ledger.signed_tree_head()
        home.events.log("validation", level=_LEVEL7, t=home.clock(), ledger_index=index, **fields,
                        endpoint=proof["endpoint"], bytes=[proof["challenge_bytes"], proof["proof_bytes"]])  # fmt: skip
        results.append({**proof, "outcome": "ok", "ledger_index": index})
    return results


def _validate(args: argparse.Namespace) -> int:
    if args.level != _LEVEL7:
        raise ConfigError(
            f"level {args.level} runs between the two entities (docs/validation.md); the controller runs level 7 "
            "against entities elsewhere: --level 7"
        )
    with _session(args) as (home, controller, clients):
        results = _run_level7(home, controller, clients, args.binding_id, args.entity, "verification")
    _emit(args, {"binding_id": args.binding_id, "level": _LEVEL7, "results": results},
          [f"level 7: {r['device_id']} at {r['endpoint']} proved its binding key (ledger #{r['ledger_index']})"
           for r in results])  # fmt: skip
    return 0


def _escalate(args: argparse.Namespace) -> int:
    from ..model.statements import sign_statement
    from ..protocol.validation import EscalationRequest

    if not 1 <= args.level <= _LEVEL7:
        raise ConfigError(f"--level is a validation level 1-7, not {args.level}")
    request = EscalationRequest(args.level, args.reason, args.urgency)
    with _session(args) as (home, controller, clients):
        _endpoints_of(controller, args.binding_id)  # the binding exists
        if controller.is_revoked(args.binding_id):
            raise ConfigError(f"binding {args.binding_id} is revoked")
        fields = {"binding_id": args.binding_id, "sender": "controller", "escalation_request": request.to_dict()}
        index = home.ledger.append(sign_statement(home.controller_key, "escalation", {**fields, "event": "escalated"},
                                                  home.clock()))  # fmt: skip
        home.ledger.signed_tree_head()
        home.events.log("escalation", outcome="escalated", level=args.level, t=home.clock(), ledger_index=index,
                        **fields)  # fmt: skip
        ran: list[dict] = []
        if args.level == _LEVEL7 and args.urgency == "immediate":
            ran = _run_level7(home, controller, clients, args.binding_id, None, "verification")
    lines = [f"binding {args.binding_id}: required level raised to {args.level} ({args.reason}, {args.urgency}); "
             f"ledger #{index}"]  # fmt: skip
    lines += [f"level 7: {r['device_id']} proved its binding key (ledger #{r['ledger_index']})" for r in ran]
    if not ran:
        lines.append("levels below 7 run between the entities; the controller recorded the requirement")
    _emit(args, {"binding_id": args.binding_id, "ledger_index": index, **request.to_dict(), "level7": ran}, lines)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with _session(args) as (home, controller, _clients):
        fields = {"binding_id": args.binding_id, "reason": args.reason}
        _, index, unreached = _logged(home, "revocation", fields,
                                               lambda: controller.revoke(args.binding_id, args.reason))  # fmt: skip
        home.events.log("revocation", t=home.clock(), ledger_index=index, unreached=unreached, **fields)
    lines = [f"revoked {args.binding_id} (ledger #{index})"]
    if unreached:
        lines.append(f"not reached (they refuse the binding once they learn of it): {', '.join(unreached)}")
    _emit(args, {"binding_id": args.binding_id, "ledger_index": index, "unreached": unreached}, lines)
    return 0


def _rebind(args: argparse.Namespace) -> int:
    grant = _read_grant(args.grant)
    with _session(args) as (home, controller, clients):
        clients.check_reachable(_endpoints_of(controller, args.binding_id))
        fields = {"supersedes": args.binding_id}
        outcome = _logged(home, "binding", fields, lambda: controller.rebind(args.binding_id, grant))
        record = outcome.record
        home.events.log("binding", t=home.clock(), binding_id=record.binding_id, ledger_index=outcome.ledger_index,
                        **fields)  # fmt: skip
    _emit(
        args,
        {"binding_id": record.binding_id, "ledger_index": outcome.ledger_index, **fields},
        [f"re-bound: {args.binding_id} revoked, {record.binding_id} recorded (ledger #{outcome.ledger_index})"],
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from ..nodes.audit import read_events
    from ..workbench.controller_home import ControllerHome

    home = ControllerHome.open(args.state)
    try:
        controller = home.controller(None)
        bindings, pairings = [], []
        for binding_id in controller.binding_ids():
            record = controller.record(binding_id)
            if record is not None:
                bindings.append({
                    "binding_id": record.binding_id, "revoked": controller.is_revoked(record.binding_id),
                    "entities": [{"device_id": e.access_data.device_id, "endpoint": e.access_data.endpoint}
                                 for e in (record.entity_a, record.entity_b)],
                })  # fmt: skip
        for pairing_id in controller.pairing_ids():
            pending = controller.pending_pairing(pairing_id)
            pairings.append({"pairing_id": pending.pairing_id, "binding_id": pending.binding_id,
                             "uses": len(pending.sessions), "max_uses": pending.max_uses,
                             "revoked": controller.is_pairing_revoked(pending.pairing_id)})  # fmt: skip
        sth = home.ledger.signed_tree_head()
        events_path = home.root / "events.jsonl"
        events = list(read_events(events_path)) if events_path.exists() else []
        result = {
            "state": str(home.root), "controller_key_id": home.controller_key.public_key.key_id().hex(),
            "authority": "local" if home.authority_key is not None else "external",
            "ledger_size": sth.tree_size, "bindings": bindings, "pairings": pairings, "events": len(events),
            "last_events": events[-5:],
        }  # fmt: skip
    finally:
        home.close()
    lines = [f"controller {result['controller_key_id'][:16]}… in {result['state']} (authority: {result['authority']})",
             f"ledger: {result['ledger_size']} entries; events: {result['events']}"]  # fmt: skip
    for b in bindings:
        ents = ", ".join(f"{e['device_id']} {e['endpoint']}" for e in b["entities"])
        lines.append(f"binding {b['binding_id']} {'revoked' if b['revoked'] else 'live'}: {ents}")
    for p in pairings:
        lines.append(f"pairing {p['pairing_id']} of {p['binding_id']}: {p['uses']}/{p['max_uses']} uses"
                     + (" (revoked)" if p["revoked"] else ""))  # fmt: skip
    _emit(args, result, lines)
    return 0
