"""``modbatt controller`` against entities served by ``modbatt entity serve`` in other processes.

Each test starts its entities as separate processes (HTTP on 127.0.0.1, MQTT through a real
mosquitto the test starts, CAN over udp_multicast on a group and port derived from a fresh run
id) and drives the controller through its command line: init, grant, bind, pair, validate,
escalate, status, revoke. Bad input (an unreachable entity, a broker that is down, a bus that
cannot be opened, an entity that refuses) is one line and leaves no state behind.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest_mqtt import mosquitto  # noqa: F401  (the broker fixture)
from helpers_entities import Entities

from modbatt.cli import main
from modbatt.sim.multiprocess import multicast_available
from modbatt.workbench.controller_home import ControllerHome


def _json(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 0) -> dict:
    assert main([*argv, "--json"]) == code, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def controller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[Path, Entities]]:
    state = tmp_path / "controller"
    out = _json(capsys, ["controller", "init", "--state", str(state)])
    key_file = Path(out["controller_public_key_file"])
    assert out["created"] and key_file.read_bytes().hex() == out["controller_public_key"]
    # init again: the same keys, nothing recreated
    assert _json(capsys, ["controller", "init", "--state", str(state)])["controller_key_id"] == out["controller_key_id"]
    entities = Entities(tmp_path / "entities", key_file)
    try:
        yield state, entities
    finally:
        entities.close()


def _ledger_size(state: Path) -> int:
    home = ControllerHome.open(state)
    try:
        return home.ledger.size
    finally:
        home.close()


def _lifecycle(capsys: pytest.CaptureFixture[str], state: Path, entities: Entities, bus: list[str]) -> None:
    """grant, bind, pair, validate, escalate, status and revoke, all through the command line."""
    ctl = ["--state", str(state)]
    root = entities.root
    a, b = entities.show(capsys, "pack-01"), entities.show(capsys, "module-01")
    grant = root / "grant.json"
    assert main(["controller", "grant", *ctl, str(a), str(b), "-o", str(grant)]) == 0
    capsys.readouterr()
    bound = _json(capsys, ["controller", "bind", *ctl, "--grant", str(grant), str(a), str(b), *bus])
    binding = bound["binding_id"]
    assert bound["ledger_index"] == 0
    # the same grant again: refused, nothing recorded
    assert main(["controller", "bind", *ctl, "--grant", str(grant), str(a), str(b), *bus]) == 2
    assert "bound already" in capsys.readouterr().err
    paired = _json(capsys, ["controller", "pair", *ctl, binding, *bus])
    assert paired["ledger_index"] == 2  # issue, then completion
    validated = _json(capsys, ["controller", "validate", *ctl, binding, *bus])
    assert [r["outcome"] for r in validated["results"]] == ["ok", "ok"]
    assert {r["device_id"] for r in validated["results"]} == {"pack-01", "module-01"}
    escalated = _json(capsys, ["controller", "escalate", *ctl, binding, "--level", "7", "--reason", "audit_required",
                               *bus])  # fmt: skip
    assert len(escalated["level7"]) == 2
    status = _json(capsys, ["controller", "status", *ctl])
    assert status["bindings"][0]["binding_id"] == binding and not status["bindings"][0]["revoked"]
    assert status["pairings"][0]["uses"] == 1 and status["ledger_size"] == 8
    revoked = _json(capsys, ["controller", "revoke", *ctl, binding, *bus])
    assert revoked["unreached"] == []
    # the audit trail verifies: every entry signed by the controller, the event log beside it
    assert main(["audit", str(state), "--json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    kinds = [e["kind"] for e in audit["entries"]]
    assert kinds[:3] == ["binding", "pairing_issued", "pairing_completed"] and kinds[-1] == "revocation"
    assert all(e["signature_valid"] for e in audit["entries"])
    assert {"binding", "pairing", "validation", "escalation", "revocation"} <= {e["kind"] for e in audit["events"]}


def test_http_entities_in_other_processes(
    controller: tuple[Path, Entities], capsys: pytest.CaptureFixture[str]
) -> None:
    state, entities = controller
    entities.serve("pack-01", "--port", "0")
    entities.serve("module-01", "--port", "0")
    _lifecycle(capsys, state, entities, [])
    # re-bind the revoked pair with a fresh grant: new keys, a new binding, the old one superseded
    root, ctl = entities.root, ["--state", str(state)]
    old = _json(capsys, ["controller", "status", *ctl])["bindings"][0]["binding_id"]
    grant = root / "grant2.json"
    assert main(["controller", "grant", *ctl, str(root / "pack-01.json"), str(root / "module-01.json"),
                 "-o", str(grant)]) == 0  # fmt: skip
    capsys.readouterr()
    rebound = _json(capsys, ["controller", "rebind", *ctl, old, "--grant", str(grant)])
    assert rebound["supersedes"] == old and rebound["binding_id"] != old
    live = [b for b in _json(capsys, ["controller", "status", *ctl])["bindings"] if not b["revoked"]]
    assert [b["binding_id"] for b in live] == [rebound["binding_id"]]
    assert main(["controller", "escalate", *ctl, rebound["binding_id"], "--level", "9", "--reason",
                 "audit_required"]) == 2  # fmt: skip
    assert "a validation level 1-7" in capsys.readouterr().err


def test_mqtt_entities_through_a_real_broker(
    controller: tuple[Path, Entities],
    capsys: pytest.CaptureFixture[str],
    mosquitto,  # noqa: F811
) -> None:
    state, entities = controller
    host, port = mosquitto.address
    entities.serve("pack-01", "--mqtt-broker", f"{host}:{port}")
    entities.serve("module-01", "--mqtt-broker", f"{host}:{port}")
    _lifecycle(capsys, state, entities, [])


@pytest.mark.skipif(not multicast_available()[0], reason=f"no IPv4 multicast here: {multicast_available()[1]}")
def test_can_entities_over_udp_multicast(controller: tuple[Path, Entities], capsys: pytest.CaptureFixture[str]) -> None:
    state, entities = controller
    bus = ["-i", "udp_multicast", "--run-id", f"test-ctl-{uuid.uuid4().hex}"]
    entities.serve("pack-01", "--can-node", "0x10", *bus)
    proc = entities.serve("module-01", "--can-node", "0x01", *bus)
    _lifecycle(capsys, state, entities, bus)
    entities.stop(proc)


@pytest.mark.skipif(not multicast_available()[0], reason=f"no IPv4 multicast here: {multicast_available()[1]}")
def test_one_controller_binds_an_http_entity_to_a_can_entity(
    controller: tuple[Path, Entities], capsys: pytest.CaptureFixture[str]
) -> None:
    state, entities = controller
    bus = ["-i", "udp_multicast", "--run-id", f"test-ctl-{uuid.uuid4().hex}"]
    entities.serve("pack-01", "--port", "0")
    entities.serve("module-01", "--can-node", "0x02", *bus)
    root = entities.root
    a, b = entities.show(capsys, "pack-01"), entities.show(capsys, "module-01")
    assert main(["controller", "grant", "--state", str(state), str(a), str(b), "-o", str(root / "g.json")]) == 0
    capsys.readouterr()
    bound = _json(capsys, ["controller", "bind", "--state", str(state), "--grant", str(root / "g.json"), str(a),
                           str(b), *bus])  # fmt: skip
    assert bound["bus"]["interface"] == "udp_multicast" and bound["endpoints"][1] == "can://can0/0x02"
    assert _json(capsys, ["controller", "pair", "--state", str(state), bound["binding_id"], *bus])["pairing_id"]


# ----------------------------------------------------------------------------- bad input


def _unchanged(state: Path) -> tuple[int, list[str]]:
    home = ControllerHome.open(state)
    try:
        return home.ledger.size, sorted(home.records.record_names())
    finally:
        home.close()


def test_unreachable_entity_broker_down_and_no_bus_change_nothing(
    controller: tuple[Path, Entities],
    capsys: pytest.CaptureFixture[str],
    mosquitto,  # noqa: F811
) -> None:
    state, entities = controller
    entities.serve("pack-01", "--port", "0")
    gone = entities.serve("module-01", "--port", "0")
    root = entities.root
    a, b = entities.show(capsys, "pack-01"), entities.show(capsys, "module-01")
    grant = root / "grant.json"
    assert main(["controller", "grant", "--state", str(state), str(a), str(b), "-o", str(grant)]) == 0
    entities.stop(gone)
    capsys.readouterr()
    before = _unchanged(state)
    ctl = ["controller", "bind", "--state", str(state), "--grant", str(grant), str(a)]
    host, port = mosquitto.address
    mosquitto.stop()
    cases = [
        ([*ctl, str(b)], "is not reachable"),  # the module's server is gone
        ([*ctl, f"mqtt://{host}:{port}/modbatt/entity/module-01"], f"MQTT broker {host}:{port} is not reachable"),
        ([*ctl, "can://can0/0x01", "-i", "socketcan", "-c", "modbatt-none0"], "cannot open socketcan modbatt-none0"),
        ([*ctl, "can://can0/0x01"], "no bus chosen"),
        ([*ctl, "can://can0/0x01", "-i", "udp_multicast"], "needs a channel"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert _unchanged(state) == before
    assert main(["controller", "status", "--state", str(root / "nothing")]) == 2
    assert "is not a controller state" in capsys.readouterr().err


def test_an_entity_that_refuses_leaves_no_half_bound_partner(
    controller: tuple[Path, Entities], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state, entities = controller
    # The module obeys another controller: it refuses the binding request, signed by this one.
    other = tmp_path / "other"
    assert main(["controller", "init", "--state", str(other)]) == 0
    capsys.readouterr()
    pack = entities.serve("pack-01", "--port", "0")
    entities.serve("module-01", "--port", "0", controller_key=other / "controller.pub.der")
    root = entities.root
    a, b = entities.show(capsys, "pack-01"), entities.show(capsys, "module-01")
    grant = root / "grant.json"
    assert main(["controller", "grant", "--state", str(state), str(a), str(b), "-o", str(grant)]) == 0
    capsys.readouterr()
    before = _unchanged(state)
    assert main(["controller", "bind", "--state", str(state), "--grant", str(grant), str(a), str(b)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("modbatt controller: error: ") and len(err.strip().splitlines()) == 1
    assert _unchanged(state) == before  # no record, no ledger entry, the grant's claim released
    entities.stop(pack)
    assert entities.bindings("pack-01") == {}  # the pack was told to drop the keys it generated
    events = [json.loads(line) for line in (state / "events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "binding" and events[-1]["outcome"] == "failed"
