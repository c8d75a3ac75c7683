"""Faults: loss, duplication, reordering, corruption; resets and crashes; power loss; clock skew.

Nothing acknowledged is ever lost, stores and ledger stay consistent, no half-recorded binding.
"""

from __future__ import annotations

import os

import pytest
from helpers_binding import World

from modbatt.attacks._world import paired_pack
from modbatt.attacks.faults import FaultRates, acknowledged_commands, fragment_transfers
from modbatt.crypto.keystore import KdfParams, KeyStore
from modbatt.errors import KeyStoreError, ModbattError, Reason, TransportError, VerificationError
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel import pump
from modbatt.protocol.binding import CLOCK_SKEW_SECONDS

RATES = FaultRates(loss=0.05, duplication=0.02, reordering=0.02, corruption=0.01)


@pytest.fixture(scope="module")
def pack():
    p = paired_pack(5)
    yield p
    p.close()


@pytest.mark.parametrize("rates", [RATES, FaultRates(0.2, 0.1, 0.1, 0.05)], ids=["stated", "harsh"])
def test_paired_link_loses_nothing_acknowledged(pack, rates):
    report = acknowledged_commands(pack.link(1, "pack"), pack.link(1, "module"), 400, rates, seed=3)
    assert report.acknowledged == set(range(400))
    assert report.nothing_acknowledged_lost and report.delivered == list(range(400))
    c = report.counters
    assert c["down.lost"] > 0 and c["down.duplicated"] > 0 and c["down.corrupted"] > 0
    # Stop and wait (docs/delivery.md): one command in flight, so only a frame and its duplicate
    # can swap; retries and repeats carried every loss.
    assert c["retransmissions"] > 0 and c["repeats"] > 0
    # Corrupted frames are refused by the MAC; duplicates by the replay window; all counted.
    assert c.get("module.rejects.bad_mac", 0) >= 1 and c.get("module.rejects.replay", 0) >= 1


def test_fragment_transport_under_faults_delivers_every_message_intact():
    messages = [bytes((i * 7 + j) & 0xFF for j in range(40 + 17 * i)) for i in range(20)]
    delivered, counters = fragment_transfers(messages, RATES, seed=9)
    assert delivered == dict(enumerate(messages))
    assert counters["channel.corrupted"] > 0 and counters["channel.lost"] > 0
    assert counters.get("hash_mismatch", 0) + counters.get("malformed", 0) + counters.get("timeout", 0) > 0
    assert counters["buffered_bytes"] <= 16 * 1024


def test_node_reset_mid_command_resyncs_and_loses_nothing():
    pack = paired_pack(5)
    tx, rx = pack.link(1, "pack"), pack.link(1, "module")
    first = acknowledged_commands(tx, rx, 50, RATES, seed=1)
    assert first.nothing_acknowledged_lost and len(first.acknowledged) == 50
    recorded = tx.send(MessageClass.CHARGE_COMMAND, b"\x00\x00")  # in flight when the module reboots
    # The module reboots: its receive windows are gone. It accepts nothing until an authenticated resync.
    pack.restart(1, "module")
    rx = pack.link(1, "module")
    assert not rx.synced
    with pytest.raises(VerificationError) as exc:
        rx.receive(recorded.can_id, recorded.data)
    assert exc.value.reason is Reason.STALE
    assert pump(tx, rx) > 0 and rx.synced and tx.synced
    with pytest.raises(VerificationError) as exc:  # frames from before the resync stay refused
        rx.receive(recorded.can_id, recorded.data)
    assert exc.value.reason in (Reason.REPLAY, Reason.STALE)
    again = acknowledged_commands(tx, rx, 50, RATES, seed=2)
    assert again.nothing_acknowledged_lost and len(again.acknowledged) == 50
    pack.close()


