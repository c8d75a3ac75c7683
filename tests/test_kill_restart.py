"""Kill and restart (docs/delivery.md §5): ``modbatt controller bind``, ``pair`` and ``revoke`` against
two ``modbatt entity serve`` processes over udp_multicast, with the controller or one entity
SIGKILLed at every step (the ``MODBATT_KILL_AT`` kill point), then restarted and run again.

Checked after every kill: the retry succeeds (a claim whose owner process is dead lapses without
waiting out its 120 s lease; a dead entity is one line, no traceback), the ledger verifies, the
controller holds exactly one live binding of the two entities. At the end each entity's key store
holds exactly the bindings the ledger holds live (every abandoned attempt dropped: in both or in
neither), every pairing an entity holds was issued in the ledger, every pairing the ledger saw
completed is held by both, and no (traffic key, nonce) pair was sealed twice
(``MODBATT_NONCE_TRACE`` across every process, and the channels of every pairing held, opened,
used, reopened and used again).
"""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from helpers_entities import MODBATT, Entities, assert_no_nonce_reuse, clean_env, stop

from modbatt.cli import main
from modbatt.model.policy import MessageClass
from modbatt.nodes.channel import NONCE_TRACE_ENV
from modbatt.nodes.killpoints import KILL_AT_ENV, KILL_TRACE_ENV
from modbatt.sim.multiprocess import multicast_available
from modbatt.sim.soak import run_soak

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not multicast_available()[0], reason=f"no IPv4 multicast here: {multicast_available()[1]}"),
]

NODES = {"pack-01": "0x10", "module-01": "0x01"}
#: How long a controller run waits for a killed entity (per attempt; the client tries twice).
DEAD_TIMEOUT = ["--timeout", "1"]


