"""Controller operations under concurrency: one grant binds once, each decision is taken once.

Contenders are threads sharing the controller of an on-disk deployment, or separate controller
processes opening the same state directory (key store and ledger), released together by a
barrier (modbatt.attacks.grants.race). Each test checks the outcome and the persisted state:
key-store records, ledger entries and the entities' own bindings.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modbatt.attacks.grants import DemoWorld, bind_race, demo_deployment, race, relationship_state
from modbatt.encoding import strict_loads
from modbatt.errors import Reason, TransportError, VerificationError
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.protocol.pairing import CompletionProof

MODES = [pytest.param(False, id="threads"), pytest.param(True, id="processes")]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DemoWorld]:
    with demo_deployment(tmp_path / "state") as w:
        yield w


def _kinds(world: DemoWorld) -> list[str]:
    ledger = world.deployment.ledger
    return [strict_loads(ledger.entry(i)).get("kind") for i in range(ledger.size)]


def _bind(world: DemoWorld) -> str:
    grant = world.deployment.authorize(world.pack, world.module)
    return world.controller.bind(world.pack.access_data, world.module.access_data, grant).record.binding_id


@pytest.mark.parametrize("processes", MODES)
def test_one_grant_binds_once_however_many_call_at_once(world: DemoWorld, processes: bool) -> None:
    grant = world.deployment.authorize(world.pack, world.module)
    got = bind_race(world, grant, contenders=2 if processes else 4, processes=processes)
    assert len(got.done) == 1
    assert set(got.refused) == {Reason.REPLAY} and len(got.refused) == len(got.results) - 1
    assert got.rejections == {"replay": len(got.refused)}
    assert relationship_state(world) == dict.fromkeys(
        ("binding_records", "ledger_bindings", "pack_bindings", "module_bindings"), 1
    )
    # The grant stays used: a later call is refused too, and nothing was left half-claimed.
    with pytest.raises(VerificationError) as exc:
        world.controller.bind(world.pack.access_data, world.module.access_data, grant)
    assert exc.value.reason is Reason.REPLAY
    assert world.controller.binding_of("pack-controller-01", "battery-module-01") == got.done[0]


def test_a_revoked_relationship_needs_a_fresh_grant(world: DemoWorld) -> None:
    grant = world.deployment.authorize(world.pack, world.module)
    a, b = world.pack.access_data, world.module.access_data
    first = world.controller.bind(a, b, grant).record.binding_id
    calls_before = world.pack.machine.bindings.copy()
    with pytest.raises(VerificationError) as exc:  # bound: a fresh grant cannot add a second binding
        world.controller.bind(a, b, world.deployment.authorize(world.pack, world.module))
    assert exc.value.reason is Reason.DUPLICATE
    assert world.pack.machine.bindings == calls_before  # refused before any request left
    world.controller.revoke(first)
    with pytest.raises(VerificationError) as exc:
        world.controller.bind(a, b, grant)
    assert exc.value.reason is Reason.REPLAY
    second = world.controller.bind(a, b, world.deployment.authorize(world.pack, world.module)).record.binding_id
    assert second != first and world.controller.binding_of(a.device_id, b.device_id) == second


@pytest.mark.parametrize("processes", MODES)
def test_one_revocation_however_many_revoke_at_once(world: DemoWorld, processes: bool) -> None:
    binding_id = _bind(world)
    got = race(world, "revoke", {"binding_id": binding_id}, contenders=2 if processes else 4, processes=processes)
    assert len(got.done) == 1 and set(got.refused) == {Reason.REVOKED}
    assert _kinds(world).count("revocation") == 1


@pytest.mark.parametrize("processes", MODES)
def test_concurrent_rebinds_with_fresh_grants_leave_one_live_binding(world: DemoWorld, processes: bool) -> None:
    old = _bind(world)
    grants = [world.deployment.authorize(world.pack, world.module).to_json() for _ in range(2 if processes else 3)]
    got = race(world, "rebind", [{"binding_id": old, "grant": g} for g in grants], processes=processes)
    assert len(got.done) == 1
    assert set(got.refused) <= {Reason.DUPLICATE} and len(got.refused) == len(grants) - 1
    assert world.controller.binding_of("pack-controller-01", "battery-module-01") == got.done[0]
    assert _kinds(world).count("binding") == 2 and _kinds(world).count("revocation") == 1
    assert set(world.pack.machine.bindings) == {got.done[0]}


def _unrecorded_completion(world: DemoWorld, binding_id: str) -> tuple[str, CompletionProof]:
    """Pair the entities, but hold back the controller's copy of the completion proof."""
    controller = world.controller
    captured: list[CompletionProof] = []

    def capture(proof: CompletionProof) -> int:
        captured.append(proof)
        raise TransportError("the completion callback is delayed")

    controller.complete_pairing = capture  # type: ignore[method-assign]
    try:
        with pytest.raises(TransportError):
            pair_entities(controller, world.pack, world.module, binding_id)
    finally:
        del controller.complete_pairing
    (proof,) = captured
    return proof.pairing_id, proof


