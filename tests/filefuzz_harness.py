"""The file fuzzer's runner and its verdict on one run of ``modbatt`` (tests/test_fuzz_files.py).

:class:`CliRunner` talks to ``tests/filefuzz_driver.py``, which forks one child per case from a
process that already imported the command line; each child runs ``modbatt.cli.main`` under an
address-space budget and a wall-clock timeout (see the driver). :func:`problems` lists what is
wrong with a run: a timeout, a kill, an exit code other than 0, 1 or 2, an escaped exception or
traceback, a failure whose stderr is not exactly one line, a control character in what reaches
the terminal, a memory error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

DRIVER = Path(__file__).with_name("filefuzz_driver.py")

#: Address space one command may add above its imports (RLIMIT_AS), and its wall-clock limit.
BUDGET_MIB = int(os.environ.get("MODBATT_FUZZ_BUDGET_MIB", "768"))
TIMEOUT_S = float(os.environ.get("MODBATT_FUZZ_TIMEOUT", "120"))

# What modbatt.workbench.terminal.escape() removes: C0 controls (the newline aside: it ends a
# line), DEL, C1 controls, bidirectional overrides and isolates, line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHOWN = 4000  # characters of stdout/stderr kept in a verdict


@dataclasses.dataclass
class Run:
    """One case: what ran and what came out."""

    argv: list[str]
    exit: int
    timeout: bool
    seconds: float
    stdout: str
    stderr: str
    crash: str | None
    peak_mib: float | None

    def describe(self) -> str:
        err = self.stderr if len(self.stderr) <= _SHOWN else self.stderr[:_SHOWN] + "…"
        return (
            f"modbatt {' '.join(self.argv)}\n  exit {self.exit}, timeout {self.timeout}, crash {self.crash}, "
            f"{self.seconds:.2f} s, peak {self.peak_mib} MiB\n  stderr: {err!r}"
        )


class DriverError(RuntimeError):
    """The fork server itself failed (not a finding about modbatt)."""


class CliRunner:
    """A started fork server; :meth:`run` runs one ``modbatt`` command line in a fresh child."""

    def __init__(self, *, python: str = sys.executable, env: Mapping[str, str] | None = None) -> None:
        self._env = {**os.environ, **(env or {})}
        self._python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self.base_vm_mib = 0.0
        #: Per command (``argv[0]`` and its action): runs, exit codes, the slowest and the largest.
        self.stats: dict[str, dict[str, Any]] = {}
        self._start()

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [self._python, str(DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the server's own problems go to pytest's captured stderr
            text=True,
            env=self._env,
            cwd=tempfile.gettempdir(),
        )
        hello = self._proc.stdout.readline() if self._proc.stdout else ""
        if not hello:
            raise DriverError(f"the fuzz driver did not start (exit {self._proc.wait()})")
        self.base_vm_mib = json.loads(hello)["base_vm_mib"]

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str | None] | None = None,
        stubs: Iterable[str] = (),
        budget_mib: int = BUDGET_MIB,
        timeout: float = TIMEOUT_S,
    ) -> Run:
        with self._lock, tempfile.TemporaryDirectory(prefix="modbatt-fuzz-out-") as out:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            assert self._proc is not None and self._proc.stdin and self._proc.stdout
            request = {
                "argv": [os.fspath(a) for a in argv],
                "cwd": os.fspath(cwd or out),
                "env": dict(env or {}),
                "stubs": list(stubs),
                "budget_mib": budget_mib,
                "timeout": timeout,
                "out_dir": out,
            }
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            answer = self._proc.stdout.readline()
            if not answer:
                raise DriverError("the fuzz driver died")
            result = json.loads(answer)
            files = {name: Path(out, name) for name in ("stdout", "stderr", "crash", "peak")}

            def text(name: str) -> str:
                path = files[name]
                if not path.exists():
                    return ""
                with path.open("rb") as fh:
                    return fh.read(1 << 20).decode("utf-8", errors="backslashreplace")

            peak = text("peak")
            run = Run(
                argv=list(request["argv"]),
                exit=result["exit"],
                timeout=result["timeout"],
                seconds=result["seconds"],
                stdout=text("stdout"),
                stderr=text("stderr"),
                crash=text("crash") or None,
                peak_mib=round(int(peak) / 2**20, 1) if peak else None,
            )
            self._count(run)
            return run

    def _count(self, run: Run) -> None:
        words = [a for a in run.argv[:2] if not a.startswith("-") and "/" not in a]
        entry = self.stats.setdefault(
            " ".join(words), {"runs": 0, "exits": {}, "max_seconds": 0.0, "max_peak_mib": 0.0}
        )
        entry["runs"] += 1
        key = "timeout" if run.timeout else str(run.exit)
        entry["exits"][key] = entry["exits"].get(key, 0) + 1
        entry["max_seconds"] = round(max(entry["max_seconds"], run.seconds), 2)
        entry["max_peak_mib"] = max(entry["max_peak_mib"], run.peak_mib or 0.0)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.stdin:
                self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None


def problems(run: Run, *, exits: Iterable[int] = (0, 1, 2), budget_mib: int = BUDGET_MIB) -> list[str]:
    """What is wrong with ``run`` (empty when it ended as a user-facing command should)."""
    found = []
    if run.timeout:
        found.append(f"still running after {run.seconds:.0f} s (killed)")
    elif run.exit < 0:
        found.append(f"killed by signal {-run.exit}")
    elif run.exit not in set(exits):
        found.append(f"exit code {run.exit}")
    if run.crash:
        found.append(f"{run.crash} escaped main()")
    if "Traceback" in run.stderr or "Exception ignored" in run.stderr:
        found.append("a traceback on stderr")
    if "MemoryError" in run.stderr or "MemoryError" in run.stdout:
        found.append(f"ran out of its {budget_mib} MiB budget (MemoryError)")
    if run.exit != 0:
        # The monitor's progress notes ("# log FILE", escaped) may precede the error line.
        lines = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("# ")]
        if len(lines) != 1:
            found.append(f"failed with {len(lines)} lines on stderr, not one")
        elif not lines[0].startswith("modbatt"):
            found.append(f"failed without a 'modbatt …: error' line: {lines[0][:80]!r}")
    for name, stream in (("stderr", run.stderr), ("stdout", run.stdout)):
        bad = _UNSAFE.search(stream)
        if bad:
            found.append(f"control character {bad.group()!r} on {name} (not escaped)")
    return found


def assert_clean(run: Run, **kwargs: object) -> None:
    """Fail with the run's description when :func:`problems` finds anything."""
    found = problems(run, **kwargs)  # type: ignore[arg-type]
    assert not found, "; ".join(found) + "\n" + run.describe()


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` with its SHA-256: to show a command changed nothing."""
    return {
        os.fspath(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
