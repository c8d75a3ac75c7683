"""Every attack scenario ends as the design promises, for the right (classified, counted) reason."""

from __future__ import annotations

import json

import pytest
from helpers_binding import World

from modbatt import attacks
from modbatt.attacks.figure import attack_matrix_figure
from modbatt.cli import main
from modbatt.errors import Reason, VerificationError

SEED = 11


@pytest.mark.parametrize("case", [key for key, _, _ in attacks.cases()])
def test_scenario_outcome_and_reason(case):
    """Every case: each scenario under each protocol profile it declares (docs/profiles.md)."""
    spec = attacks.get(case)
    outcome = attacks.run(case, SEED)
    profile = case.partition("@")[2] or spec.profiles[0]
    assert (outcome.outcome, outcome.reason) == spec.expected(profile), outcome.detail
    if outcome.outcome in ("blocked", "detected") and outcome.reason in {r.value for r in Reason}:
        # The headline reason is the component's own count, not the scenario's opinion.
        assert any(k.endswith("." + outcome.reason) and v > 0 for k, v in outcome.counters.items()), outcome.counters


def test_counters_prove_the_specific_defences():
    r = attacks.run("replay_binding_request", SEED).counters
    assert r["module.rejections.replay"] == 2 and r["module.rejections.stale"] == 2 and r["binding_intact"] == 1
    m = attacks.run("mitm_binding_key_substitution", SEED).counters
    assert m["ledger_entries_added"] == 0 and m["module_bindings_left"] == 0  # aborted, nothing half-recorded
    c = attacks.run("compromised_controller_standard", SEED).counters
    assert c["reads_traffic"] == 1 and c["forges_traffic"] == 1 and c["binding_tier_forged"] == 0
    b = attacks.run("compromised_controller_blind", SEED).counters
    assert b["reads_traffic"] == 0 and b["forges_traffic"] == 0
    k = attacks.run("cloned_module", SEED).counters
    assert k["others_unaffected"] == 2
    f = attacks.run("bus_flood", SEED).counters
    assert f["window_moved"] == 0 and f["genuine_verified"] == 1 and f["decode_cache"] <= f["decode_cache_max"]
    e = attacks.run("reassembly_exhaustion", SEED).counters
    assert e["peak_buffered"] <= 16 * 1024 and e["peak_active"] <= 8 and e["genuine_after_timeout"] == 1
    v = attacks.run("replay_validation", SEED).counters
    for level in (1, 2, 3, 4, 5, 6, 7):  # every level of the hierarchy refused its replay, and counted it
        assert any(k.startswith(f"l{level}_") and v[k] > 0 for k in v), (level, v)
    x = attacks.run("key_extraction_at_rest", SEED).counters
    assert x["hits_in_files"] == x["hits_in_logs"] == x["hits_in_exceptions_and_reprs"] == 0


def test_regression_binding_authorization_is_single_use():
    """Fixed vulnerability: a consumed authority grant re-bound a revoked module while still valid."""
    w = World()
    auth = w.authorization()
    first = w.controller.bind(w.pack.access_data, w.module.access_data, auth).record
    w.clock.now += 30
    w.controller.revoke(first.binding_id, "module replaced")
    size = w.ledger.size
    with pytest.raises(VerificationError) as exc:
        w.controller.bind(w.pack.access_data, w.module.access_data, auth)
    assert exc.value.reason is Reason.REPLAY
    assert w.ledger.size == size and w.controller.rejections[Reason.REPLAY] == 1
    # A fresh grant from the authority still re-binds (the documented re-binding procedure).
    assert w.controller.rebind(first.binding_id, w.authorization()).record.supersedes == first.binding_id


def test_semi_public_keys_are_not_recoverable_from_clear_signatures(monkeypatch):
    """Finding F1, blocked by key-hiding signatures (docs/crypto.md §3.1): recovery on offers and
    a binding-tier frame gives only unrelated points; without the key in the digest it works."""
    out = attacks.run("semi_public_key_recovery", SEED)
    assert (out.outcome, out.reason) == ("blocked", "key_hiding_signature")
    assert out.counters["verified_by_true_key"] == 3 and out.counters["candidates_recovered"] >= 3
    assert out.counters["keys_recovered"] == 0 and out.counters["confirmed_by_ledger_commitment"] == 0
    # The right reason: the same scenario with plain framing recovers both keys.
    from modbatt.crypto import labels

    monkeypatch.setattr(labels, "KEY_HIDING", frozenset())
    plain = attacks.run("semi_public_key_recovery", SEED)
    assert (plain.outcome, plain.counters["keys_recovered"]) == ("succeeded", 2)


