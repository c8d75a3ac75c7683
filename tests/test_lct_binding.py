"""Binding a device to an LCT: party types in access data, the record's bound LCT, in memory and over HTTP."""

from __future__ import annotations

import pytest
from helpers_binding import World

from modbatt.crypto.keystore import KeyStore
from modbatt.encoding import strict_loads
from modbatt.errors import Reason, VerificationError
from modbatt.model import AccessData, BindingRecord, LctRef, PartyType, TransportProtocol
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.entity_api import create_entity_app
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.protocol.messages import ControllerRequest
from modbatt.transport.http import HttpEntityClient, ServerThread

LCT = AccessData("http://lct.invalid/rpc", TransportProtocol.HTTP, "lct:web4:fleet-7", type=PartyType.LCT,
                 chain_id="web4-main", token_id="4711")  # fmt: skip


def lct_at(endpoint: str) -> AccessData:
    return AccessData(endpoint, TransportProtocol.HTTP, LCT.device_id, type=PartyType.LCT, chain_id=LCT.chain_id,
                      token_id=LCT.token_id)  # fmt: skip


GOOD = {"endpoint": "http://lct.invalid/rpc", "protocol": "HTTP", "device_id": "lct:web4:x", "type": "lct",
        "chain_id": "web4-main", "token_id": "0x1f"}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "robot"}, Reason.MALFORMED),
        ({"type": 7}, Reason.MALFORMED),
        ({"token_id": None}, Reason.MALFORMED),  # an LCT needs its token id
        ({"chain_id": None}, Reason.MALFORMED),
        ({"token_id": "has space"}, Reason.MALFORMED),
        ({"token_id": "9" * 129}, Reason.OVERSIZED),
        ({"token_id": 4711}, Reason.MALFORMED),
        ({"device_id": "fleet-7"}, Reason.MALFORMED),  # an LCT is named by its lct: id
        ({"protocol": "CAN", "endpoint": "can://can0/0x02"}, Reason.MALFORMED),  # reached over RPC, not CAN
        ({"bound_lct": {"lct_id": "lct:y", "chain_id": "c"}}, Reason.MALFORMED),
        ({"type": "device"}, Reason.MALFORMED),  # a device carries no chain_id / token_id
        ({"type": "entity"}, Reason.MALFORMED),
        ({"owner": "me"}, Reason.UNKNOWN_FIELD),
    ],
)
def test_untrusted_access_data_with_party_types_is_checked(change, reason):
    value = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(VerificationError) as err:
        AccessData.from_dict(value)
    assert err.value.reason is reason


def test_party_types_round_trip_with_one_encoding_per_value():
    lct = AccessData.from_dict(GOOD)
    assert lct.type is PartyType.LCT and lct.lct_ref == LctRef("lct:web4:x", "web4-main", GOOD["endpoint"], "0x1f")
    assert AccessData.from_dict(lct.to_dict()) == lct and lct.to_dict() == GOOD
    device = {"endpoint": "can://can0/0x01", "protocol": "CAN", "device_id": "module-01"}
    assert "type" not in AccessData.from_dict(device).to_dict()  # a device leaves the default out
    assert AccessData.from_dict({**device, "type": "device"}) == AccessData.from_dict(device)
    entity = AccessData.from_dict({**device, "type": "entity"})
    assert entity.type is PartyType.ENTITY and entity.to_dict()["type"] == "entity" and entity.lct_ref is None
    ref = LctRef.from_dict({"lct_id": "lct:a", "chain_id": "c", "token_id": "12"})
    assert ref.to_dict() == {"lct_id": "lct:a", "chain_id": "c", "token_id": "12"}


def test_a_module_is_bound_to_an_lct_in_memory():
    dep = InMemoryDeployment(seed=11, modules=1)
    module, lct = dep.modules[1], dep.add_entity(LCT)
    outcome = dep.controller.bind(module.access_data, lct.access_data, dep.authorize(module, lct))
    record = outcome.record
    assert record.entity_a.bound_lct == LCT.lct_ref and record.entity_a.bound_lct.token_id == "4711"
    assert record.entity_b.access_data.type is PartyType.LCT and record.entity_b.bound_lct is None
    # Both parties keep what they learnt: the module knows its partner is this LCT, with its token id.
    assert module.binding(record.binding_id).partner_access == LCT
    assert lct.binding(record.binding_id).partner_access == module.access_data
    entry = strict_loads(dep.ledger.entry(outcome.ledger_index))
    assert entry["entity_a"]["bound_lct"] == LCT.lct_ref.to_dict()
    assert entry["entity_b"]["access_data"]["type"] == "lct" and entry["entity_b"]["access_data"]["token_id"] == "4711"
    assert BindingRecord.from_json(record.to_json()) == record
    record.verify(dep.controller_key.public_key)


