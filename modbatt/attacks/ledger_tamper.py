"""Insiders with write access to the ledger file: rollback, fork, and files that attack the auditor.

The attacker can edit the controller's state directory (or hands an auditor a file) but holds no
controller key. The scenarios run an on-disk deployment (:class:`~modbatt.workbench.deployment.
Deployment`: key stores, SQLite ledger, the real :class:`~modbatt.nodes.controller.AuthController`)
and the auditor's command line (``modbatt ledger export --sth-out``, ``ledger verify --sth``,
``audit``). What stops them (docs/ledger.md, "Anti-rollback" and "Opening untrusted files"):

* the controller pins each head it signs in its authenticated key store and refuses to start,
  append or sign unless the log extends that head (RFC 9162 consistency): a rollback is
  ``stale``, a rewritten history ``bad_proof``, and nothing is written;
* an auditor's kept head (``verify --sth``) catches what the controller cannot: a rollback of the
  ledger *and* the key store together (``detected``; the key store's documented limit);
* audits open files read-only and compare the schema exactly before reading a row, and bound
  and type-check every value they read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..crypto.rng import RandomSource, SeededRandom, SystemRandom
from ..crypto.suite import PrivateKey
from ..errors import Reason
from ..ledger import APPLICATION_ID, FORMAT_VERSION, Ledger
from ..model.access import AccessData, LctRef, TransportProtocol
from ..nodes.controller import AuthController
from ..nodes.inmemory import ManualClock, module_access
from ..transport.http import InProcessEntityClient
from ..workbench.deployment import Deployment
from .outcome import Outcome, attempt, counted, judge
from .registry import scenario

__all__ = [
    "audit_under_memory_limit",
    "bound_site",
    "forge_history",
    "hostile_ledger",
    "ledger_shape",
    "truncate_ledger",
    "type_confused_ledger",
]

FAMILY = "insider"
#: Address space the auditor's commands may add on a hostile file (RLIMIT_AS in a child process).
AUDIT_MEMORY_BUDGET_MIB = 256


# --------------------------------------------------------------------------- attacker tools


@contextlib.contextmanager
def _untriggered(path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection with the append-only triggers dropped, put back afterwards as they were
    (so that the file keeps the exact ledger schema: the attacker covers their tracks)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        saved = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for name, _ in saved:
            conn.execute(f'DROP TRIGGER "{name}"')
        yield conn
        for _, sql in saved:
            conn.execute(sql)
    finally:
        conn.close()


def truncate_ledger(path: Path, keep: int) -> None:
    """Delete the entries from ``keep`` on, the cached nodes above them and every tree head that
    covers them: what remains is a shorter log that verifies on its own."""
    with _untriggered(path) as conn:
        conn.execute("DELETE FROM entries WHERE idx >= ?", (keep,))
        conn.execute("DELETE FROM nodes WHERE (idx + 1) << level > ?", (keep,))
        conn.execute("DELETE FROM tree_heads WHERE tree_size > ?", (keep,))


def forge_history(path: Path, keep: int, forged: list[bytes]) -> None:
    """Rewrite history after entry ``keep``: truncate there, then append ``forged`` with modbatt's
    own writer (no controller key, so no tree head can be signed over it)."""
    truncate_ledger(path, keep)
    with Ledger(path) as ledger:
        ledger.append_many(forged)


def hostile_ledger(path: Path) -> None:
    """A small file with a ledger's identity (application id, format, table names) whose columns
    are generated ``zeroblob(900000000)``s: reading one row allocates gigabytes."""
    huge = "zeroblob(900000000)"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version={FORMAT_VERSION}")
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        conn.execute(
            f"CREATE TABLE entries (idx INTEGER PRIMARY KEY, pad BLOB, entry BLOB GENERATED ALWAYS AS ({huge}) "
            f"VIRTUAL, leaf_hash BLOB GENERATED ALWAYS AS ({huge}) VIRTUAL)"
        )
        conn.execute(
            "CREATE TABLE nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, "
            "PRIMARY KEY (level, idx)) WITHOUT ROWID"
        )
        conn.execute(
            f"CREATE TABLE tree_heads (id INTEGER PRIMARY KEY, tree_size INTEGER NOT NULL, timestamp INTEGER "
            f"NOT NULL, root_hash BLOB GENERATED ALWAYS AS ({huge}) VIRTUAL, signature BLOB)"
        )
        conn.execute("INSERT INTO meta VALUES ('format', CAST('modbatt-ledger' AS BLOB)), ('version', 1)")
        for i in range(4):
            conn.execute("INSERT INTO entries (idx, pad) VALUES (?, zeroblob(4000))", (i,))
        conn.execute("INSERT INTO tree_heads (tree_size, timestamp, signature) VALUES (4, 0, zeroblob(64))")
    finally:
        conn.close()


def type_confused_ledger(path: Path) -> None:
    """A genuine ledger (exact schema) whose hash columns hold huge integers and one entry is
    over the size limit: ``bytes(2**40)`` would be a terabyte, ``bytes(entry)`` 200 KB."""
    with Ledger(path, signer=PrivateKey.generate()) as ledger:
        ledger.append_many([b"entry %d" % i for i in range(6)])
        ledger.signed_tree_head()
    with _untriggered(path) as conn:
        conn.execute("UPDATE entries SET leaf_hash = ? WHERE idx = 1", (1 << 40,))
        conn.execute("UPDATE nodes SET hash = ? WHERE level = 1", (1 << 40,))
        conn.execute("UPDATE entries SET entry = zeroblob(200000) WHERE idx = 4")


# --------------------------------------------------------------------------- the victim


@dataclass
class _Site:
    """An on-disk deployment: a controller bound to a pack and a module, restartable."""

    state: Path
    seed: int | None
    clock: ManualClock
    starts: int = 0

    def rng(self) -> RandomSource:
        # Each start its own stream: a restarted seeded stream would repeat nonces and ids.
        return SeededRandom(f"{self.seed}/start-{self.starts}") if self.seed is not None else SystemRandom()

    def start(self) -> tuple[Deployment, AuthController, list[Any]]:
        self.starts += 1
        dep = Deployment(self.state, clock=self.clock, rng=self.rng())
        try:
            lct = LctRef("lct:web4:pack-01", "modbatt-ledger")
            pack = dep.entity(AccessData("can://can0/0xff", TransportProtocol.CAN, "pack-01", lct))
            module = dep.entity(module_access(1))
            client = InProcessEntityClient({e.access_data.endpoint: e for e in (pack, module)})
            return dep, dep.controller(client), [pack, module]
        except BaseException:
            dep.close()
            raise

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.sqlite"

    @property
    def keystore(self) -> Path:
        return self.state / "controller.keystore"


def bound_site(tmp: Path, seed: int | None, pairings: int = 3) -> tuple[_Site, Deployment, AuthController, str]:
    """A deployment with one binding and ``pairings`` pairings issued: 1 + pairings entries and heads."""
    site = _Site(tmp / "state", seed, ManualClock())
    dep, controller, (pack, module) = site.start()
    binding_id = controller.bind(pack.access_data, module.access_data, dep.authorize(pack, module)).record.binding_id
    for _ in range(pairings):
        controller.issue_pairing(binding_id)
    return site, dep, controller, binding_id


def _cli(*argv: str) -> tuple[int, str]:
    """Run the ``modbatt`` command line in process: (exit code, stderr)."""
    from ..cli import main

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def ledger_shape(path: Path) -> tuple[int, int]:
    """(entries, tree heads) as the file holds them (a read-only look, as any reader)."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        entries = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        heads = conn.execute("SELECT COUNT(*) FROM tree_heads").fetchone()[0]
    finally:
        conn.close()
    return int(entries), int(heads)


