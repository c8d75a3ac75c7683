"""The one paired-deployment fixture (modbatt.nodes.paired): what the simulator, the attacks and
the notebooks start from is a pack really bound and paired, and they all get the same one."""

from __future__ import annotations

import pytest

from modbatt.attacks._world import paired_pack
from modbatt.errors import ConfigError, Reason, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.model.profile import ProtocolProfile
from modbatt.model.tier import Tier
from modbatt.nodes.paired import paired_deployment
from modbatt.nodes.validation import LEVELS, ValidationContext, run_level
from modbatt.sim.state import ephemeral_pack


def test_every_module_is_bound_and_paired_and_its_channel_carries_traffic():
    made = paired_deployment(7, modules=3, profile="efficient")
    assert made.profile is ProtocolProfile.EFFICIENT
    assert len(set(made.pairing_ids().values())) == 3
    for node_id in (1, 2, 3):
        assert made.module(node_id).binding(made.binding_id(node_id)) is not None
        pack, module = made.channel(node_id, "pack"), made.channel(node_id, "module")
        assert pack.protocol is ProtocolProfile.EFFICIENT and pack.node == node_id
        pdu = pack.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64")
        assert module.receive(pdu.can_id, pdu.data).tier is Tier.PAIRING
    made.close()


def test_the_validation_context_runs_every_level_on_the_record_the_binding_wrote():
    made = paired_deployment(7)
    ctx = made.validation(1)
    assert ctx.binding_record_index() == made.record_indexes[1]
    assert all(run_level(ctx, level)["outcome"] == "ok" for level in LEVELS)
    made.close()


def test_a_deployment_bound_but_not_paired_has_no_link_and_no_validation():
    made = paired_deployment(7, pair=False)
    assert made.records and not made.pairings
    with pytest.raises(KeyError):
        made.channel(1, "pack")
    cert = made.issue_pairing(1)
    with pytest.raises(VerificationError) as err:
        ValidationContext.from_nodes(
            made.controller, made.pack, made.module(1), made.binding_id(1), cert.metadata.pairing_id
        )
    assert err.value.reason is Reason.UNKNOWN_BINDING  # issued, never paired: refused before any level runs
    made.close()


def test_the_simulator_and_the_attacks_start_from_the_same_fixture():
    setup = ephemeral_pack(2, seed=11, protocol="seed")
    victim = paired_pack(11, modules=2)
    assert setup.pairings == victim.pairing_ids()  # same seed, same flows: the same pairings
    assert setup.policy.to_dict() == victim.policy.to_dict()
    setup.close()
    victim.close()


def test_an_unknown_profile_is_a_config_error_before_anything_is_made():
    with pytest.raises(ConfigError):
        paired_deployment(7, profile="rot13")
