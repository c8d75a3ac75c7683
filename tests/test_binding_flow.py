"""The Binding transaction end to end, in process: records, ledger, revocation, re-binding."""

from __future__ import annotations

import pytest
from helpers_binding import World

from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import strict_loads
from modbatt.errors import Reason, VerificationError
from modbatt.ledger import verify_inclusion
from modbatt.model import BindingAuthorization, BindingRecord, key_commitment


def test_binding_distributes_keys_crosswise_and_records_commitments_only():
    w = World()
    outcome = w.bind()
    record = outcome.record
    pack_state = w.pack.binding(record.binding_id)
    module_state = w.module.binding(record.binding_id)
    # Each entity holds its own private key and exactly its partner's semi-public key.
    assert pack_state.private_key.public_key == record.entity_a.semi_public_key
    assert module_state.private_key.public_key == record.entity_b.semi_public_key
    assert pack_state.partner_key == record.entity_b.semi_public_key
    assert module_state.partner_key == record.entity_a.semi_public_key
    assert pack_state.partner_access == w.module.access_data
    # The authority signature verifies with the controller key.
    record.verify(w.controller_key.public_key)
    # The ledger holds commitments, never the semi-public keys themselves.
    entry = w.ledger.entry(outcome.ledger_index)
    for key in (record.entity_a.semi_public_key, record.entity_b.semi_public_key):
        assert key.to_bytes() not in entry
    view = strict_loads(entry)
    assert view["entity_a"]["semi_public_key_commitment"] == key_commitment(
        record.binding_id, record.entity_a.semi_public_key
    )
    # Anyone with only the controller public key can prove the binding from the ledger.
    sth = w.ledger.signed_tree_head()
    proof = w.ledger.inclusion_proof(outcome.ledger_index, sth.tree_size)
    verify_inclusion(entry, outcome.ledger_index, proof, sth, w.controller_key.public_key)


def test_binding_record_json_is_the_seed_shape_and_round_trips():
    w = World()
    record = w.bind().record
    data = record.to_json()
    assert set(data) == {"binding_id", "entity_a", "entity_b", "timestamp", "authority"}
    assert set(data["entity_a"]) == {"access_data", "semi_public_key", "bound_lct"}
    again = BindingRecord.from_json(data)
    again.verify(w.controller_key.public_key)
    assert again.ledger_entry() == record.ledger_entry()


def test_tampered_binding_record_fails_authority_check():
    w = World()
    data = w.bind().record.to_json()
    data["entity_b"]["access_data"]["device_id"] = "module-99"
    with pytest.raises(VerificationError) as exc:
        BindingRecord.from_json(data).verify(w.controller_key.public_key)
    assert exc.value.reason is Reason.BAD_SIGNATURE


def test_binding_refused_without_valid_authority_records_nothing():
    w = World()
    forged = PrivateKey.generate(w.rng)
    auth = w.authorization()
    bad = BindingAuthorization(
        auth.device_a, auth.identity_a, auth.device_b, auth.identity_b, auth.not_before, auth.not_after, auth.nonce
    ).sign(forged)
    with pytest.raises(VerificationError) as exc:
        w.controller.bind(w.pack.access_data, w.module.access_data, bad)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    assert w.ledger.size == 0
    assert w.pack.machine.bindings == {} and w.module.machine.bindings == {}


def test_expired_authorization_is_refused():
    w = World()
    auth = w.authorization()
    w.clock.now += 3600
    with pytest.raises(VerificationError) as exc:
        w.controller.bind(w.pack.access_data, w.module.access_data, auth)
    assert exc.value.reason is Reason.EXPIRED
    assert w.ledger.size == 0


def test_authorization_for_other_devices_is_refused():
    w = World()
    auth = w.authorization()
    other = w.access["module"].__class__("can://can0/0x02", w.access["module"].protocol, "module-02")
    with pytest.raises(VerificationError) as exc:
        w.controller.bind(w.pack.access_data, other, auth)
    assert exc.value.reason is Reason.UNAUTHORIZED


def test_revocation_destroys_keys_and_is_recorded():
    w = World()
    outcome = w.bind()
    binding_id = outcome.record.binding_id
    revocation, index, unreached = w.controller.revoke(binding_id, "module replaced")
    assert unreached == []
    assert index == outcome.ledger_index + 1
    assert w.pack.binding(binding_id) is None and w.module.binding(binding_id) is None
    assert not [n for n in w.stores["module"].names() if n.startswith(f"binding/{binding_id}")]
    entry = strict_loads(w.ledger.entry(index))
    assert entry["kind"] == "revocation" and entry["binding_id"] == binding_id
    revocation.verify(w.controller_key.public_key)
    with pytest.raises(VerificationError) as exc:
        w.controller.revoke(binding_id)
    assert exc.value.reason is Reason.REVOKED


def test_rebinding_issues_fresh_keys_and_links_the_old_binding():
    w = World()
    first = w.bind().record
    w.clock.now += 10
    second = w.controller.rebind(first.binding_id, w.authorization()).record
    assert second.supersedes == first.binding_id
    assert second.entity_a.semi_public_key != first.entity_a.semi_public_key
    kinds = [strict_loads(e)["kind"] for e in w.ledger.entries()]
    assert kinds == ["binding", "revocation", "binding"]
    assert w.pack.binding(first.binding_id) is None
    assert w.pack.binding(second.binding_id).bound


def test_entity_state_survives_restart_from_its_key_store(tmp_path):
    from modbatt.crypto.keystore import KeyStore
    from modbatt.nodes.entity import EntityNode

    w = World()
    path = tmp_path / "module.keystore"
    key_file = KeyStore.generate_key_file(tmp_path / "module.kek")
    disk = KeyStore.create(path, key_file=key_file, reproducible=True)
    for name in w.stores["module"].names():
        if name in w.stores["module"].key_names():
            disk.put_private_key(name, w.stores["module"].private_key(name))
        else:
            disk.put_record(name, w.stores["module"].record(name))
    w.nodes["module"] = EntityNode(disk, clock=w.clock, rng=w.rng)
    w.client.nodes[w.access["module"].endpoint] = w.nodes["module"]
    record = w.bind().record
    reopened = EntityNode(KeyStore.open(path, key_file=key_file), clock=w.clock)
    state = reopened.binding(record.binding_id)
    assert state is not None and state.bound
    assert state.private_key.public_key == record.entity_b.semi_public_key
    assert reopened.machine.seen_requests == w.nodes["module"].machine.seen_requests
