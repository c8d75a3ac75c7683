"""`modbatt monitor --keystore`: both directions of a pairing shown in clear, failures classified."""

from __future__ import annotations

import json

import can
import pytest

from modbatt.cli import main
from modbatt.errors import Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.monitor_keys import KeyStoreDecryptor
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.transport.recording import write_log


def _paired(seed=5):
    d = InMemoryDeployment(seed=seed, modules=2)
    links = {}
    for node_id, module in d.modules.items():
        record = d.bind(d.pack, module).record
        pid = pair_entities(d.controller, d.pack, module, record.binding_id).certificate.metadata.pairing_id
        for name, node in (("pack", d.pack), ("module", module)):
            links[(node_id, name)] = node.channel(pid)
    return d, links


def _msg(pdu):
    return can.Message(arbitration_id=pdu.can_id, data=pdu.data, is_extended_id=True)


def test_pack_key_store_decrypts_both_directions_for_every_module():
    d, links = _paired()
    decryptor = KeyStoreDecryptor(d.pack.keystore)
    assert decryptor.nodes == [1, 2]
    from modbatt.can.ids import SEED_LAYOUT

    for node_id in (1, 2):
        command = links[(node_id, "pack")].send(MessageClass.CHARGE_COMMAND, bytes([node_id, 2, 3]))
        reading = links[(node_id, "module")].send(MessageClass.VOLTAGE_TELEMETRY, b"\x0c\x80")
        for pdu, payload in ((command, bytes([node_id, 2, 3])), (reading, b"\x0c\x80")):
            assert decryptor.decrypt(_msg(pdu), SEED_LAYOUT.decode(pdu.can_id)) == payload


def test_module_key_store_sees_only_its_own_pairing_and_classifies_tampering():
    d, links = _paired()
    from modbatt.can.ids import SEED_LAYOUT

    decryptor = KeyStoreDecryptor(d.modules[1].keystore)
    assert decryptor.nodes == [1]
    other = links[(2, "pack")].send(MessageClass.CHARGE_COMMAND, b"\x01")
    assert decryptor.decrypt(_msg(other), SEED_LAYOUT.decode(other.can_id)) is None  # no key: shown encrypted
    pdu = links[(1, "pack")].send(MessageClass.CHARGE_COMMAND, b"\x01")
    bad = can.Message(arbitration_id=pdu.can_id, data=bytes([pdu.data[0] ^ 1]) + pdu.data[1:], is_extended_id=True)
    with pytest.raises(VerificationError) as exc:
        decryptor.decrypt(bad, SEED_LAYOUT.decode(pdu.can_id))
    assert exc.value.reason is Reason.BAD_MAC


def test_monitor_cli_shows_the_demo_frames_in_clear(tmp_path, capsys):
    assert main(["demo", "--in-process", "--json", "--state", str(tmp_path / "state")]) == 0
    result = json.loads(capsys.readouterr().out)
    frames = [can.Message(timestamp=float(i), arbitration_id=int(f["can_id"], 16), data=bytes.fromhex(f["data"]),
                          is_extended_id=True) for i, f in enumerate(result["frames"])]  # fmt: skip
    log = tmp_path / "demo.log"
    write_log(log, frames)
    store = tmp_path / "state" / "entities" / "pack-controller-01.keystore"
    # The demo sends short single frames, not the payload catalog's ISO-TP framing.
    assert main(["monitor", "--log", str(log), "--keystore", str(store), "--no-builtin-dbc", "--no-reassembly"]) == 0
    out = capsys.readouterr().out
    for f in result["frames"]:
        assert " ".join(f["payload"][i : i + 2] for i in range(0, len(f["payload"]), 2)).upper() in out.upper()
