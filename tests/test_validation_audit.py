"""Dynamic discovery from an L1 announce, the event log, and ``modbatt audit``."""

from __future__ import annotations

import base64
import json

import pytest
from helpers_validation import paired_world

from modbatt.cli import main
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import ConfigError, Reason, VerificationError
from modbatt.ledger import Ledger
from modbatt.model import AccessData, TransportProtocol
from modbatt.nodes.audit import EventLog, describe_entry
from modbatt.nodes.validation import LEVELS, Discovery, ValidationService, run_all_levels
from modbatt.protocol.validation import Announcer
from modbatt.transport.http import InProcessEntityClient


def test_controller_discovers_a_moved_module_from_its_announce_and_reaches_it_there():
    p = paired_world()
    moved = AccessData("can://can1/0x05", TransportProtocol.CAN, "module-01")
    service = ValidationService(p.world.module, clock=p.world.clock)
    can_client = InProcessEntityClient({moved.endpoint: service})
    discovery = Discovery(p.world.controller, {TransportProtocol.CAN: can_client})
    data = Announcer(binding_id=p.ctx.binding_id, access_data=moved, binding_key=p.module["binding_key"]).announce(
        p.now
    )
    found = discovery.on_announce(data, p.now)
    assert found.moved and found.reached_via == "CAN" and discovery.directory["module-01"] == moved
    # no client for the named protocol: a clear configuration error
    with pytest.raises(ConfigError):
        Discovery(p.world.controller, {}).on_announce(data, p.now)
    # an announce from a key the controller never bound is refused and counted
    rogue = Announcer(binding_id=p.ctx.binding_id, access_data=moved, binding_key=PrivateKey.generate())
    with pytest.raises(VerificationError) as exc:
        discovery.on_announce(rogue.announce(p.now), p.now)
    assert exc.value.reason is Reason.UNKNOWN_BINDING and discovery.rejections[Reason.UNKNOWN_BINDING] == 1


def test_discovery_refuses_a_device_that_cannot_prove_its_key():
    p = paired_world()
    moved = AccessData("can://can1/0x05", TransportProtocol.CAN, "module-01")
    impostor = ValidationService(p.world.pack, clock=p.world.clock)  # answers, but holds the other key
    discovery = Discovery(
        p.world.controller, {TransportProtocol.CAN: InProcessEntityClient({moved.endpoint: impostor})}
    )
    data = Announcer(binding_id=p.ctx.binding_id, access_data=moved, binding_key=p.module["binding_key"]).announce(
        p.now
    )
    with pytest.raises(VerificationError) as exc:
        discovery.on_announce(data, p.now)
    assert exc.value.reason is Reason.WRONG_PEER  # the pack refuses a challenge naming the module


def _audited_ledger(tmp_path):
    p = paired_world()
    log = EventLog(tmp_path / "events.jsonl")
    run_all_levels(p.world.controller, p.world.pack, p.world.module, p.ctx.binding_id, p.ctx.pairing_id, events=log)
    path = tmp_path / "ledger.sqlite"
    with Ledger(path, signer=p.world.controller_key) as copy:
        copy.append_many(list(p.world.ledger.entries()))
        copy.signed_tree_head()
    return p, path


def test_audit_cli_json_decodes_every_entry_and_the_event_log(tmp_path, capsys):
    _p, path = _audited_ledger(tmp_path)
    assert main(["audit", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    kinds = [e["kind"] for e in report["entries"]]
    assert kinds[:3] == ["binding", "pairing_issued", "pairing_completed"] and kinds.count("validation") == 3
    assert report["all_signatures_valid"] and all(e["signature_valid"] for e in report["entries"])
    assert [e["level"] for e in report["events"]] == [1, 2, 3, 4, 5, 6, 7]
    assert all(e["outcome"] == "ok" for e in report["events"])
    assert main(["audit", str(path)]) == 0
    text = capsys.readouterr().out
    assert "binding" in text and "sig ok" in text and "event log" in text


def test_audit_cli_flags_a_forged_entry_and_a_missing_file(tmp_path, capsys):
    p, path = _audited_ledger(tmp_path)
    other = PrivateKey.generate()
    from modbatt.model.statements import sign_statement

    with Ledger(path) as ledger:  # a statement signed by another key, appended behind the controller's back
        ledger.append(sign_statement(other, "validation", {"level": 1}, p.now))
    assert main(["audit", str(path)]) == 1
    assert "SIG INVALID" in capsys.readouterr().out
    assert main(["audit", str(tmp_path / "nope.sqlite")]) == 2
    assert "no such ledger" in capsys.readouterr().err


def test_describe_entry_handles_garbage():
    assert describe_entry(0, b"\xff\x00", None)["kind"] == "undecodable"


def test_bench_area_contract_and_context():
    from modbatt.bench import AREAS, load_area

    area = load_area("validation")
    assert "validation" in AREAS and area.NAME == "validation" and area.DESCRIPTION
    ctx = area.build_context()
    try:
        out = LEVELS[4](ctx)
        assert out["outcome"] == "ok" and out["messages"] == 3
    finally:
        ctx.controller.ledger.close()


def test_validation_service_refuses_other_ops_and_levels():
    p = paired_world()
    service = ValidationService(p.world.module, clock=p.world.clock)
    assert service.handle("generate-keys", {})[0] == 404
    hello = Announcer(
        binding_id=p.ctx.binding_id, access_data=p.world.module.access_data, binding_key=p.module["binding_key"]
    ).announce(p.now)
    status, body = service.handle("validate", {"message": base64.b64encode(hello).decode()})
    assert status == 400 and body["error"] == "wrong_level" and service.rejections[Reason.WRONG_LEVEL] == 1