def test_node_reset_mid_pairing_leaves_no_secret_and_a_retry_pairs():
    p = paired_pack(6, pair=False)
    dep, module = p.dep, p.module(1)
    cert = dep.controller.issue_pairing(p.records[1].binding_id, max_uses=2)
    pid = cert.metadata.pairing_id
    dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    offer = dep.pack.pairing_start(pid)
    # Module resets before it answers: a new node on the same key store, the half exchange lost.
    rebooted = dep.restart(module)
    with pytest.raises(VerificationError) as exc:
        rebooted.pairing_offer(pid, offer)
    assert exc.value.reason is Reason.WRONG_SESSION
    assert rebooted.pairing_secrets(pid) is None and dep.pack.pairing_secrets(pid) is None
    dep.clock.advance(31)
    assert dep.pack.pairing_tick() == [pid]  # the partial pairing times out; its half is erased
    # The retry completes between the entities. The reset burned no use: a use is counted only
    # when a session derives secrets (the first never did), and that count lives in the key store.
    dep.pack.accept_certificate(cert.encode())
    rebooted.accept_certificate(cert.encode())
    dep.pack.pairing_offer(pid, rebooted.pairing_offer(pid, dep.pack.pairing_start(pid)) or b"")
    a = dep.pack.pairings[pid]
    with pytest.raises(VerificationError) as late:  # the first session's deadline passed: controller refuses
        dep.controller.complete_pairing(a.completion)
    assert late.value.reason is Reason.TIMEOUT
    assert len(rebooted.pairing_uses(pid)) == len(dep.pack.pairing_uses(pid)) == 1
    # The refused completion left a use spent on both entities: the controller can see it.
    assert dep.controller.burned_uses(pid, rebooted.pairing_uses(pid)) == 1
    rebooted = dep.restart(rebooted)
    assert len(rebooted.pairing_uses(pid)) == 1  # survives a reset
    p.close()


class _CrashingLedger:
    """Wraps a ledger; the controller 'crashes' at the append (after the entities acknowledged)."""

    def __init__(self, inner):
        self.inner = inner

    def append(self, entry):
        raise ModbattError("power lost before the ledger commit")

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_controller_crash_mid_binding_records_nothing_and_retries_cleanly():
    w = World()
    auth = w.authorization()
    real = w.controller.ledger
    w.controller.ledger = _CrashingLedger(real)
    with pytest.raises(ModbattError):
        w.controller.bind(w.pack.access_data, w.module.access_data, auth)
    w.controller.ledger = real
    assert real.size == 0
    assert not [n for n in w.controller_store.names() if n.startswith(("binding-record/", "authorization-used/"))]
    assert w.pack.machine.bindings == {} and w.module.machine.bindings == {}  # told to drop their keys
    # Crash in the middle of the exchange (the module's answer never comes back).
    inner = w.client

    class Dropping:
        def call(self, endpoint, op, payload):
            if op == "distribute-key" and endpoint == w.module.access_data.endpoint:
                raise TransportError("controller lost the link")
            return inner.call(endpoint, op, payload)

    w.controller.client = Dropping()
    with pytest.raises(TransportError):
        w.controller.bind(w.pack.access_data, w.module.access_data, auth)
    w.controller.client = inner
    assert real.size == 0 and w.pack.machine.bindings == {}
    # The same grant (never consumed) binds once the fault is gone; the ledger verifies.
    record = w.controller.bind(w.pack.access_data, w.module.access_data, auth).record
    assert real.size == 1 and w.module.binding(record.binding_id) is not None
    real.verify()