def _audit_kept_head(path: Path, kept: Path) -> dict[Reason, int]:
    """What ``ledger verify --sth`` checks, through the library: the auditor's ledger's rejections."""
    from ..cli.ledger_cmd import load_tree_head

    head = load_tree_head(kept)
    with Ledger(path, read_only=True) as ledger:
        ledger.verify()
        attempt(lambda: ledger.check_extends(head.tree_size, head.root_hash, head="the kept tree head"))
        return dict(ledger.rejections)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused_start(site: _Site) -> Callable[[], Any]:
    def start() -> None:
        dep, _, _ = site.start()  # refused inside AuthController.__init__ on a rolled-back ledger
        dep.close()

    return start


def _tamper_and_restart(
    seed: int | None, tamper: Callable[[Path], None], expected: Reason
) -> tuple[list[Reason | None], dict[str, Any]]:
    """Tamper with the ledger under a running controller, then again across a restart."""
    with tempfile.TemporaryDirectory(prefix="modbatt-ledger-tamper-") as tmp:
        site, dep, controller, binding_id = bound_site(Path(tmp), seed)
        kept = Path(tmp) / "auditor-head.json"
        export_exit, _ = _cli("ledger", "export", str(site.ledger), "--sth-out", str(kept))
        honest_size = dep.ledger.size
        # 1. Live: the file is edited under the running controller, which then tries to write.
        tamper(site.ledger)
        before = ledger_shape(site.ledger)
        reasons = [attempt(lambda: controller.revoke(binding_id, "module replaced"))]
        live_unchanged = ledger_shape(site.ledger) == before and not controller.is_revoked(binding_id)
        counters: dict[str, Any] = counted("controller.rejections", controller.rejections)
        dep.close()
        # 2. Restart: the controller refuses to start on that file; nothing is written.
        store_digest = _digest(site.keystore)
        reasons.append(attempt(_refused_start(site)))
        restart_unchanged = ledger_shape(site.ledger) == before and _digest(site.keystore) == store_digest
        # 3. The auditor: the file verifies on its own; against the kept head it does not.
        plain_exit, _ = _cli("ledger", "verify", str(site.ledger))
        kept_exit, kept_err = _cli("ledger", "verify", str(site.ledger), "--sth", str(kept))
        counters.update(counted("auditor_ledger.rejections", _audit_kept_head(site.ledger, kept)))
        counters.update(
            {
                "restart_refused": int(reasons[-1] is expected),
                "nothing_written": int(live_unchanged and restart_unchanged),
                "heads_signed_after_tampering": ledger_shape(site.ledger)[1] - before[1],
                "honest_entries": honest_size,
                "entries_after_tampering": before[0],
                "auditor_export_exit": export_exit,
                "auditor_verify_exit": plain_exit,
                "auditor_verify_kept_head_exit": kept_exit,
            }
        )
        if kept_exit != 1 or expected.value not in kept_err:
            reasons.append(None)  # the auditor's check must catch it too, for the same reason
    return reasons, counters


