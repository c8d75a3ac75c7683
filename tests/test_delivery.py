"""Delivery of critical commands (docs/delivery.md): acknowledged, retried with fresh protection,
applied exactly once even when acks are lost, across a module restart, at 10 % loss on the
simulator's own path through the fault bus."""

from __future__ import annotations

import logging

import pytest
from helpers_validation import paired_world

from modbatt.crypto.keystore import KeyStore
from modbatt.errors import ConfigError, Reason
from modbatt.model.policy import MessageClass
from modbatt.protocol.delivery import Decision, DeliveryReceiver, DeliverySender, Outcome, RetryPolicy, newer
from modbatt.protocol.validation import CommandExecutor, CommandSender
from modbatt.sim.nodes import DELIVERY_RECORD, _Module
from modbatt.sim.pack import PackSimulation
from modbatt.sim.schedule import TrafficPlan
from modbatt.transport.canbus import BusConfig

FAULTS = "loss=0.1,dup=0.02,reorder=0.02,corrupt=0.01,seed={seed}"


# ------------------------------------------------------------------ the sans-I/O machines


def test_sender_retries_with_backoff_then_gives_up_classified():
    policy = RetryPolicy(first_s=0.1, backoff=2.0, max_s=0.3, max_tries=4)
    tx = DeliverySender(policy)
    (first,) = tx.submit("s", b"cmd", 0.0)
    assert (first.seq, first.attempt) == (0, 1)
    assert tx.submit("s", b"next", 0.0) == []  # stop and wait: queued behind the first
    tries, now = [first], 0.0
    for expected_gap in (0.1, 0.2, 0.3):
        assert tx.tick(now + expected_gap - 1e-9) == ([], [])
        now += expected_gap
        sends, gave_up = tx.tick(now)
        assert [t.attempt for t in sends] == [len(tries) + 1] and gave_up == []
        tries += sends
    sends, gave_up = tx.tick(now + 0.3)
    assert [(g.seq, g.outcome, g.reason, g.tries) for g in gave_up] == [(0, Outcome.GAVE_UP, Reason.TIMEOUT, 4)]
    assert [(t.seq, t.body, t.attempt) for t in sends] == [(1, b"next", 1)]  # the queue moves on
    assert tx.retransmissions == 3 and tx.pending() == 1


def test_sender_settles_on_the_matching_ack_only():
    tx = DeliverySender()
    tx.submit("s", b"a", 0.0)
    tx.submit("s", b"b", 0.0)
    assert tx.on_ack("s", 5, False, 0.01) == (None, []) and tx.stray_acks == 1
    done, following = tx.on_ack("s", 0, False, 0.02)
    assert done is not None and done.outcome is Outcome.APPLIED and [t.seq for t in following] == [1]
    done, following = tx.on_ack("s", 1, True, 0.03)
    assert done is not None and done.outcome is Outcome.REFUSED and following == [] and tx.pending() == 0
    assert tx.on_ack("s", 1, False, 0.04) == (None, [])  # a duplicate ack


def test_receiver_applies_once_and_survives_a_restart():
    rx = DeliveryReceiver()
    assert rx.decide("charge", 7) is Decision.APPLY
    record = rx.commit("charge", 7, True, {"crc": 1})
    assert rx.decide("charge", 7) is Decision.REPEAT and rx.status("charge") is True
    assert rx.decide("charge", 6) is Decision.STALE
    restarted = DeliveryReceiver(record)  # what the module restores from its storage
    assert restarted.decide("charge", 7) is Decision.REPEAT and restarted.effect("charge") == {"crc": 1}
    assert restarted.decide("charge", 8) is Decision.APPLY and restarted.decide("limits", 0) is Decision.APPLY


def test_sequence_numbers_wrap_in_serial_arithmetic():
    assert newer(0, 32767) and newer(100, 32700) and not newer(32700, 100) and not newer(5, 5)
    rx = DeliveryReceiver({"s": {"seq": 32767, "ok": True, "effect": None}})
    assert rx.decide("s", 0) is Decision.APPLY


def test_retry_policy_is_checked():
    with pytest.raises(ConfigError):
        RetryPolicy(first_s=0)
    assert RetryPolicy(first_s=0.1, backoff=2, max_s=1.0, max_tries=3).give_up_after() == pytest.approx(0.7)


# ------------------------------------------------------------------ the simulator's own path


@pytest.fixture(autouse=True)
def _quiet_isotp():
    logging.getLogger("isotp").setLevel(logging.ERROR)