def test_the_record_must_carry_the_lct_the_binding_binds_to():
    dep = InMemoryDeployment(seed=12, modules=1)
    module, lct = dep.modules[1], dep.add_entity(LCT)
    data = dep.controller.bind(module.access_data, lct.access_data, dep.authorize(module, lct)).record.to_json()
    for forged in (None, {"lct_id": "lct:web4:other", "chain_id": "web4-main"}):
        data["entity_a"]["bound_lct"] = forged
        with pytest.raises(VerificationError) as err:
            BindingRecord.from_json(data)
        assert err.value.reason is Reason.MALFORMED


def test_a_device_that_declares_its_lct_is_never_bound_to_another():
    dep = InMemoryDeployment(seed=13, modules=1)  # the pack declares lct:web4:pack-01
    lct = dep.add_entity(LCT)
    with pytest.raises(VerificationError) as err:
        dep.controller.bind(dep.pack.access_data, lct.access_data, dep.authorize(dep.pack, lct))
    assert err.value.reason is Reason.WRONG_PEER and dep.controller.rejections[Reason.WRONG_PEER] == 1
    assert dep.ledger.size == 0 and dep.pack.machine.bindings == {} and lct.machine.bindings == {}
    # The entity refuses it too, should a controller ask anyway.
    request = ControllerRequest("generate-keys", "6f1c2f4e-8b1a-4c39-9a51-3d3b1f2c7a10", dep.rng.token_bytes(16),
                                int(dep.clock() * 1000), "pack-01", {"partner_access_data": LCT})  # fmt: skip
    status, body = dep.pack.handle("generate-keys", request.sign(dep.controller_key).to_json())
    assert (status, body["error"]) == (403, "wrong_peer") and dep.pack.machine.bindings == {}
    # Its own LCT is fine: the record then carries the LCT's full reference, token id included.
    own = dep.add_entity(AccessData("http://own.invalid/rpc", TransportProtocol.HTTP, "lct:web4:pack-01",
                                    type=PartyType.LCT, chain_id="modbatt-ledger", token_id="1"))  # fmt: skip
    record = dep.controller.bind(dep.pack.access_data, own.access_data, dep.authorize(dep.pack, own)).record
    assert record.entity_a.bound_lct.token_id == "1"
    assert record.entity_a.bound_lct.same_lct(dep.pack.access_data.bound_lct)


class _Recording:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def call(self, endpoint, op, payload):
        self.calls.append((op, payload))
        return self.inner.call(endpoint, op, payload)


def test_a_module_is_bound_to_an_lct_over_http():
    w = World()
    with ServerThread() as s_module, ServerThread() as s_lct:
        nodes = {}
        for name, srv, access in (
            ("module", s_module, AccessData(s_module.url, TransportProtocol.HTTP, "module-01")),
            ("lct", s_lct, lct_at(s_lct.url)),
        ):
            nodes[name] = EntityNode.provision(
                KeyStore.in_memory(reproducible=True), access_data=access,
                controller_key=w.controller_key.public_key, clock=w.clock, rng=w.rng,
            )  # fmt: skip
            srv.start(create_entity_app(nodes[name]))
        client = _Recording(HttpEntityClient())
        w.controller.client = client
        try:
            outcome = w.controller.bind(nodes["module"].access_data, nodes["lct"].access_data,
                                        w.authorize(nodes["module"], nodes["lct"]))  # fmt: skip
        finally:
            client.inner.close()
    generate = [p for op, p in client.calls if op == "generate-keys" and p["target"] == "module-01"]
    assert generate[0]["body"]["partner_access_data"]["type"] == "lct"
    assert generate[0]["body"]["partner_access_data"]["token_id"] == "4711"
    assert outcome.record.entity_a.bound_lct == nodes["lct"].access_data.lct_ref
    assert nodes["module"].binding(outcome.record.binding_id).partner_access.type is PartyType.LCT
    assert w.ledger.size == 1
