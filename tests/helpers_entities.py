"""``modbatt entity serve`` processes for tests: start them, read their access data, stop them; and
the check of a nonce trace they wrote (``MODBATT_NONCE_TRACE``).

Shared by the controller command-line tests and the kill-and-restart tests. Every process gets an
environment without the CAN bus, kill-point and nonce-trace variables of the test run, plus the
ones the test names (a kill point for this process, a trace file shared by all of them).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from modbatt.cli import main
from modbatt.crypto.keystore import KeyStore
from modbatt.nodes.channel import NONCE_TRACE_ENV
from modbatt.nodes.entity import EntityNode
from modbatt.nodes.killpoints import KILL_AT_ENV, KILL_TRACE_ENV

MODBATT = [sys.executable, "-m", "modbatt.cli"]
_CLEARED = (KILL_AT_ENV, KILL_TRACE_ENV, NONCE_TRACE_ENV)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without CAN_*, kill-point and trace variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAN_") and k not in _CLEARED}
    return {**env, **extra}


def stop(proc: subprocess.Popen[str]) -> None:
    """Terminate ``proc`` (killed if it does not exit in 20 s); a process already gone is left alone."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Entities:
    """Entity processes started by a test (state under ``root/<name>``), all stopped at its end."""

    def __init__(self, root: Path, controller_key: Path) -> None:
        self.root = root
        self.controller_key = controller_key
        self.procs: list[subprocess.Popen[str]] = []

    def serve(
        self, name: str, *transport: str, controller_key: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start ``modbatt entity serve`` for ``name`` and wait until it serves its binding API."""
        proc = subprocess.Popen(
            [*MODBATT, "entity", "serve", "--state", str(self.root / name), "--device-id", name,
             "--controller-key", str(controller_key or self.controller_key), *transport],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(**(env or {})),
        )  # fmt: skip
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving its binding API at" in line, proc.stderr.read() if proc.stderr else line
        return proc

    def show(self, capsys: pytest.CaptureFixture[str], name: str) -> Path:
        """``modbatt entity show`` of ``name`` written to ``root/<name>.json`` (the access data file)."""
        assert main(["entity", "show", "--state", str(self.root / name)]) == 0
        path = self.root / f"{name}.json"
        path.write_text(capsys.readouterr().out)
        return path

    def node(self, name: str) -> EntityNode:
        """``name``'s entity node opened from its key store (its process stopped first); close its key store."""
        store = self.root / name / "entity.keystore"
        return EntityNode(KeyStore.open(store, key_file=store.with_suffix(".kek")))

    def bindings(self, name: str) -> dict[str, bool]:
        """Binding id -> bound, as ``name``'s key store holds them."""
        node = self.node(name)
        try:
            return {bid: st.bound for bid, st in node.machine.bindings.items()}
        finally:
            node.keystore.close()

    def pairings(self, name: str) -> dict[str, str]:
        """Pairing id -> binding id of every pairing whose secrets ``name``'s key store holds."""
        node = self.node(name)
        try:
            return dict(node.pairings_held())
        finally:
            node.keystore.close()

    def stop(self, proc: subprocess.Popen[str]) -> None:
        """Stop one of them (see :func:`stop`)."""
        stop(proc)

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)


def assert_no_nonce_reuse(trace: Path) -> int:
    """Every ``FINGERPRINT NONCE`` line of the trace is whole and unique; returns how many."""
    lines = trace.read_text(encoding="ascii").splitlines()
    for line in lines:
        fingerprint, nonce = line.split(" ")
        assert len(fingerprint) == 16 and len(nonce) == 24, line
    reused = [k for k, n in collections.Counter(lines).items() if n > 1]
    assert reused == [], f"(key, nonce) sealed twice: {reused[:3]}"
    assert lines, "nothing sealed: the trace is not wired"
    return len(lines)