@pytest.mark.parametrize("processes", MODES)
def test_one_completion_is_recorded_once(world: DemoWorld, processes: bool) -> None:
    pairing_id, proof = _unrecorded_completion(world, _bind(world))
    got = race(world, "complete_pairing", {"proof": proof.to_json()}, contenders=2 if processes else 4,
               processes=processes)  # fmt: skip
    assert len(got.done) == 1 and set(got.refused) == {Reason.REPLAY}
    assert _kinds(world).count("pairing_completed") == 1
    assert len(world.controller.pending_pairing(pairing_id).sessions) == 1


@pytest.mark.parametrize("processes", MODES)
def test_one_pairing_revocation_however_many_at_once(world: DemoWorld, processes: bool) -> None:
    pairing_id = world.controller.issue_pairing(_bind(world)).metadata.pairing_id
    got = race(world, "revoke_pairing", {"pairing_id": pairing_id}, processes=processes)
    assert len(got.done) == 1 and got.refused == [Reason.REVOKED]
    assert _kinds(world).count("pairing_revoked") == 1


def test_no_pairing_is_issued_after_its_binding_is_revoked(world: DemoWorld) -> None:
    binding_id = _bind(world)
    start = threading.Barrier(5)
    outcomes: list[str] = []

    def issue() -> None:
        start.wait()
        for _ in range(3):
            try:
                world.controller.issue_pairing(binding_id)
                outcomes.append("issued")
            except VerificationError as exc:
                outcomes.append(exc.reason.value)

    def revoke() -> None:
        start.wait()
        world.controller.revoke(binding_id)

    threads = [threading.Thread(target=issue) for _ in range(4)] + [threading.Thread(target=revoke)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    kinds = _kinds(world)
    revoked_at = kinds.index("revocation")
    assert "pairing_issued" not in kinds[revoked_at:]
    assert set(outcomes) <= {"issued", "revoked"} and kinds.count("pairing_issued") == outcomes.count("issued")


def test_an_overrun_call_releases_only_its_own_claim(world: DemoWorld) -> None:
    """A call stalls past its lease; a second call takes the grant and binds; the first then aborts."""
    controller, clock = world.controller, {"now": world.deployment.clock()}
    controller._clock = lambda: clock["now"]
    grant = world.deployment.authorize(world.pack, world.module)
    a, b = world.pack.access_data, world.module.access_data
    stalled, resume = threading.Event(), threading.Event()
    inner = controller.client

    class Stalling:
        def __init__(self) -> None:
            self.first = True

        def call(self, endpoint: str, op: str, payload: dict) -> object:
            if self.first and threading.current_thread().name == "stalls":
                self.first = False
                stalled.set()
                resume.wait(30)
            return inner.call(endpoint, op, payload)

    controller.client = Stalling()
    failure: list[BaseException] = []

    def slow() -> None:
        try:
            controller.bind(a, b, grant)
        except BaseException as exc:
            failure.append(exc)

    t = threading.Thread(target=slow, name="stalls")
    t.start()
    assert stalled.wait(30)
    with pytest.raises(VerificationError) as exc:  # the claim is live: refused before any I/O
        controller.bind(a, b, grant)
    assert exc.value.reason is Reason.REPLAY
    clock["now"] += controller.claim_lease_s + 1  # the stalled call overran its lease
    winner = controller.bind(a, b, grant).record.binding_id
    resume.set()
    t.join(30)
    (err,) = failure
    assert isinstance(err, VerificationError) and err.reason is Reason.TIMEOUT
    # The loser released nothing of the winner's: the grant is still used, the binding live.
    with pytest.raises(VerificationError) as exc:
        controller.bind(a, b, world.deployment.authorize(world.pack, world.module))
    assert exc.value.reason is Reason.DUPLICATE
    with pytest.raises(VerificationError) as exc:
        controller.bind(a, b, grant)
    assert exc.value.reason is Reason.REPLAY
    assert controller.binding_of(a.device_id, b.device_id) == winner
    assert relationship_state(world)["binding_records"] == 1 and set(world.pack.machine.bindings) == {winner}


def test_a_failed_bind_releases_its_claim_for_a_retry(world: DemoWorld) -> None:
    grant = world.deployment.authorize(world.pack, world.module)
    inner = world.controller.client

    class Down:
        def call(self, endpoint: str, op: str, payload: dict) -> object:
            raise TransportError("entity unreachable")

    world.controller.client = Down()
    with pytest.raises(TransportError):
        world.controller.bind(world.pack.access_data, world.module.access_data, grant)
    world.controller.client = inner
    bound = world.controller.bind(world.pack.access_data, world.module.access_data, grant)
    assert world.controller.binding_of("pack-controller-01", "battery-module-01") == bound.record.binding_id