class Rig:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys
        self.state = root / "controller"
        self.nonces = root / "nonce-trace"
        self.bus = ["-i", "udp_multicast", "--run-id", f"test-kill-{uuid.uuid4().hex}"]
        assert main(["controller", "init", "--state", str(self.state)]) == 0
        capsys.readouterr()
        self.entities = Entities(root / "entities", self.state / "controller.pub.der")
        self.procs: dict[str, subprocess.Popen[str]] = {}
        for name in NODES:
            self.start(name)
        self.access = [str(self.entities.show(capsys, name)) for name in NODES]

    def start(self, name: str, **env: str) -> None:
        """``modbatt entity serve`` for ``name`` (stopped first if running), tracing its nonces."""
        if name in self.procs:
            stop(self.procs[name])
        self.procs[name] = self.entities.serve(
            name, "--can-node", NODES[name], *self.bus, env={NONCE_TRACE_ENV: str(self.nonces), **env}
        )

    def grant(self) -> str:
        path = self.root / f"grant-{uuid.uuid4().hex[:8]}.json"
        assert main(["controller", "grant", "--state", str(self.state), *self.access, "-o", str(path)]) == 0
        self.capsys.readouterr()
        return str(path)

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``modbatt controller ...`` in its own process (killed at a step when told)."""
        return subprocess.run(
            [*MODBATT, "controller", *argv, "--state", str(self.state), *self.bus, "--json"],
            capture_output=True, text=True, env=clean_env(**{NONCE_TRACE_ENV: str(self.nonces), **env}), timeout=120,
        )  # fmt: skip

    def ctl(self, *argv: str) -> tuple[int, dict, str]:
        """``modbatt controller ...`` in this process: exit code, JSON output, error output."""
        code = main(["controller", *argv, "--state", str(self.state), *self.bus, "--json"])
        out, err = self.capsys.readouterr()
        return code, json.loads(out) if code == 0 else {}, err

    def status(self) -> dict:
        assert main(["controller", "status", "--state", str(self.state), "--json"]) == 0
        return json.loads(self.capsys.readouterr().out)

    def live(self) -> list[str]:
        return [b["binding_id"] for b in self.status()["bindings"] if not b["revoked"]]

    def check_ledger(self) -> None:
        assert main(["ledger", "verify", str(self.state / "ledger.sqlite")]) == 0, self.capsys.readouterr().err
        self.capsys.readouterr()

    def close(self) -> None:
        self.entities.close()

    def check_stores(self, binding: str) -> None:
        """In both or in neither (entities stopped first): bindings, pairings, and no nonce sealed twice."""
        self.close()
        pairings = {p["pairing_id"]: p for p in self.status()["pairings"]}
        held = {}
        for name in NODES:
            assert self.entities.bindings(name) == {binding: True}, name
            held[name] = self.entities.pairings(name)
            assert set(held[name]) <= set(pairings), name  # issued in the ledger before any entity saw it
            assert set(held[name].values()) <= {binding}, name  # pairings of revoked bindings erased
        completed = {pid for pid, p in pairings.items() if p["uses"] and p["binding_id"] == binding}
        assert all(completed <= set(h) for h in held.values())
        exercise_channels(self.entities, held, self.nonces)
        assert_no_nonce_reuse(self.nonces)


def exercise_channels(entities: Entities, held: dict[str, dict[str, str]], trace: Path) -> None:
    """Open every pairing's channel on every entity holding it, send, close, reopen (a restart), send
    again: each seal goes to the nonce trace."""
    mp = pytest.MonkeyPatch()
    mp.setenv(NONCE_TRACE_ENV, str(trace))
    try:
        for name, pairings in held.items():
            node = entities.node(name)
            try:
                for pairing_id in pairings:
                    for _ in range(2):
                        channel = node.channel(pairing_id)
                        for cls in (MessageClass.CHARGE_COMMAND, MessageClass.VOLTAGE_TELEMETRY):
                            for _ in range(3):
                                channel.send(cls, b"\x01\x02")
                        channel.frames_to_send()
                        channel.close()
            finally:
                node.close_channels()
                node.keystore.close()
    finally:
        mp.undo()


def _steps(trace: Path) -> list[str]:
    """Every step reached, as ``NAME#N`` (the N-th time NAME was reached)."""
    seen: dict[str, int] = {}
    out = []
    for name in trace.read_text().split():
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name}#{seen[name]}")
    return out


def _failed_cleanly(code: int, err: str, step: str) -> None:
    """A controller run whose entity died: one error line, last, no traceback (before it, at most the
    controller's warnings that it could not tell an entity to drop the aborted binding's keys)."""
    assert code in (1, 2), (step, code, err)
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("modbatt controller: error: ")]
    assert errors == lines[-1:], (step, err)
    assert all(line.startswith("could not abort binding on ") for line in lines[:-1]), (step, err)
    assert "Traceback" not in err


