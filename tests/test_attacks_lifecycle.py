"""The life-cycle attack rows show the specific defence, through the components a deployment uses."""

from __future__ import annotations

import pytest

from modbatt import attacks

SEED = 11


@pytest.mark.parametrize("profile", ["seed", "efficient"])
def test_renewal_and_restriction_rows_hold_under_both_profiles(profile):
    r = attacks.run("renewal_overlap_replay", SEED, profile).counters
    assert r["genuine_accepted_in_overlap"] == 4 and r["old_pairing_erased"] == 1
    assert r["module_handover.rejects.replay"] >= 9  # every recorded frame again, inside the overlap
    rate = attacks.run("restriction_rate", SEED, profile).counters
    assert rate["module_restrictions.rate"] == 90 and rate["module_channel.rejects.rate_limited"] == 90
    op = attacks.run("restriction_operation", SEED, profile).counters
    assert op["module_restrictions.operation"] == 5  # four classes, and one of them at the binding tier
    data = attacks.run("restriction_data_type", SEED, profile).counters
    assert data["pack_restrictions.data_type"] == 3  # the pack receives the telemetry


def test_life_cycle_rows_show_their_specific_defences():
    g = attacks.run("app_bus_injection", SEED).counters
    assert g["module_commands_caused"] == 0 and g["modules_on"] == 2
    assert g["gateway.rejections.unroutable"] >= 5 and g["gateway.rejections.wrong_peer"] == 2
    v = attacks.run("app_bus_spoofed_vcu_command", SEED).counters
    assert v["modules_switched_off"] == 2  # the documented limit, shown as it is
    for name in ("spoofed_shutdown_clear", "spoofed_shutdown_foreign"):
        s = attacks.run(name, SEED).counters
        assert s["modules_shut_down"] == 0 and s["modules_still_on"] == 2, name
    assert attacks.run("spoofed_shutdown_foreign", SEED).counters["genuine_shutdown_obeyed"] == 1
    k = attacks.run("spoofed_key_loss", SEED).counters
    assert k["claims_queued"] == 0 and k["binding_intact"] == 1 and k["intake.rejections.key_mismatch"] == 2
