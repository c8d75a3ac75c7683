"""The binding API over real HTTP (uvicorn on 127.0.0.1), and every bad-input class.

Each rejection must carry its classified reason and leave the entity's key store file
byte-for-byte unchanged.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from helpers_binding import World

from modbatt.crypto.keystore import KeyStore
from modbatt.crypto.suite import PrivateKey
from modbatt.errors import Reason, TransportError, VerificationError
from modbatt.model import AccessData, TransportProtocol
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.entity_api import MAX_BODY_BYTES, create_entity_app
from modbatt.protocol.binding import make_revoke_request
from modbatt.protocol.messages import ControllerRequest
from modbatt.transport.http import HttpEntityClient, ServerThread


@pytest.fixture
def served(tmp_path):
    """The World's module entity re-homed on a disk key store and served over HTTP."""
    w = World()
    key_file = KeyStore.generate_key_file(tmp_path / "module.kek")
    store_path = tmp_path / "module.keystore"
    store = KeyStore.create(store_path, key_file=key_file, reproducible=True)
    with ServerThread() as server:
        access = AccessData(server.url, TransportProtocol.HTTP, "module-01")
        identity = w.stores["module"].private_key("identity")
        node = EntityNode.provision(
            store, access_data=access, controller_key=w.controller_key.public_key, identity=identity,
            clock=w.clock, rng=w.rng,
        )  # fmt: skip
        server.start(create_entity_app(node))
        w.nodes["module"] = node
        w.access["module"] = access
        yield w, server, node, store_path


def _request(w, op="generate-keys", *, binding_id="6f1c2f4e-8b1a-4c39-9a51-3d3b1f2c7a10", target="module-01",
             body=None, key=None, issued_at=None):  # fmt: skip
    body = body if body is not None else {"partner_access_data": w.access["pack"]}
    req = ControllerRequest(
        op, binding_id, w.rng.token_bytes(16), int((issued_at or w.clock()) * 1000), target, body
    )
    return req.sign(key or w.controller_key).to_json()


def _post(server, op, payload=None, *, content=None, headers=None):
    data = content if content is not None else json.dumps(payload).encode()
    return httpx.post(
        f"{server.url}/api/binding/{op}", content=data, headers={"content-type": "application/json", **(headers or {})}
    )


def _assert_rejected(response, status, reason, store_path, before):
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason.value
    assert store_path.read_bytes() == before  # no change to the key store


def test_generate_keys_over_http_returns_semi_public_key_with_proof(served):
    w, server, node, _store_path = served
    r = _post(server, "generate-keys", _request(w))
    assert r.status_code == 200
    answer = r.json()
    assert answer["device_id"] == "module-01"
    assert len(base64.b64decode(answer["body"]["semi_public_key"])) == 33
    assert len(node.machine.bindings) == 1


@pytest.mark.parametrize(
    ("name", "status", "reason"),
    [
        ("not_json", 400, Reason.MALFORMED),
        ("not_object", 400, Reason.MALFORMED),
        ("duplicate_key", 400, Reason.MALFORMED),
        ("nan", 400, Reason.MALFORMED),
        ("oversized", 413, Reason.OVERSIZED),
        ("unknown_top_field", 400, Reason.UNKNOWN_FIELD),
        ("unknown_body_field", 400, Reason.UNKNOWN_FIELD),
        ("missing_signature", 400, Reason.MALFORMED),
        ("bad_partner_endpoint", 400, Reason.MALFORMED),
        ("wrong_controller_key", 401, Reason.UNAUTHORIZED),
        ("tampered_after_signing", 401, Reason.UNAUTHORIZED),
        ("wrong_target", 403, Reason.WRONG_PEER),
        ("stale", 401, Reason.STALE),
        ("from_the_future", 401, Reason.STALE),
    ],
)
def test_bad_generate_keys_requests_are_rejected_without_state_change(served, name, status, reason):
    w, server, node, store_path = served
    before = store_path.read_bytes()
    good = _request(w)
    content = None
    payload = good
    if name == "not_json":
        content = b"{not json"
    elif name == "not_object":
        payload = [good]
    elif name == "duplicate_key":
        content = json.dumps(good).encode()[:-1] + b', "op": "revoke"}'
    elif name == "nan":
        content = json.dumps({**good, "issued_at": float("nan")}).encode()
    elif name == "oversized":
        content = json.dumps({**good, "pad": "x" * (MAX_BODY_BYTES + 1)}).encode()
    elif name == "unknown_top_field":
        payload = {**good, "admin": True}
    elif name == "unknown_body_field":
        payload = {**good, "body": {**good["body"], "extra": 1}}
    elif name == "missing_signature":
        payload = {k: v for k, v in good.items() if k != "signature"}
    elif name == "bad_partner_endpoint":
        payload = {**good, "body": {"partner_access_data": {**good["body"]["partner_access_data"], "endpoint": "ftp://x"}}}
    elif name == "wrong_controller_key":
        payload = _request(w, key=PrivateKey.generate(w.rng))
    elif name == "tampered_after_signing":
        payload = {**good, "binding_id": "00000000-0000-4000-8000-000000000000"}
    elif name == "wrong_target":
        payload = _request(w, target="module-02")
    elif name == "stale":
        payload = _request(w, issued_at=w.clock() - 3600)
    elif name == "from_the_future":
        payload = _request(w, issued_at=w.clock() + 3600)
    r = _post(server, "generate-keys", payload, content=content)
    _assert_rejected(r, status, reason, store_path, before)
    assert node.machine.bindings == {}