@pytest.fixture
def rig(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    r = Rig(tmp_path, capsys)
    try:
        yield r
    finally:
        r.close()


def test_controller_killed_at_every_step_of_bind_and_pair_recovers(rig: Rig, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    first = rig.run("bind", "--grant", rig.grant(), *rig.access, **{KILL_TRACE_ENV: str(trace)})
    assert first.returncode == 0, first.stderr
    bind_steps = _steps(trace)
    assert {s.split("#")[0] for s in bind_steps} == {
        "controller.bind.claimed", "controller.bind.answered", "controller.bind.stored", "controller.bind.appended",
    }  # fmt: skip
    binding = json.loads(first.stdout)["binding_id"]
    for step in bind_steps:
        assert rig.ctl("revoke", binding)[0] == 0
        assert rig.live() == []
        grant = rig.grant()
        killed = rig.run("bind", "--grant", grant, *rig.access, **{KILL_AT_ENV: step})
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        code, retry, err = rig.ctl("bind", "--grant", grant, *rig.access)
        if step.startswith(("controller.bind.stored", "controller.bind.appended")):
            # The records were stored: the restarted controller finished the ledger entry, the
            # grant is used, and the binding is live.
            assert code == 2 and "bound already" in err, (step, err)
            (binding,) = rig.live()
        else:
            assert code == 0, (step, err)  # at once: the dead owner's claim lapsed
            binding = retry["binding_id"]
            assert rig.live() == [binding]
        rig.check_ledger()

    trace.unlink()
    paired = rig.run("pair", binding, **{KILL_TRACE_ENV: str(trace)})
    assert paired.returncode == 0, paired.stderr
    for step in _steps(trace):
        killed = rig.run("pair", binding, **{KILL_AT_ENV: step})
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        code, _, err = rig.ctl("pair", binding)
        assert code == 0, (step, err)
        rig.check_ledger()

    rig.check_stores(binding)


def test_entity_killed_at_every_step_of_bind_revoke_and_pair_recovers(rig: Rig, tmp_path: Path) -> None:
    # Each entity lists the steps it reaches in one bind, one pair and one revoke.
    traces = {name: tmp_path / f"trace-{name}" for name in NODES}
    for name in NODES:
        rig.start(name, **{KILL_TRACE_ENV: str(traces[name])})
    code, bound, err = rig.ctl("bind", "--grant", rig.grant(), *rig.access)
    assert code == 0, err
    binding = bound["binding_id"]
    assert rig.ctl("pair", binding)[0] == 0
    assert rig.ctl("revoke", binding)[0] == 0
    steps = [(name, step) for name in NODES for step in _steps(traces[name])]
    ops = {step.split(".")[1] for _, step in steps}
    assert ops == {"generate_keys", "distribute_key", "revoke", "pairing_accept", "pairing_start", "pairing_offer",
                   "pairing_confirm"}, ops  # fmt: skip
    assert len(steps) == len(set(steps))  # each step once per entity and run: #1 names it

    def bind_again() -> str:
        code, retry, err = rig.ctl("bind", "--grant", rig.grant(), *rig.access)
        assert code == 0, err
        assert rig.live() == [retry["binding_id"]]
        return str(retry["binding_id"])

    # Binding: the entity dies having received, stored or answered a request; the controller
    # aborts (the dead entity cannot hear it), the retry binds anew with the same grant, and the
    # restarted entity drops what it kept of the aborted attempt when the new keys are generated.
    for name, step in steps:
        if step.split(".")[1] not in ("generate_keys", "distribute_key"):
            continue
        rig.start(name, **{KILL_AT_ENV: step})
        grant = rig.grant()
        code, _, err = rig.ctl("bind", "--grant", grant, *rig.access, *DEAD_TIMEOUT)
        assert rig.procs[name].wait(timeout=60) == -signal.SIGKILL, (name, step)
        _failed_cleanly(code, err, step)
        assert rig.live() == []
        rig.start(name)
        code, retry, err = rig.ctl("bind", "--grant", grant, *rig.access)
        assert code == 0, (name, step, err)
        assert rig.live() == [retry["binding_id"]]
        rig.check_ledger()
        assert rig.ctl("revoke", retry["binding_id"])[0] == 0
    binding = bind_again()

    # Revocation: the ledger records it first; the dead entity is reported unreached, and drops
    # the revoked binding's keys when the next binding of the two generates new ones.
    for name, step in steps:
        if step.split(".")[1] != "revoke":
            continue
        rig.start(name, **{KILL_AT_ENV: step})
        code, revoked, err = rig.ctl("revoke", binding, *DEAD_TIMEOUT)
        assert rig.procs[name].wait(timeout=60) == -signal.SIGKILL, (name, step)
        assert code == 0, (name, step, err)
        assert revoked["unreached"] == [name]  # no answer came back, whatever it stored
        assert rig.live() == []
        rig.start(name)
        binding = bind_again()
        rig.check_ledger()

    # Pairing: any step of either entity; the retry issues a new certificate and completes.
    for name, step in steps:
        if not step.split(".")[1].startswith("pairing_"):
            continue
        rig.start(name, **{KILL_AT_ENV: step})
        code, _, err = rig.ctl("pair", binding, *DEAD_TIMEOUT)
        assert rig.procs[name].wait(timeout=60) == -signal.SIGKILL, (name, step)
        _failed_cleanly(code, err, step)
        rig.start(name)
        code, _, err = rig.ctl("pair", binding)
        assert code == 0, (name, step, err)
        rig.check_ledger()

    rig.check_stores(binding)


# ----------------------------------------------------------------------------- the command exchange

MODULE_STEPS = ("module.command.received", "module.command.committed", "module.command.acked")
PACK_STEPS = ("pack.command.reserved", "pack.command.sent", "pack.command.acked")


def test_modules_killed_at_every_command_step_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pack in this process, each module in its own (docs/delivery.md §6), no faults: module n
    # dies at the n-th module step on its 3rd command and comes back from its state on disk.
    nonces = tmp_path / "nonce-trace"
    monkeypatch.setenv(NONCE_TRACE_ENV, str(nonces))  # the module processes inherit it
    kill_at = {n: f"{step}#3" for n, step in enumerate(MODULE_STEPS, start=1)}
    report = run_soak(3, 8.0, faults="", restart_every=None, kill_at=kill_at, drain=20.0, seed=3)
    s = report.stats
    assert sorted(report.killed) == [1, 2, 3] and report.restarts == 3
    # Every acknowledged command applied exactly once (counted from the modules' journals, which
    # a kill does not lose); the retries after a restart are new units under fresh freshness.
    assert s.acknowledged_not_applied == 0 and s.applied_twice == 0, report.to_dict()["commands"]
    assert report.ok, json.dumps(report.to_dict()["commands"])
    assert s.retransmissions > 0  # tries while a module was down, each a new unit
    assert set(s.gave_up) <= {"charge_command", "discharge_command", "safety_limits", "firmware_update"}
    assert assert_no_nonce_reuse(nonces) > 100


def test_pack_killed_at_every_command_step_restarts_from_its_state(tmp_path: Path) -> None:
    # ``modbatt sim --state DIR``: pack and module in one process, killed at each pack and module
    # step of the command exchange; every run restarts from what the killed one persisted.
    state, nonces, trace = tmp_path / "pack", tmp_path / "nonce-trace", tmp_path / "trace"
    bus = ["-i", "udp_multicast", "--run-id", f"test-kill-sim-{uuid.uuid4().hex}"]

    def sim(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MODBATT, "sim", "--state", str(state), "-m", "1", "-d", "2", "--json", *bus],
            capture_output=True, text=True, env=clean_env(**{NONCE_TRACE_ENV: str(nonces), **env}), timeout=120,
        )  # fmt: skip

    first = sim(**{KILL_TRACE_ENV: str(trace)})
    assert first.returncode == 0, first.stderr
    reached = set(trace.read_text().split())
    assert {*MODULE_STEPS, *PACK_STEPS} <= reached
    for step in (*PACK_STEPS, *MODULE_STEPS):
        killed = sim(**{KILL_AT_ENV: f"{step}#3"})
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
    # After six kills: the pack's sequence numbers continue past every block it reserved (the
    # module drops nothing as stale), every command is acknowledged and applied once, the
    # channels resynchronise, and no (key, nonce) pair was sealed twice in any of the runs.
    last = sim()
    assert last.returncode == 0, last.stderr
    result, _ = json.JSONDecoder().raw_decode(last.stdout)
    commands = result["commands"]
    assert result["ok"] and commands["sent"] > 0 and commands["acknowledged"] == commands["sent"], commands
    assert commands["acknowledged_not_applied"] == 0 and commands["applied_twice"] == 0
    assert assert_no_nonce_reuse(nonces) > 100
