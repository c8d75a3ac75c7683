"""Key-loss recovery: announce with the identity key, level-7 validation against the ledger, re-binding.

End to end on the in-memory deployment and over CAN (the announce as broadcast fragments, the
re-binding and re-pairing through the module's ISO-TP binding API), plus every refusal the claim
and the bundle can meet, each classified and counted.
"""

from __future__ import annotations

import time

import pytest

from modbatt.crypto.suite import PrivateKey
from modbatt.encoding import canonical_dumps, strict_loads
from modbatt.errors import ProtocolError, Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.nodes.authority import authorize_binding
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.pairing_flow import PairingService, pair_entities
from modbatt.nodes.recovery import (
    KeyLossIntake,
    accept_key_loss,
    announce_router,
    lose_binding_keys,
    recover,
)
from modbatt.protocol.pack_state import Action, PackEvent, PackSecurity, PackState
from modbatt.protocol.validation.key_loss import KeyLossAnnouncer, KeyLossVerifier
from modbatt.transport.announce import CanAnnounceListener
from modbatt.transport.http import InProcessEntityClient
from modbatt.workbench.mixed import MixedBench


def _deployment():
    dep = InMemoryDeployment(seed=11, modules=1)
    module = dep.modules[1]
    record = dep.bind(dep.pack, module).record
    outcome = pair_entities(dep.controller, dep.pack, module, record.binding_id)
    pid = outcome.certificate.metadata.pairing_id
    machine = PackSecurity(state=PackState.ACTIVE, binding_id=record.binding_id, pairing_id=pid)
    return dep, record.binding_id, pid, machine


def _pairing_client(*nodes):
    return InProcessEntityClient({n.access_data.endpoint: PairingService(n) for n in nodes})


def _kinds(ledger, start=0):
    return [strict_loads(e)["kind"] for e in ledger.entries(start)]


def test_a_module_that_lost_its_binding_key_is_validated_and_re_bound_in_memory():
    dep, binding_id, old_pid, machine = _deployment()
    old_traffic = dep.pack.channel(old_pid).send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x03")
    assert lose_binding_keys(dep.modules[1]) == [binding_id]
    module = dep.restart(dep.modules[1])
    assert module.lost_bindings == [binding_id] and module.binding(binding_id) is None

    (announce,) = module.announce_key_loss()  # erases what relied on the lost key, signs with the identity key
    assert module.pairing_secrets(old_pid) is None and module.lost_bindings == []
    with pytest.raises(ProtocolError):
        module.announce_key_loss()
    intake = KeyLossIntake(dep.controller)
    size = dep.ledger.size
    assert intake.offer(announce, "can://can0/0x01") is None
    claim = intake.take()
    assert (claim.device_id, claim.binding_id) == ("module-01", binding_id)
    bundle = intake.validate(claim)
    assert _kinds(dep.ledger, size) == ["validation"]
    statement = strict_loads(dep.ledger.entry(size))
    assert (statement["level"], statement["event"], statement["subject"]) == (7, "key_loss", "module-01")

    # The pack acts on the controller's level-7 bundle, checked with the controller's public key alone.
    verifier = KeyLossVerifier(controller_key=dep.controller_key.public_key)
    result, step = accept_key_loss(verifier, bundle, machine, dep.clock())
    assert (result.binding_id, result.subject, result.statement_index) == (binding_id, "module-01", size)
    assert machine.state is PackState.KEY_LOST and step.actions[:2] == (Action.ISOLATE, Action.ERASE_PAIRING_SECRETS)

    grant = dep.authorize(dep.pack, module)
    done = recover(dep.controller, claim, grant, _pairing_client(dep.pack, module))
    assert _kinds(dep.ledger, size) == [
        "validation", "revocation", "binding", "pairing_issued", "pairing_completed",
    ]  # fmt: skip
    new_binding = done.binding.record.binding_id
    assert new_binding != binding_id and dep.controller.is_revoked(binding_id)
    assert dep.pack.binding(binding_id) is None  # the partner erased the old key and its pairings
    assert dep.pack.pairing_secrets(old_pid) is None
    machine.handle(PackEvent.BOUND, dep.clock(), binding_id=new_binding)
    new_pid = done.pairing.certificate.metadata.pairing_id
    machine.handle(PackEvent.PAIRED, dep.clock(), pairing_id=new_pid)
    assert machine.state is PackState.PAIRED
    pack, mod = dep.pack.channel(new_pid), module.channel(new_pid)
    pdu = pack.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x03")
    assert mod.receive(pdu.can_id, pdu.data).payload == b"\x01\x00\x03"
    with pytest.raises(VerificationError):  # the void pairing's traffic means nothing to the new one
        mod.receive(old_traffic.can_id, old_traffic.data)