def test_power_loss_during_keystore_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "entity.keystore"
    store = KeyStore.create(path, passphrase="pw", kdf=KdfParams.cheap(), reproducible=True)
    store.put_record("acknowledged", {"n": 1})
    before = path.read_bytes()

    def power_cut(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(KeyStoreError):
        store.put_record("acknowledged", {"n": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file, byte for byte
    assert store.record("acknowledged") == {"n": 1}  # the in-memory state did not move either
    assert [p.name for p in tmp_path.iterdir()] == ["entity.keystore"]  # no temporary file left
    again = KeyStore.open(path, passphrase="pw")
    assert again.record("acknowledged") == {"n": 1}


@pytest.mark.parametrize("skew", [CLOCK_SKEW_SECONDS - 5, CLOCK_SKEW_SECONDS + 5, -(CLOCK_SKEW_SECONDS + 5)])
def test_clock_skew_between_controller_and_entity(skew):
    w = World()
    entity_clock = w.clock.now + skew
    w.module._clock = lambda: entity_clock
    if abs(skew) <= CLOCK_SKEW_SECONDS:
        w.bind()
        return
    with pytest.raises(VerificationError):
        w.bind()
    assert w.module.rejections[Reason.STALE] >= 1  # the request, and the abort's revoke as well
    assert w.ledger.size == 0 and w.module.machine.bindings == {} and w.pack.machine.bindings == {}


def test_sustained_load_31_modules_with_a_flooding_node():
    """31 modules at the documented rates plus commands, 8 s simulated, while a node sprays junk IDs."""
    from modbatt.attacks.load import sustained_load

    out = sustained_load(31, 8.0, seed=31, flood_per_s=2000)
    assert out["ok"], {k: out[k] for k in ("lost_acknowledged", "misordered_acknowledged", "rejects", "truncated")}
    assert out["commands_sent"] > 250 and out["acks_received"] == out["commands_sent"]
    assert out["units_tx"]["current_telemetry/exchange"] >= 31 * 80  # 100 ms telemetry for 8 s (±1 timer at the edge)
    assert out["flood_frames"] >= 15_000 and out["junk_classified"] > 0


class PowerCut(BaseException):
    """A crash no handler sees (SIGKILL, power loss): nothing after it runs in this process."""


class _DyingLedger:
    def __init__(self, inner):
        self.inner = inner

    def append(self, entry):
        raise PowerCut

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _restart(w):
    from modbatt.nodes.controller import AuthController

    return AuthController(
        controller_key=w.controller_key, authority_key=w.authority_key.public_key, ledger=w.ledger,
        client=w.client, records=w.controller_store, clock=w.clock, rng=w.rng,
    )  # fmt: skip


def test_regression_controller_killed_between_record_and_ledger_resumes_the_binding():
    """Fixed: a crash after the key-store record but before the ledger append left a binding the
    controller used (pairings issued) but the ledger never showed. The restart now resumes it."""
    w = World()
    w.controller.ledger = _DyingLedger(w.ledger)
    with pytest.raises(PowerCut):
        w.controller.bind(w.pack.access_data, w.module.access_data, w.authorization())
    assert w.ledger.size == 0  # the half-recorded state the crash left
    controller = _restart(w)
    assert w.ledger.size == 1
    (name,) = [n for n in w.controller_store.names() if n.startswith("binding-record/")]
    record = controller.record(name.split("/", 1)[1])
    assert w.ledger.entry(0) == record.ledger_entry()
    assert not [n for n in w.controller_store.names() if n.startswith("ledger-pending/")]
    w.ledger.verify()
    _restart(w)  # idempotent: nothing left to resume, nothing appended twice
    assert w.ledger.size == 1


def test_regression_controller_killed_mid_revocation_fails_closed_and_resumes():
    w = World()
    record = w.bind().record
    w.controller.ledger = _DyingLedger(w.ledger)
    with pytest.raises(PowerCut):
        w.controller.revoke(record.binding_id, "module replaced")
    w.controller.ledger = w.ledger
    with pytest.raises(VerificationError) as exc:  # already revoked locally: no pairing on it meanwhile
        w.controller.issue_pairing(record.binding_id)
    assert exc.value.reason is Reason.REVOKED
    size = w.ledger.size
    _restart(w)
    assert w.ledger.size == size + 1 and b"revocation" in w.ledger.entry(size)
    assert w.controller_store.record("revoked/" + record.binding_id)["ledger_index"] == size
    w.ledger.verify()


def test_regression_completion_is_never_lost_between_store_and_ledger():
    """Fixed: the use was stored before the ledger append; an append error (or a crash) left a
    completion the controller refused to record again (replay) and the ledger never showed."""
    p = paired_pack(8, pair=False)
    dep, module = p.dep, p.module(1)
    cert = dep.controller.issue_pairing(p.records[1].binding_id)
    pid = cert.metadata.pairing_id
    a = dep.pack.accept_certificate(cert.encode())
    module.accept_certificate(cert.encode())
    dep.pack.pairing_offer(pid, module.pairing_offer(pid, dep.pack.pairing_start(pid)) or b"")
    real = dep.controller.ledger
    dep.controller.ledger = _CrashingLedger(real)  # an error at the append: undone, the retry records it
    with pytest.raises(ModbattError):
        dep.controller.complete_pairing(a.completion)
    dep.controller.ledger = real
    index = dep.controller.complete_pairing(a.completion)
    assert b"pairing_completed" in real.entry(index)
    # A crash at the append of a second use: resumed at restart, exactly once.
    from modbatt.nodes.controller import AuthController

    cert2 = dep.controller.issue_pairing(p.records[1].binding_id)
    pid2 = cert2.metadata.pairing_id
    a2 = dep.pack.accept_certificate(cert2.encode())
    module.accept_certificate(cert2.encode())
    dep.pack.pairing_offer(pid2, module.pairing_offer(pid2, dep.pack.pairing_start(pid2)) or b"")
    dep.controller.ledger = _DyingLedger(real)
    with pytest.raises(PowerCut):
        dep.controller.complete_pairing(a2.completion)
    size = real.size
    c = dep.controller
    AuthController(
        controller_key=c.controller_key, authority_key=c.authority_key, ledger=real, client=c.client,
        records=c.records, clock=dep.clock, rng=dep.rng,
    )  # fmt: skip
    assert real.size == size + 1 and b"pairing_completed" in real.entry(size)
    real.verify()
    p.close()
