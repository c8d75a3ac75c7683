"""Scenarios for signature malleability and ledger tampering: blocked or detected, for the right reason."""

from __future__ import annotations

import pytest

from modbatt import attacks
from modbatt.attacks.malleability import high_s_twin
from modbatt.can.secured import CLASSIC, FD, BusProfile
from modbatt.crypto import suite
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import P256_HALF_ORDER, PrivateKey
from modbatt.errors import Reason, VerificationError
from modbatt.ledger import Ledger, SignedTreeHead
from modbatt.model.pairing import PairingCertificate
from modbatt.model.policy import MessageClass
from modbatt.model.tier import Tier
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.pairing_flow import pair_entities

SEED = 11


def test_high_s_certificate_is_refused_everywhere() -> None:
    out = attacks.run("high_s_certificate", SEED)
    assert (out.outcome, out.reason) == ("blocked", "malformed")
    c = out.counters
    assert c["module.rejections.malformed"] == 1 and c["pack.rejections.malformed"] == 1
    assert c["twin_valid_without_low_s_rule"] == 1 and c["same_certificate_hash"] == 1
    assert (c["cert_inspect_exit_twin"], c["cert_inspect_exit_genuine"]) == (1, 0)
    assert c["genuine_accepted_after"] == 2  # no use was spent on the twin


def test_high_s_certificate_would_pass_without_the_low_s_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(suite, "P256_HALF_ORDER", suite.P256_ORDER)
    assert attacks.run("high_s_certificate", SEED).outcome == "succeeded"


def test_certificate_identity_covers_the_signed_bytes_only() -> None:
    key = PrivateKey.generate(SeededRandom("tampering-tests/controller"))
    cert = PairingCertificate(b"\xa0", {"entity_a": b"a", "entity_b": b"b", "handshake_validation": b"h"}).sign(key)
    twin = PairingCertificate(cert.metadata_bytes, dict(cert.sections), high_s_twin(cert.signature))
    assert twin.encode() != cert.encode() and twin.certificate_hash == cert.certificate_hash
    assert int.from_bytes(cert.signature[32:], "big") <= P256_HALF_ORDER
    with pytest.raises(VerificationError) as exc:
        twin.verify(key.public_key)
    assert exc.value.reason is Reason.MALFORMED


@pytest.mark.parametrize(("name", "reason"), [("ledger_rollback", "stale"), ("ledger_fork", "bad_proof")])
def test_ledger_rollback_and_fork_are_blocked(name: str, reason: str) -> None:
    out = attacks.run(name, SEED)
    assert (out.outcome, out.reason) == ("blocked", reason)
    c = out.counters
    assert c[f"controller.rejections.{reason}"] == 1 and c["restart_refused"] == 1
    assert c["nothing_written"] == 1 and c["heads_signed_after_tampering"] == 0
    # The file alone verifies; the auditor's kept head catches it.
    assert (c["auditor_export_exit"], c["auditor_verify_exit"], c["auditor_verify_kept_head_exit"]) == (0, 0, 1)


def test_ledger_fork_succeeds_without_the_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The right reason: with the controller's pin disabled, the genuine key signs the forged history."""
    monkeypatch.setattr(Ledger, "pin_heads", lambda self, pin: None)
    assert attacks.run("ledger_fork", SEED).outcome == "succeeded"


def test_rollback_with_the_key_store_is_only_detected_by_the_auditor() -> None:
    out = attacks.run("ledger_rollback_with_keystore", SEED)
    assert (out.outcome, out.reason) == ("detected", "stale")
    assert out.counters["heads_signed_over_rolled_back_log"] == 1  # the documented limit
    assert out.counters["auditor_verify_kept_head_exit"] == 1


def test_hostile_ledger_files_are_refused_within_the_memory_budget() -> None:
    out = attacks.run("hostile_ledger_file", SEED)
    assert (out.outcome, out.reason) == ("blocked", "schema_mismatch")
    c = out.counters
    assert c["commands"] == c["one_line_errors"] == 8 and c["crashes"] == 0 and c["schema_refusals"] == 4
    assert c["files_byte_identical"] == 1 and c["files_created_beside"] == 0


@pytest.mark.parametrize("profile", [CLASSIC, FD], ids=lambda p: p.name)
def test_high_s_binding_tier_frame_is_refused_and_moves_nothing(profile: BusProfile) -> None:
    """The CAN path a deployment uses (each end's channel of a pairing): a binding-tier unit with
    its signature's twin is malformed, counted, and the genuine unit still opens afterwards (the
    replay window did not move)."""
    dep = InMemoryDeployment(seed=SEED, modules=1)
    module_node = dep.modules[1]
    record = dep.bind(dep.pack, module_node).record
    pid = pair_entities(dep.controller, dep.pack, module_node, record.binding_id).certificate.metadata.pairing_id
    pack, module = dep.pack.channel(pid, profile=profile), module_node.channel(pid, profile=profile)
    pdu = pack.send(MessageClass.CHARGE_COMMAND, b"cell voltages", tier=Tier.BINDING)
    forged = pdu.data[:-64] + high_s_twin(pdu.data[-64:])
    with pytest.raises(VerificationError) as exc:
        module.receive(pdu.can_id, forged, reassembled=not pdu.single_frame)
    assert exc.value.reason is Reason.MALFORMED and module.rejects == {Reason.MALFORMED: 1}
    assert module.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame).payload == b"cell voltages"
    dep.ledger.close()


def test_high_s_tree_head_is_refused() -> None:
    key = PrivateKey.generate(SeededRandom("tampering-tests/controller"))
    sth = SignedTreeHead.sign(key, tree_size=3, root_hash=bytes(32), timestamp=1)
    twin = SignedTreeHead(3, bytes(32), 1, high_s_twin(sth.signature), key.public_key)
    with pytest.raises(VerificationError) as exc:
        twin.verify(key.public_key)
    # Tree heads report every signature failure as bad_signature (docs/ledger.md); the detail says why.
    assert exc.value.reason is Reason.BAD_SIGNATURE and "low-S" in str(exc.value)