# --------------------------------------------------------------------------- scenarios


@scenario("ledger_rollback", family=FAMILY, expected=("blocked", "stale"))
def ledger_rollback(seed: int | None = None) -> Outcome:
    """Delete the ledger's tail entries and the tree heads covering them, then let the controller write."""
    reasons, counters = _tamper_and_restart(seed, lambda p: truncate_ledger(p, keep=2), Reason.STALE)
    return judge(reasons, Reason.STALE, counters, detail="the controller's pinned head is larger than the log")


@scenario("ledger_fork", family=FAMILY, expected=("blocked", "bad_proof"))
def ledger_fork(seed: int | None = None) -> Outcome:
    """Rewrite history after entry 1 (as many entries as before) and get the genuine key to sign over it."""
    forged = [b"forged history %d" % i for i in range(3)]
    reasons, counters = _tamper_and_restart(seed, lambda p: forge_history(p, 1, forged), Reason.BAD_PROOF)
    return judge(reasons, Reason.BAD_PROOF, counters, detail="no consistency proof from the pinned head")


@scenario("ledger_rollback_with_keystore", family=FAMILY, expected=("detected", "stale"))
def ledger_rollback_with_keystore(seed: int | None = None) -> Outcome:
    """Roll back the ledger and the controller's key store together to an old copy (the pin goes back too)."""
    with tempfile.TemporaryDirectory(prefix="modbatt-ledger-tamper-") as tmp:
        site, dep, controller, binding_id = bound_site(Path(tmp), seed, pairings=0)
        old_store = site.keystore.read_bytes()  # the insider's copy, pinned at one entry
        for _ in range(3):
            controller.issue_pairing(binding_id)
        kept = Path(tmp) / "auditor-head.json"
        export_exit, _ = _cli("ledger", "export", str(site.ledger), "--sth-out", str(kept))
        dep.close()
        truncate_ledger(site.ledger, keep=1)
        site.keystore.write_bytes(old_store)
        # The controller cannot tell: its pin went back with the file (docs/crypto.md §8).
        dep, controller, _ = site.start()
        controller.revoke(binding_id, "module replaced")  # a head over the rolled-back log, genuine key
        signed = ledger_shape(site.ledger)[1]
        dep.close()
        kept_exit, kept_err = _cli("ledger", "verify", str(site.ledger), "--sth", str(kept))
        auditor = _audit_kept_head(site.ledger, kept)
    counters = {
        **counted("auditor_ledger.rejections", auditor),
        "controller_started": 1,
        "heads_signed_over_rolled_back_log": signed - 1,
        "auditor_export_exit": export_exit,
        "auditor_verify_kept_head_exit": kept_exit,
    }
    if kept_exit == 1 and Reason.STALE.value in kept_err:
        detail = "only a head kept outside the state directory shows it"
        return Outcome("detected", Reason.STALE.value, counters, detail)
    return Outcome("succeeded", "undetected_rollback", counters, kept_err.strip())


