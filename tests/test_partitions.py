"""Partitions: the pairing works without the controller; events queue (bounded, persisted) and are
appended when it returns, the entity checking the ledger's consistency from the head it last saw."""

from __future__ import annotations

import pytest

from modbatt.encoding import strict_loads
from modbatt.errors import Reason, TransportError, VerificationError
from modbatt.ledger import Ledger
from modbatt.model.policy import MessageClass
from modbatt.nodes.controller_api import HttpEventSubmitter, create_controller_app
from modbatt.nodes.events import EntityEvent, EventIntake, EventOutbox, Receipt
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.pairing_flow import pair_entities, renew_entities
from modbatt.transport.http import ServerThread


class Link:
    """The network between an entity and the controller: up or partitioned (and answers that get lost)."""

    def __init__(self, intake: EventIntake) -> None:
        self.intake = intake
        self.up = True
        self.lose_answer = False
        self.calls = 0

    def __call__(self, events, since) -> Receipt:
        self.calls += 1
        if not self.up:
            raise TransportError("controller unreachable")
        receipt = self.intake.submit(events, since)
        if self.lose_answer:
            self.lose_answer = False
            raise TransportError("the answer was lost on the way back")
        return receipt


def _world():
    dep = InMemoryDeployment(seed=3, modules=1)
    record = dep.bind(dep.pack, dep.modules[1]).record
    outcome = pair_entities(dep.controller, dep.pack, dep.modules[1], record.binding_id)
    pid = outcome.certificate.metadata.pairing_id
    outbox = EventOutbox(dep.pack, controller_key=dep.controller.public_key, capacity=8)
    return dep, outcome.certificate, pid, outbox


def _traffic(dep, pid, n=5):
    pack, module = dep.pack.channel(pid), dep.modules[1].channel(pid)
    for i in range(n):
        pdu = pack.send(MessageClass.CHARGE_COMMAND, bytes([1, 0, i]))
        assert module.receive(pdu.can_id, pdu.data, reassembled=not pdu.single_frame).payload == bytes([1, 0, i])
        up = module.send(MessageClass.VOLTAGE_TELEMETRY, bytes([0x0C, i]))
        assert pack.receive(up.can_id, up.data).payload == bytes([0x0C, i])


def _events(ledger, start=0):
    return [e for e in map(strict_loads, ledger.entries(start)) if e["kind"] == "entity_event"]


def test_a_partition_heals_in_memory_with_a_bounded_persisted_queue():
    dep, cert, pid, outbox = _world()
    link = Link(EventIntake(dep.controller))
    outbox.record("pack_state", {"to": "active"})
    assert outbox.flush(link).appended == 1 and outbox.head is not None
    link.up = False  # the controller and its ledger are gone
    _traffic(dep, pid)  # the pairing carries on: nothing on the link needs the controller
    with pytest.raises(TransportError):
        renew_entities(_unreachable(dep), dep.pack, dep.modules[1], cert)  # a renewal needs it: deferred
    outbox.record("renewal_deferred", {"pairing_id": pid})
    for i in range(9):
        outbox.record("anomaly", {"n": i})
    assert len(outbox.pending) == 8 and outbox.dropped == 2  # full: the oldest are kept, the rest counted
    with pytest.raises(TransportError):
        outbox.flush(link)
    assert len(outbox.pending) == 9  # the overflow notice joined the queue; nothing was removed

    pack = dep.restart(dep.pack)  # the queue survives a restart (it lives in the key store)
    outbox = EventOutbox(pack, controller_key=dep.controller.public_key, capacity=8)
    assert len(outbox.pending) == 9 and outbox.head is not None
    link.up = True
    size = dep.ledger.size
    report = outbox.flush(link)
    assert (report.appended, report.duplicates, report.overflow_reported) == (9, 0, 2)
    appended = _events(dep.ledger, size)
    assert [e["event"] for e in appended] == ["renewal_deferred"] + ["anomaly"] * 7 + ["overflow"]
    assert appended[-1]["details"] == {"lost": 2, "first_seq": 9}
    assert [e["seq"] for e in appended] == [*range(1, 9), 11]  # 9 and 10 were lost, and the ledger says so
    assert not outbox.pending and outbox.head.tree_size == dep.ledger.size


def _unreachable(dep):
    class Down:
        def __getattr__(self, name):
            raise TransportError("controller unreachable")

    return Down()