def test_replayed_request_is_rejected(served):
    w, server, _node, store_path = served
    req = _request(w)
    assert _post(server, "generate-keys", req).status_code == 200
    before = store_path.read_bytes()
    _assert_rejected(_post(server, "generate-keys", req), 409, Reason.REPLAY, store_path, before)


def test_second_generate_keys_for_the_same_binding_is_rejected(served):
    w, server, node, store_path = served
    assert _post(server, "generate-keys", _request(w)).status_code == 200
    before = store_path.read_bytes()
    _assert_rejected(_post(server, "generate-keys", _request(w)), 409, Reason.DUPLICATE, store_path, before)
    assert len(node.machine.bindings) == 1


def test_distribute_with_invalid_point_is_rejected(served):
    w, server, _node, store_path = served
    assert _post(server, "generate-keys", _request(w)).status_code == 200
    before = store_path.read_bytes()
    # 0x02 followed by x = p - 1 (no such point on P-256), then a fake ciphertext.
    bad_point = b"\x02" + bytes.fromhex("ffffffff00000001000000000000000000000000fffffffffffffffffffffffe")
    body = {"partner_access_data": w.access["pack"], "sealed_partner_key": bad_point + bytes(49), "record": b"\xa0"}
    r = _post(server, "distribute-key", _request(w, "distribute-key", body=body))
    _assert_rejected(r, 400, Reason.INVALID_POINT, store_path, before)


def test_op_mismatch_between_path_and_body_is_rejected(served):
    w, server, _node, store_path = served
    before = store_path.read_bytes()
    r = _post(server, "revoke", _request(w))
    _assert_rejected(r, 400, Reason.MALFORMED, store_path, before)


def test_full_binding_over_http_between_two_servers(tmp_path):
    w = World()
    with ServerThread() as s_pack, ServerThread() as s_mod:
        for name, srv in (("pack", s_pack), ("module", s_mod)):
            access = AccessData(srv.url, TransportProtocol.HTTP, w.access[name].device_id)
            node = EntityNode.provision(
                KeyStore.in_memory(reproducible=True), access_data=access,
                controller_key=w.controller_key.public_key,
                identity=w.stores[name].private_key("identity"), clock=w.clock, rng=w.rng,
            )  # fmt: skip
            w.nodes[name], w.access[name] = node, access
            srv.start(create_entity_app(node))
        w.controller.client = client = HttpEntityClient()
        try:
            outcome = w.bind()
        finally:
            client.close()
    assert w.ledger.size == 1
    assert w.nodes["module"].binding(outcome.record.binding_id).partner_key == outcome.record.entity_a.semi_public_key


def test_unreachable_entity_aborts_binding_and_records_nothing():
    w = World()
    with ServerThread() as s_pack:
        access = AccessData(s_pack.url, TransportProtocol.HTTP, "pack-01", w.access["pack"].bound_lct)
        node = EntityNode.provision(
            KeyStore.in_memory(reproducible=True), access_data=access, controller_key=w.controller_key.public_key,
            identity=w.stores["pack"].private_key("identity"), clock=w.clock, rng=w.rng,
        )  # fmt: skip
        w.nodes["pack"] = node
        s_pack.start(create_entity_app(node))
        dead = ServerThread()  # bound but never started: connections are refused or hang up
        dead_url = dead.url
        dead.stop()
        w.nodes["module"] = EntityNode.provision(
            KeyStore.in_memory(reproducible=True),
            access_data=AccessData(dead_url, TransportProtocol.HTTP, "module-01"),
            controller_key=w.controller_key.public_key, identity=w.stores["module"].private_key("identity"),
            clock=w.clock,
        )  # fmt: skip
        client = HttpEntityClient(timeout=2.0)
        w.controller.client = client
        try:
            with pytest.raises(TransportError):
                w.bind()
        finally:
            client.close()
        assert w.ledger.size == 0
        assert node.machine.bindings == {}  # the pack's keys were revoked by the abort


class _KeySubstitutingClient:
    """A man in the middle that swaps the semi-public key in generate-keys answers."""

    def __init__(self, inner, rng):
        self.inner, self.rng = inner, rng

    def call(self, endpoint, op, payload):
        answer = self.inner.call(endpoint, op, payload)
        if op == "generate-keys":
            mallory = PrivateKey.generate(self.rng)
            answer["body"]["semi_public_key"] = base64.b64encode(mallory.public_key.to_bytes()).decode()
        return answer


def test_key_substitution_by_a_man_in_the_middle_is_detected():
    w = World()
    w.controller.client = _KeySubstitutingClient(w.client, w.rng)
    with pytest.raises(VerificationError) as exc:
        w.bind()
    assert exc.value.reason is Reason.BAD_SIGNATURE  # the device identity signature no longer verifies
    assert w.ledger.size == 0
    assert w.pack.machine.bindings == {} and w.module.machine.bindings == {}


def test_revoke_request_for_unknown_binding_is_classified(served):
    w, server, _node, store_path = served
    before = store_path.read_bytes()
    out = make_revoke_request(w.controller_key, "6f1c2f4e-8b1a-4c39-9a51-3d3b1f2c7a10", w.access["module"], "x",
                              w.clock(), w.rng)  # fmt: skip
    r = _post(server, "revoke", out.request.to_json())
    _assert_rejected(r, 404, Reason.UNKNOWN_BINDING, store_path, before)