_AUDIT_DRIVER = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys
    from modbatt.cli import build_parser, main

    # Every sub-command's modules are imported before the budget is measured: the budget bounds
    # what a file makes the tools allocate, not the libraries installed (python-can alone maps
    # some hundred MiB with the formats extra's asammdf).
    build_parser()

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    budget = vm_bytes() + int(sys.argv[1]) * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    results = []
    for argv in json.loads(sys.argv[2]):
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                code = main(argv)
            crash = None
        except BaseException as exc:
            code, crash = None, type(exc).__name__
        results.append({"argv": argv, "exit": code, "crash": crash, "stderr": err.getvalue()})
    print(json.dumps(results))
    """
)


def audit_under_memory_limit(
    commands: list[list[str]], budget_mib: int = AUDIT_MEMORY_BUDGET_MIB
) -> list[dict[str, Any]]:
    """Run ``modbatt`` commands in a child process whose address space may grow by ``budget_mib`` only."""
    out = subprocess.run(
        [sys.executable, "-c", _AUDIT_DRIVER, str(budget_mib), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"audit driver failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


@scenario("hostile_ledger_file", family=FAMILY, expected=("blocked", "schema_mismatch"))
def hostile_ledger_file(seed: int | None = None) -> Outcome:
    """Hand the auditor ledger files that attack the tools: generated zeroblob columns, huge integer hashes."""
    del seed  # the files are fixed
    with tempfile.TemporaryDirectory(prefix="modbatt-hostile-ledger-") as tmp:
        files = {"generated_columns": Path(tmp) / "generated.sqlite", "type_confusion": Path(tmp) / "confused.sqlite"}
        hostile_ledger(files["generated_columns"])
        type_confused_ledger(files["type_confusion"])
        digests = {name: _digest(path) for name, path in files.items()}
        listing = sorted(p.name for p in Path(tmp).iterdir())
        commands = [
            argv
            for path in files.values()
            for argv in (
                ["ledger", "verify", str(path)],
                ["ledger", "proof", str(path), "1"],
                ["ledger", "export", str(path), "--json"],
                ["audit", str(path)],
            )
        ]
        results = audit_under_memory_limit(commands)
        unchanged = all(_digest(path) == digests[name] for name, path in files.items())
        nothing_beside = sorted(p.name for p in Path(tmp).iterdir()) == listing
    generated = [r for r in results if str(files["generated_columns"]) in r["argv"]]
    counters = {
        "commands": len(results),
        "one_line_errors": sum(r["exit"] in (1, 2) and len(r["stderr"].strip().splitlines()) == 1 for r in results),
        "crashes": sum(r["crash"] is not None for r in results),
        "schema_refusals": sum("schema differs" in r["stderr"] for r in generated),
        "memory_budget_mib": AUDIT_MEMORY_BUDGET_MIB,
        "files_byte_identical": int(unchanged),
        "files_created_beside": int(not nothing_beside),
    }
    ok = (
        counters["one_line_errors"] == len(results)
        and counters["schema_refusals"] == len(generated)
        and unchanged
        and nothing_beside
    )
    if not ok:
        return Outcome("succeeded", "auditor_tool_attacked", counters, json.dumps(results)[:500])
    return Outcome("blocked", "schema_mismatch", counters, "schema compared exactly, values bounded, read-only")
