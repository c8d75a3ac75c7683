"""Binding grants used twice: by concurrent calls (threads, processes) and after a revocation.

The victim is the deployment ``modbatt demo`` runs: an on-disk state directory (the controller's
encrypted key store and the SQLite ledger) and two entities serving their binding API over HTTP.
Concurrent contenders are threads sharing one controller, or separate controller processes
opening the same state directory, all released at once by a barrier. The defence is the
controller's claim (docs/binding.md, "Claiming a grant"): the grant's nonce and the relationship
are taken inside the key store's exclusive section, before any request leaves.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from ..crypto.rng import SeededRandom
from ..encoding import strict_loads
from ..errors import Reason, VerificationError
from ..model.access import AccessData
from ..model.binding import BindingAuthorization
from ..nodes.controller import AuthController
from ..nodes.entity import EntityNode
from ..protocol.pairing import CompletionProof
from ..transport.http import HttpEntityClient
from ..workbench.demo import MODULE_ID, PACK_ID, demo_network
from ..workbench.deployment import Deployment
from .outcome import Outcome, counted, judge
from .registry import scenario

__all__ = ["OPERATIONS", "DemoWorld", "Race", "bind_race", "demo_deployment", "race", "relationship_state"]

FAMILY = "replay"
#: Bound for every wait on a contender (seconds); a contender that hangs fails the scenario.
_WAIT_S = 60.0


@dataclass
class DemoWorld:
    """An on-disk deployment with the demo's pack and module serving over HTTP."""

    deployment: Deployment
    controller: AuthController
    pack: EntityNode
    module: EntityNode


@contextlib.contextmanager
def demo_deployment(state_dir: Path, seed: int | None = None) -> Iterator[DemoWorld]:
    """The ``modbatt demo`` deployment under ``state_dir``, entities on HTTP (uvicorn, 127.0.0.1)."""
    rng = SeededRandom(seed) if seed is not None else None
    deployment = Deployment(state_dir, **({"rng": rng} if rng is not None else {}))
    try:
        with demo_network(deployment, "http", lambda _text: None) as controller:
            yield DemoWorld(deployment, controller, deployment.entities[PACK_ID], deployment.entities[MODULE_ID])
    finally:
        deployment.close()


@dataclass
class Race:
    """What the contenders got: ``("done", result)`` or ``("refused", reason)`` each."""

    results: list[tuple[str, str]] = field(default_factory=list)
    rejections: dict[str, int] = field(default_factory=dict)

    @property
    def done(self) -> list[str]:
        return [value for kind, value in self.results if kind == "done"]

    @property
    def refused(self) -> list[Reason]:
        return [Reason(value) for kind, value in self.results if kind == "refused"]


#: The controller operations a race can run, each taking JSON arguments (they cross processes).
OPERATIONS = ("bind", "rebind", "revoke", "issue_pairing", "complete_pairing", "revoke_pairing")


def _call(controller: AuthController, op: str, args: dict[str, Any]) -> tuple[str, str]:
    """Run one controller operation; ``("done", summary)`` or ``("refused", reason)``."""
    try:
        if op == "bind":
            a, b = AccessData.from_dict(args["a"]), AccessData.from_dict(args["b"])
            return "done", controller.bind(a, b, BindingAuthorization.from_json(args["grant"])).record.binding_id
        if op == "rebind":
            grant = BindingAuthorization.from_json(args["grant"])
            return "done", controller.rebind(args["binding_id"], grant).record.binding_id
        if op == "revoke":
            return "done", str(controller.revoke(args["binding_id"])[1])
        if op == "issue_pairing":
            return "done", controller.issue_pairing(args["binding_id"]).metadata.pairing_id
        if op == "complete_pairing":
            return "done", str(controller.complete_pairing(CompletionProof.from_json(args["proof"])))
        if op == "revoke_pairing":
            controller.revoke_pairing(args["pairing_id"])
            return "done", args["pairing_id"]
    except VerificationError as exc:
        return "refused", exc.reason.value
    raise ValueError(f"no controller operation {op!r} (one of {', '.join(OPERATIONS)})")


def _contend(state_dir: str, op: str, args: dict[str, Any], barrier: Any, results: Any) -> None:
    """One controller process: open the shared state, wait for the others, run the operation."""
    try:
        deployment = Deployment(Path(state_dir))
        client = HttpEntityClient()
        try:
            controller = deployment.controller(client)
            barrier.wait(_WAIT_S)
            kind, value = _call(controller, op, args)
            results.put((kind, value, {r.value: n for r, n in controller.rejections.items()}))
        finally:
            client.close()
            deployment.close()
    except BaseException as exc:  # reported, never swallowed: the parent fails the race
        results.put(("error", f"{type(exc).__name__}: {exc}", {}))


def _next_result(queue: Any, procs: list[Any]) -> tuple[str, str, dict[str, int]]:
    """The next contender's report; a contender that died without one is an error, not a hang."""
    deadline = time.monotonic() + _WAIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(Empty):
            return queue.get(timeout=0.2)  # type: ignore[no-any-return]
        if not any(proc.is_alive() for proc in procs) and queue.empty():
            codes = [proc.exitcode for proc in procs]
            return "error", f"contenders exited without a report (exit codes {codes})", {}
    return "error", f"no report within {_WAIT_S:g} s", {}