def test_cli_matrix_is_exactly_the_documented_shape(capsys):
    # Exit 0: every scenario is blocked, detected or a documented limit.
    assert main(["attack", "--all", "--json", "--seed", str(SEED)]) == 0
    matrix = json.loads(capsys.readouterr().out)
    assert list(matrix) == [key for key, _, _ in attacks.cases()]
    for key, row in matrix.items():
        assert set(row) == {"outcome", "reason", "counters"}
        spec = attacks.get(key)
        assert (row["outcome"], row["reason"]) == spec.expected(key.partition("@")[2] or spec.profiles[0])
    assert [n for n, row in matrix.items() if row["outcome"] == "succeeded"] == []
    assert {n for n, row in matrix.items() if row["outcome"] == "limit"} == {
        "compromised_controller_standard",
        "compromised_controller_standard@efficient",
        "app_bus_spoofed_vcu_command",  # the legacy app bus is clear by design (docs/gateway.md §1)
    }
    # The rows where the profile matters run under both profiles.
    assert {k.partition("@")[0] for k in matrix if k.endswith("@efficient")} >= {
        "semi_public_key_recovery", "binding_frame_forgery", "replay_can_binding", "replay_validation",
        "compromised_controller_standard", "compromised_controller_blind", "replay_can_binding_next_pairing",
        "renewal_overlap_replay", "restriction_operation", "restriction_data_type", "restriction_rate",
    }
    fig = attack_matrix_figure(matrix)
    assert len(fig.axes[0].patches) == len(matrix)


def test_cli_one_scenario_list_and_errors(capsys):
    assert main(["attack", "downgrade_clear", "--json", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["downgrade_clear"]["reason"] == "tier_too_low"
    assert main(["attack", "--list"]) == 0
    assert "replay_can_pairing" in capsys.readouterr().out
    assert main(["attack", "no_such_attack"]) == 2
    assert "no attack scenario" in capsys.readouterr().err
    assert main(["attack"]) == 2


def test_cli_exit_1_when_an_attack_succeeds(monkeypatch, capsys):
    from modbatt.attacks.outcome import Outcome
    from modbatt.attacks.registry import SCENARIOS, Scenario
    from modbatt.model.profile import ProtocolProfile

    monkeypatch.setitem(
        SCENARIOS,
        "zz_broken",
        Scenario(
            "zz_broken", "insider", "x", {ProtocolProfile.SEED: ("blocked", "x")}, lambda s: Outcome("succeeded", "x")
        ),
    )
    assert main(["attack", "zz_broken"]) == 1
    assert "succeeded" in capsys.readouterr().out


def test_regression_old_offer_cannot_replace_working_secrets_in_a_later_session():
    """Fixed: B accepted A's offer of an earlier session of a multi-use pairing, overwrote its working
    secrets with ones derived from A's old ephemeral key, and burned a use (persistent denial of service)."""
    out = attacks.run("replay_pairing_offer_next_session", SEED)
    assert (out.outcome, out.reason) == ("blocked", "replay")
    assert out.counters["module_secrets_intact"] == 1 and out.counters["module.rejections.replay"] == 1


def test_notebook_parameter_selects_scenarios():
    assert list(attacks.run_parameter("downgrade_clear, can_node_spoof", SEED)) == ["downgrade_clear", "can_node_spoof"]
    with pytest.raises(Exception, match="no attack scenario"):
        attacks.run_parameter("nope", SEED)


def test_regression_binding_tier_frames_do_not_replay_into_a_later_pairing():
    """Binding-tier frames (signed by the binding key) of pairing 1 do not verify on pairing 2's
    fresh link: the pairing id is signed into each frame and resync answer (docs/threat-model.md, F6)."""
    out = attacks.run("replay_can_binding_next_pairing", SEED)
    assert (out.outcome, out.reason) == ("blocked", "bad_signature")
    assert out.counters["new_pack_link.rejects.bad_signature"] == 3
