"""One pack controller paired with 1 and 31 modules (the legacy module-id range), independently."""

from __future__ import annotations

import pytest
from helpers_binding import World

from modbatt.crypto.keystore import KeyStore
from modbatt.errors import Reason, VerificationError
from modbatt.model import AccessData, TransportProtocol
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel_store import EphemeralFreshness
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.paired import bind_and_pair


def _pack_with_modules(n):
    w = World()
    modules = {}
    for node_id in range(1, n + 1):
        device = f"module-{node_id:02d}"
        access = AccessData(f"can://can0/0x{node_id:02x}", TransportProtocol.CAN, device)
        node = EntityNode.provision(
            KeyStore.in_memory(reproducible=True), access_data=access, controller_key=w.controller_key.public_key,
            clock=w.clock, rng=w.rng, freshness=EphemeralFreshness(),
        )  # fmt: skip
        w.client.nodes[access.endpoint] = node
        modules[node_id] = node
    records, outcomes, _ = bind_and_pair(w.controller, w.pack, modules, w.authority_key, w.clock, w.rng)
    return w, modules, {node_id: (records[node_id], outcomes[node_id]) for node_id in modules}


def _links(w, module, record, outcome, node_id):
    pid = outcome.certificate.metadata.pairing_id
    pack_link, mod_link = w.pack.channel(pid), module.channel(pid)
    assert pack_link.node == mod_link.node == node_id  # the module's CAN address, from its access data
    return pack_link, mod_link


@pytest.mark.parametrize("n", [1, 31])
def test_pack_pairs_with_n_modules_each_with_its_own_keys(n):
    w, modules, pairings = _pack_with_modules(n)
    secrets = {pid: out.secrets for _, out in pairings.values() for pid in [out.certificate.metadata.pairing_id]}
    assert len(secrets) == n
    pairing_secrets = {s["pack-01"].pairing_secret for s in secrets.values()}
    assert len(pairing_secrets) == n  # independent pairings: no key shared between modules
    # Every module receives a pairing-tier command from the pack; module 1 cannot open module 2's.
    for node_id, (record, outcome) in pairings.items():
        pack_link, mod_link = _links(w, modules[node_id], record, outcome, node_id)
        pdu = pack_link.send(MessageClass.CHARGE_COMMAND, bytes([node_id]))
        assert mod_link.receive(pdu.can_id, pdu.data).payload == bytes([node_id])
    if n > 1:
        p1 = _links(w, modules[1], *pairings[1], 1)[0]
        m2 = _links(w, modules[2], *pairings[2], 2)[1]
        pdu = p1.send(MessageClass.CHARGE_COMMAND, b"\x01")
        with pytest.raises(VerificationError) as exc:
            m2.receive(pdu.can_id, pdu.data)
        assert exc.value.reason is Reason.BAD_MAC


def test_revoking_one_pairing_leaves_the_others_working():
    w, modules, pairings = _pack_with_modules(3)
    _record2, outcome2 = pairings[2]
    pid2 = outcome2.certificate.metadata.pairing_id
    notice = w.controller.revoke_pairing(pid2, "module 2 replaced")
    for node in (w.pack, modules[2]):
        assert node.apply_pairing_revocation(notice) == pid2
        assert node.pairing_secrets(pid2) is None
    with pytest.raises(VerificationError) as exc:
        modules[2].accept_certificate(outcome2.certificate.encode())
    assert exc.value.reason is Reason.REVOKED
    for node_id in (1, 3):
        record, outcome = pairings[node_id]
        pack_link, mod_link = _links(w, modules[node_id], record, outcome, node_id)
        pdu = pack_link.send(MessageClass.SAFETY_LIMITS, b"\x10")
        assert mod_link.receive(pdu.can_id, pdu.data).payload == b"\x10"


def test_forged_pairing_revocation_is_refused():
    w, modules, pairings = _pack_with_modules(1)
    from modbatt.crypto.suite import PrivateKey
    from modbatt.model.statements import sign_statement

    pid = pairings[1][1].certificate.metadata.pairing_id
    forged = sign_statement(PrivateKey.generate(w.rng), "pairing_revoked", {"pairing_id": pid}, w.clock())
    with pytest.raises(VerificationError) as exc:
        modules[1].apply_pairing_revocation(forged)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    assert modules[1].pairing_secrets(pid) is not None


def test_revoking_a_binding_voids_its_pairing_on_both_sides():
    w, modules, pairings = _pack_with_modules(2)
    record, outcome = pairings[1]
    pid = outcome.certificate.metadata.pairing_id
    w.controller.revoke(record.binding_id, "module 1 removed")
    assert w.pack.pairing_secrets(pid) is None and modules[1].pairing_secrets(pid) is None
    other = pairings[2][1].certificate.metadata.pairing_id
    assert w.pack.pairing_secrets(other) is not None  # module 2 untouched