def race(
    world: DemoWorld,
    op: str,
    args: dict[str, Any] | list[dict[str, Any]],
    *,
    contenders: int = 2,
    processes: bool = False,
) -> Race:
    """Release ``contenders`` calls of controller operation ``op`` at one instant.

    ``args`` are the same for every contender, or a list with one entry each. Threads share the
    deployment's controller; processes each open the state directory with their own controller
    (as two ``modbatt`` processes on one state would).
    """
    each = list(args) if isinstance(args, list) else [args] * contenders
    contenders = len(each)
    out = Race()
    if processes:
        ctx = multiprocessing.get_context("spawn")  # no fork of this process's server threads
        barrier, queue = ctx.Barrier(contenders), ctx.Queue()
        state = str(world.deployment.state_dir)
        procs = [ctx.Process(target=_contend, args=(state, op, mine, barrier, queue)) for mine in each]
        for proc in procs:
            proc.start()
        try:
            for _ in procs:
                kind, value, counts = _next_result(queue, procs)
                if kind == "error":
                    raise RuntimeError(f"a contending controller process failed: {value}")
                out.results.append((kind, value))
                for reason, n in counts.items():
                    out.rejections[reason] = out.rejections.get(reason, 0) + n
        finally:
            for proc in procs:
                proc.join(_WAIT_S)
                if proc.is_alive():
                    proc.kill()
        return out
    start = threading.Barrier(contenders)
    lock = threading.Lock()
    before = dict(world.controller.rejections)

    def contend(mine: dict[str, Any]) -> None:
        start.wait(_WAIT_S)
        got = _call(world.controller, op, mine)
        with lock:
            out.results.append(got)

    threads = [
        threading.Thread(target=contend, args=(mine,), name=f"controller-contender-{i}") for i, mine in enumerate(each)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(_WAIT_S)
    if len(out.results) != contenders:
        raise RuntimeError("a contending controller call did not finish")
    for reason, n in world.controller.rejections.items():
        if n > before.get(reason, 0):
            out.rejections[reason.value] = n - before.get(reason, 0)
    return out


def bind_race(world: DemoWorld, grant: BindingAuthorization, *, contenders: int = 2, processes: bool = False) -> Race:
    """:func:`race` of ``bind`` for the pack and the module with one ``grant``."""
    args = {"a": world.pack.access_data.to_dict(), "b": world.module.access_data.to_dict(), "grant": grant.to_json()}
    return race(world, "bind", args, contenders=contenders, processes=processes)


def relationship_state(world: DemoWorld) -> dict[str, int]:
    """What the deployment holds for the pack-module relationship: records, ledger entries, entity keys."""
    records = len(world.controller.binding_ids())
    ledger = world.deployment.ledger
    entries = sum(strict_loads(ledger.entry(i)).get("kind") == "binding" for i in range(ledger.size))
    return {
        "binding_records": records,
        "ledger_bindings": entries,
        "pack_bindings": len(world.pack.machine.bindings),
        "module_bindings": len(world.module.machine.bindings),
    }


def _double_use(seed: int | None, processes: bool, contenders: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="modbatt-attack-") as tmp, demo_deployment(Path(tmp), seed) as world:
        grant = world.deployment.authorize(world.pack, world.module)
        race = bind_race(world, grant, contenders=contenders, processes=processes)
        state = relationship_state(world)
        counters = {**{f"controller.rejections.{k}": v for k, v in sorted(race.rejections.items())}, **state}
        counters.update(contenders=contenders, bound=len(race.done))
        if len(race.done) != 1 or any(v != 1 for v in state.values()):
            return Outcome("succeeded", "accepted", counters, "one grant produced more than one binding")
        # The one success is the grant's legitimate use; every other contender must be refused.
        return judge(list(race.refused), Reason.REPLAY, counters, detail="the grant is claimed before any I/O")


@scenario("grant_double_use_threads", family=FAMILY, expected=("blocked", "replay"))
def grant_double_use_threads(seed: int | None = None) -> Outcome:
    """Four threads of one controller bind with one single-use grant at the same instant."""
    return _double_use(seed, processes=False, contenders=4)


@scenario("grant_double_use_processes", family=FAMILY, expected=("blocked", "replay"))
def grant_double_use_processes(seed: int | None = None) -> Outcome:
    """Two controller processes on one state directory bind with one grant at the same instant."""
    return _double_use(seed, processes=True, contenders=2)


@scenario("grant_reuse_after_revoke", family=FAMILY, expected=("blocked", "replay"))
def grant_reuse_after_revoke(seed: int | None = None) -> Outcome:
    """Bind, revoke, then bind the same two entities again with the grant that first bound them."""
    with tempfile.TemporaryDirectory(prefix="modbatt-attack-") as tmp, demo_deployment(Path(tmp), seed) as world:
        controller, pack, module = world.controller, world.pack, world.module
        grant = world.deployment.authorize(pack, module)

        def bind(auth: BindingAuthorization) -> tuple[str, str]:
            args = {"a": pack.access_data.to_dict(), "b": module.access_data.to_dict(), "grant": auth.to_json()}
            return _call(controller, "bind", args)

        first = bind(grant)[1]
        # While bound, even a fresh grant cannot add a second binding of the same relationship.
        duplicate = bind(world.deployment.authorize(pack, module))
        controller.revoke(first, "module replaced")
        reuse = bind(grant)
        # After the revocation a fresh grant binds: the relationship is not blocked for good.
        fresh = bind(world.deployment.authorize(pack, module))
        counters = {
            **counted("controller.rejections", controller.rejections),
            "duplicate_refused": int(duplicate == ("refused", Reason.DUPLICATE.value)),
            "fresh_grant_bound": int(fresh[0] == "done"),
        }
        if duplicate[0] == "done" or fresh[0] != "done":
            return Outcome("succeeded", "accepted", counters, "one live binding per relationship did not hold")
        reasons = [None if reuse[0] == "done" else Reason(reuse[1])]
        return judge(reasons, Reason.REPLAY, counters, detail="a grant's nonce stays used after revocation")