@pytest.mark.parametrize("seed", [7, 11])
def test_pack_simulator_delivers_exactly_once_at_10_percent_loss(seed):
    """Commands cross the fault bus (10 % loss, duplication, reordering, corruption) on the pack
    simulator's own path: every acknowledged command was applied exactly once."""
    plan = TrafficPlan(firmware_block=32)  # the block size is the sender's choice (docs/delivery.md)
    bus = BusConfig(interface="virtual", channel=f"delivery-{seed}", faults=FAULTS.format(seed=seed))
    with PackSimulation(3, seed=seed, bus=bus, plan=plan) as sim:
        stats = sim.run(20.0, drain=40.0)  # simulated seconds: every command settles
        store = sim.setup.modules[1].keystore
        pid = sim.setup.pairings[1]
        module = sim.module_nodes[1]
        assert stats.ok, stats.problems()
        assert stats.exactly_once and stats.lost_acknowledged == 0
        assert stats.acks_received + sum(stats.gave_up.values()) == stats.commands_sent > 100
        assert len(stats.acknowledged) > 100 and stats.applied_twice == 0 and stats.acknowledged_not_applied == 0
        # The faults happened and were handled for the right reasons.
        assert stats.retransmissions > 0 and stats.repeats > 0  # lost acks: repeats answered, not re-applied
        # Corrupted, duplicated or late units refused by the channel with a classified reason, and
        # broken ISO-TP transfers counted by the transport (the retry carries the command).
        assert set(stats.rejects) <= {"bad_mac", "replay", "stale", "malformed"} and stats.rejects
        assert stats.transport_errors
        # Each try was a new secured unit: more units went out than commands were submitted.
        assert sum(v for k, v in stats.units_tx.items() if k.startswith("charge_command")) > sum(
            1 for k in stats.acknowledged if "/charge_command/" in k
        )
        # A restarted module restores its idempotence record from its key store: the last
        # applied command, sent again, is acknowledged without being applied a second time.
        record = store.record(DELIVERY_RECORD.format(pairing_id=pid))
        restarted = _Module(1, module.endpoint, module.plan, module.clock, module.db, keystore=store, pairing_id=pid)
        last = record["charge_command"]["seq"]
        assert restarted.delivery.decide("charge_command", last) is Decision.REPEAT


def test_pack_simulator_without_faults_is_still_strict():
    with PackSimulation(2, seed=3, bus=BusConfig(interface="virtual", channel="delivery-clean")) as sim:
        stats = sim.run(5.0)
    assert stats.ok and stats.retransmissions == 0 and stats.repeats == 0 and not stats.gave_up
    assert len(stats.acknowledged) == stats.commands_sent == sum(stats.applied.values())


# ------------------------------------------------------------------ the L5 command path


def _l5(p, **kw):
    common = {"expires_at": p.now + 3600}
    sender = CommandSender(
        secrets=p.pack["secrets"], device_id="pack-01", partner_id="module-01", binding_key=p.pack["binding_key"],
        partner_key=p.pack["partner_key"], rng=p.world.rng, **common,
    )  # fmt: skip

    def executor(**more):
        return CommandExecutor(
            secrets=p.module["secrets"], device_id="module-01", partner_id="pack-01",
            binding_key=p.module["binding_key"], partner_key=p.module["partner_key"], **common, **more,
        )  # fmt: skip

    return sender, executor


def test_l5_command_applied_once_across_an_executor_restart(tmp_path):
    """The module applies the command, persists its record, the ack is lost and the module
    restarts; the retransmission (a new protected message) is answered without a second execution."""
    p = paired_world()
    sender, make_executor = _l5(p)
    key_file = KeyStore.generate_key_file(tmp_path / "module.kek")
    store = KeyStore.create(tmp_path / "module.keystore", key_file=key_file)

    def persist(record):
        store.put_record("delivery/l5", record)

    calls = []
    first = make_executor(persist=persist, handler=lambda cls, body: (calls.append(body) or True, b"done"))
    _cid, cmd = sender.send(MessageClass.CHARGE_COMMAND, b"\x01\x00\x64", p.now)
    lost_ack = first.on_command(cmd, p.now)
    store.close()
    store = KeyStore.open(tmp_path / "module.keystore", key_file=key_file)  # the module restarts
    applied = store.record("delivery/l5")
    second = make_executor(persist=persist, applied=applied, handler=lambda c, b: (calls.append(b) or True, b"x"))
    (retry,) = sender.tick(p.now + 0.3)
    assert retry != cmd  # a fresh protected message, never the same bytes
    ack = second.on_command(retry, p.now + 0.3)
    assert ack != lost_ack
    outcome = sender.on_ack(ack, p.now + 0.3)
    assert outcome.status == "ok" and outcome.result == b"done" and outcome.attempts == 2
    assert calls == [b"\x01\x00\x64"] and second.executed == []
    store.close()