def test_a_key_loss_claim_is_refused_for_the_right_reason():
    dep, binding_id, _, _ = _deployment()
    module = dep.modules[1]
    intake = KeyLossIntake(dep.controller)
    now = dep.clock()
    # Someone else's identity key (an impostor that never was bound): the grant named another key.
    impostor = KeyLossAnnouncer(identity_key=PrivateKey.generate(dep.rng), access_data=module.access_data)
    assert intake.offer(impostor.announce(now, binding_id)) is Reason.KEY_MISMATCH
    # The pack's identity key cannot speak for the module either.
    pack_says = KeyLossAnnouncer(identity_key=dep.pack.machine.identity, access_data=module.access_data)
    assert intake.offer(pack_says.announce(now, binding_id)) is Reason.KEY_MISMATCH
    genuine = KeyLossAnnouncer(identity_key=module.machine.identity, access_data=module.access_data, seq=5)
    first = genuine.announce(now, binding_id)
    assert intake.offer(first) is None
    assert intake.offer(first) is Reason.REPLAY  # the same announce again
    late = genuine.announce(now - 60, binding_id)
    assert intake.offer(late) is Reason.EXPIRED
    # A field changed after signing.
    value = strict_loads(genuine.announce(now, binding_id))
    value["seq"] = 99
    assert intake.offer(canonical_dumps(value)) is Reason.BAD_SIGNATURE
    assert intake.offer(b"\xa0") is Reason.MALFORMED
    assert intake.offer(genuine.announce(now, "00000000-0000-4000-8000-000000000000")) is Reason.UNKNOWN_BINDING
    assert intake.rejections[Reason.KEY_MISMATCH] == 2 and intake.rejections[Reason.REPLAY] == 1
    assert len(intake.pending) == 1
    dep.controller.revoke(binding_id)
    assert intake.offer(genuine.announce(now, binding_id)) is Reason.REVOKED


def test_the_level_7_bundle_is_checked_offline_and_acted_on_once():
    dep, binding_id, _, machine = _deployment()
    module = dep.modules[1]
    intake = KeyLossIntake(dep.controller)
    announcer = KeyLossAnnouncer(identity_key=module.machine.identity, access_data=module.access_data)
    assert intake.offer(announcer.announce(dep.clock(), binding_id)) is None
    bundle = intake.validate(intake.take())
    verifier = KeyLossVerifier(controller_key=dep.controller_key.public_key)
    stranger = KeyLossVerifier(controller_key=PrivateKey.generate(dep.rng).public_key)
    with pytest.raises(VerificationError) as exc:
        stranger.verify(bundle, dep.clock())  # not our controller's signature
    assert exc.value.reason is Reason.BAD_SIGNATURE
    value = strict_loads(bundle)
    value["audit_path"] = [bytes(32), *value["audit_path"][1:]]
    with pytest.raises(VerificationError) as exc:
        verifier.verify(canonical_dumps(value), dep.clock())
    assert exc.value.reason is Reason.BAD_SIGNATURE  # the controller signed the whole bundle
    before = machine.state
    with pytest.raises(VerificationError):
        accept_key_loss(verifier, canonical_dumps(value), machine, dep.clock())
    assert machine.state is before  # an unverified bundle moves nothing
    accept_key_loss(verifier, bundle, machine, dep.clock())
    with pytest.raises(VerificationError) as exc:
        verifier.verify(bundle, dep.clock())
    assert exc.value.reason is Reason.REPLAY
    assert verifier.rejections == {Reason.BAD_SIGNATURE: 2, Reason.REPLAY: 1}


def test_key_loss_recovery_over_can():
    with MixedBench(("can",), seed=21, clock=time.time) as bench:
        entity = bench.entities["module-01"]
        bench.bind(entity)
        bench.pair(entity)
        binding_id = entity.binding_id
        intake = KeyLossIntake(bench.controller)
        # The controller's one announce listener on its CAN bus now routes key-loss announces apart.
        listener = CanAnnounceListener(announce_router(bench.directory.offer, intake.offer), channel="can0")
        bench.can_client.notifier().remove_listener(bench.can_listener)
        bench.can_client.notifier().add_listener(listener)
        # The module's key partition is corrupted; it restarts from the same store.
        lose_binding_keys(entity.node)
        entity.server.stop()
        reborn = bench.add_entity("can", "module-01", node_id=0x01, store=entity.store)
        assert reborn.node.lost_bindings == [binding_id]
        (announce,) = reborn.node.announce_key_loss()
        frames = bench.can_sender(0x01).send(announce)
        assert frames > 1  # broadcast fragments on classic CAN
        deadline = time.monotonic() + 5
        while not intake.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        claim = intake.take()
        assert claim is not None and claim.source == "can://can0/0x01" and claim.binding_id == binding_id
        assert not bench.directory.rejections  # the ordinary announce sink never saw it
        bundle = intake.validate(claim)
        verifier = KeyLossVerifier(controller_key=bench.controller.public_key)
        machine = PackSecurity(state=PackState.ACTIVE, binding_id=binding_id, pairing_id=None)
        accept_key_loss(verifier, bundle, machine, bench.clock())
        assert machine.state is PackState.KEY_LOST
        before = dict(bench.router.calls)
        grant = authorize_binding(bench.authority_key, bench.pack, reborn.node, bench.clock(), bench.rng)
        done = recover(bench.controller, claim, grant, bench.router)
        new_pid = done.pairing.certificate.metadata.pairing_id
        assert reborn.node.pairing_secrets(new_pid) is not None
        assert bench.router.calls["CAN"] > before.get("CAN", 0)  # re-bound and re-paired over ISO-TP
        kinds = _kinds(bench.ledger, done.ledger_entries[0] - 1)
        assert kinds == ["validation", "revocation", "binding", "pairing_issued", "pairing_completed"]


def test_the_identity_key_record_follows_the_binding():
    dep, binding_id, _, _ = _deployment()
    key = dep.controller.identity_key(binding_id, "module-01")
    assert key == dep.modules[1].identity_key
    with pytest.raises(VerificationError) as exc:
        dep.controller.identity_key(binding_id, "module-02")
    assert exc.value.reason is Reason.UNKNOWN_BINDING
