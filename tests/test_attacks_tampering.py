"""Scenarios for signature malleability and ledger tampering: blocked or detected, for the right reason."""

from __future__ import annotations

import pytest

from modbatt import attacks
from modbatt.attacks.malleability import high_s_twin
from modbatt.crypto import suite
from modbatt.crypto.rng import SeededRandom
from modbatt.crypto.suite import P256_HALF_ORDER, PrivateKey
from modbatt.errors import Reason, VerificationError
from modbatt.ledger import Ledger
from modbatt.model.pairing import PairingCertificate

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
