"""Kill and restart (docs/delivery.md §5): ``modbatt controller bind`` and ``pair``, each in its own
process over udp_multicast against two ``modbatt entity serve`` processes, SIGKILLed at every step
(the ``MODBATT_KILL_AT`` kill point), then run again.

Checked after every kill: the retry succeeds at once (a claim whose owner process is dead lapses
without waiting out its 120 s lease), the ledger verifies, the controller holds exactly one live
binding of the two entities, and at the end each entity's key store holds exactly the bindings
the ledger holds live (every abandoned attempt dropped: in both or in neither).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from modbatt.cli import main
from modbatt.crypto.keystore import KeyStore
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.killpoints import KILL_AT_ENV, KILL_TRACE_ENV
from modbatt.sim.multiprocess import multicast_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not multicast_available()[0], reason=f"no IPv4 multicast here: {multicast_available()[1]}"),
]

MODBATT = [sys.executable, "-m", "modbatt.cli"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAN_") and k not in (KILL_AT_ENV, KILL_TRACE_ENV)}
    return {**env, **extra}


class Rig:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys
        self.state = root / "controller"
        self.bus = ["-i", "udp_multicast", "--run-id", f"test-kill-{uuid.uuid4().hex}"]
        self.procs: list[subprocess.Popen[str]] = []
        assert main(["controller", "init", "--state", str(self.state)]) == 0
        capsys.readouterr()
        for name, node in (("pack-01", "0x10"), ("module-01", "0x01")):
            proc = subprocess.Popen(
                [*MODBATT, "entity", "serve", "--state", str(root / name), "--device-id", name, "--controller-key",
                 str(self.state / "controller.pub.der"), "--can-node", node, *self.bus],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
            )  # fmt: skip
            self.procs.append(proc)
            assert proc.stdout is not None and "serving its binding API at" in proc.stdout.readline()
        self.access = []
        for name in ("pack-01", "module-01"):
            assert main(["entity", "show", "--state", str(root / name)]) == 0
            path = root / f"{name}.json"
            path.write_text(capsys.readouterr().out)
            self.access.append(str(path))

    def grant(self) -> str:
        path = self.root / f"grant-{uuid.uuid4().hex[:8]}.json"
        assert main(["controller", "grant", "--state", str(self.state), *self.access, "-o", str(path)]) == 0
        self.capsys.readouterr()
        return str(path)

    def run(self, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``modbatt controller ...`` in its own process (killed at a step when told)."""
        return subprocess.run(
            [*MODBATT, "controller", *argv, "--state", str(self.state), *self.bus, "--json"],
            capture_output=True, text=True, env=_env(**env), timeout=120,
        )  # fmt: skip

    def status(self) -> dict:
        assert main(["controller", "status", "--state", str(self.state), "--json"]) == 0
        return json.loads(self.capsys.readouterr().out)

    def live(self) -> list[str]:
        return [b["binding_id"] for b in self.status()["bindings"] if not b["revoked"]]

    def check_ledger(self) -> None:
        assert main(["ledger", "verify", str(self.state / "ledger.sqlite")]) == 0, self.capsys.readouterr().err
        self.capsys.readouterr()

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def entity_bindings(self, name: str) -> dict[str, bool]:
        store = self.root / name / "entity.keystore"
        node = EntityNode(KeyStore.open(store, key_file=store.with_suffix(".kek")))
        try:
            return {bid: st.bound for bid, st in node.machine.bindings.items()}
        finally:
            node.keystore.close()


def _steps(trace: Path) -> list[str]:
    """Every step reached, as ``NAME#N`` (the N-th time NAME was reached)."""
    seen: dict[str, int] = {}
    out = []
    for name in trace.read_text().split():
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{name}#{seen[name]}")
    return out


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
        assert rig.run("revoke", binding).returncode == 0
        assert rig.live() == []
        grant = rig.grant()
        killed = rig.run("bind", "--grant", grant, *rig.access, **{KILL_AT_ENV: step})
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        retry = rig.run("bind", "--grant", grant, *rig.access)
        if step.startswith(("controller.bind.stored", "controller.bind.appended")):
            # The records were stored: the restarted controller finished the ledger entry, the
            # grant is used, and the binding is live.
            assert retry.returncode == 2 and "bound already" in retry.stderr, (step, retry.stderr)
            (binding,) = rig.live()
        else:
            assert retry.returncode == 0, (step, retry.stderr)  # at once: the dead owner's claim lapsed
            binding = json.loads(retry.stdout)["binding_id"]
            assert rig.live() == [binding]
        rig.check_ledger()

    trace.unlink()
    paired = rig.run("pair", binding, **{KILL_TRACE_ENV: str(trace)})
    assert paired.returncode == 0, paired.stderr
    for step in _steps(trace):
        killed = rig.run("pair", binding, **{KILL_AT_ENV: step})
        assert killed.returncode == -signal.SIGKILL, (step, killed.stderr)
        retry = rig.run("pair", binding)
        assert retry.returncode == 0, (step, retry.stderr)
        rig.check_ledger()

    # In both or in neither: each entity holds exactly the live binding, bound, nothing abandoned.
    rig.close()
    for name in ("pack-01", "module-01"):
        assert rig.entity_bindings(name) == {binding: True}, name