def test_a_retried_flush_is_appended_once():
    dep, _, _, outbox = _world()
    link = Link(EventIntake(dep.controller))
    for i in range(3):
        outbox.record("anomaly", {"n": i})
    link.lose_answer = True
    with pytest.raises(TransportError):
        outbox.flush(link)  # appended, but the entity never heard
    assert len(outbox.pending) == 3
    report = outbox.flush(link)
    assert (report.appended, report.duplicates) == (0, 3)
    assert len(_events(dep.ledger)) == 3 and not outbox.pending


def test_a_ledger_rolled_back_or_rewritten_while_away_is_detected_and_nothing_is_lost():
    dep, _, _, outbox = _world()
    link = Link(EventIntake(dep.controller))
    outbox.record("pack_state", {"to": "active"})
    outbox.flush(link)
    pinned = outbox.head
    outbox.record("anomaly", {"n": 1})

    def forked(size: int):
        # A controller that signs a log of another history (a restored backup, a split view).
        ledger = Ledger(":memory:", signer=dep.controller_key, clock=dep.clock)
        for i in range(size):
            ledger.append(b"rewritten entry %d" % i)
        sth = ledger.signed_tree_head()
        proof = ledger.consistency_proof(min(pinned.tree_size, size), size)
        return lambda events, since: Receipt(sth.to_bytes(), proof, [], [])

    for size, reason in ((pinned.tree_size - 1, Reason.STALE), (pinned.tree_size + 2, Reason.BAD_PROOF)):
        with pytest.raises(VerificationError) as exc:
            outbox.flush(forked(size))
        assert exc.value.reason is reason
    assert outbox.rejections == {Reason.STALE: 1, Reason.BAD_PROOF: 1}
    assert outbox.head == pinned and len(outbox.pending) == 1  # nothing removed, the pin unchanged
    assert outbox.flush(link).appended == 1  # the real controller's log still extends the pin


def test_the_controller_refuses_events_it_cannot_attribute():
    dep, _, _, outbox = _world()
    intake = EventIntake(dep.controller)
    outbox.record("anomaly", {"n": 1})
    (raw,) = outbox.pending
    event = EntityEvent.decode(raw)
    forged = EntityEvent(event.device_id, event.seq, event.ts_ms, "all_clear", event.details, event.sig).encode()
    with pytest.raises(VerificationError) as exc:
        intake.submit([forged], None)
    assert exc.value.reason is Reason.BAD_SIGNATURE
    stranger = EntityEvent("module-99", 0, event.ts_ms, "anomaly", {}).sign(dep.pack.machine.identity).encode()
    with pytest.raises(VerificationError) as exc:
        intake.submit([stranger], None)
    assert exc.value.reason is Reason.UNKNOWN_BINDING
    module_says = EntityEvent("pack-01", 7, event.ts_ms, "anomaly", {}).sign(dep.modules[1].machine.identity)
    with pytest.raises(VerificationError) as exc:
        intake.submit([module_says.encode()], None)  # the module's key cannot speak for the pack
    assert exc.value.reason is Reason.BAD_SIGNATURE
    assert not _events(dep.ledger) and intake.rejections[Reason.BAD_SIGNATURE] == 2


def test_a_partition_heals_with_the_controller_over_http_stopped_and_restarted():
    dep, _, pid, outbox = _world()
    intake = EventIntake(dep.controller)
    app = create_controller_app(intake)
    server = ServerThread().start(app)
    port = server.port
    submit = HttpEventSubmitter(server.url, timeout=2.0)
    try:
        outbox.record("pack_state", {"to": "active"})
        assert outbox.flush(submit).appended == 1
        server.stop()  # the controller goes away
        _traffic(dep, pid)
        for i in range(3):
            outbox.record("anomaly", {"n": i})
        with pytest.raises(TransportError):
            outbox.flush(submit)
        assert len(outbox.pending) == 3
        server = ServerThread(port=port).start(app)  # and comes back on the same address
        report = outbox.flush(submit)
        assert report.appended == 3 and report.tree_size == dep.ledger.size
        assert [e["event"] for e in _events(dep.ledger)] == ["pack_state", "anomaly", "anomaly", "anomaly"]
        with pytest.raises(VerificationError) as exc:
            submit([b"\x00" * 8], None)
        assert exc.value.reason is Reason.MALFORMED
    finally:
        submit.close()
        server.stop()
