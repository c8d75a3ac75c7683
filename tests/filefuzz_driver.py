"""Fork server for the file fuzzer (tests/test_fuzz_files.py): runs ``modbatt`` as a user would, cheaply.

Started once as ``python tests/filefuzz_driver.py``. It imports the command line and every module
a command imports on demand (python-can's readers, cantools, asammdf, pandas, PyYAML, papermill),
then serves one request per line on stdin: a JSON object with ``argv``, ``cwd``, ``env``,
``timeout``, ``budget_mib``, ``stubs`` and ``out_dir``. For each it forks a child that:

* becomes its own process group (so a timeout kills whatever it started too);
* gets stdin from /dev/null and stdout/stderr into files in ``out_dir``, wrapped as CPython
  wraps them for a UTF-8 locale (stdout strict, stderr backslashreplace);
* may grow its address space by ``budget_mib`` only (``RLIMIT_AS`` over the fork's own size,
  which already holds every import: the budget bounds what an input makes the tools allocate);
* runs ``modbatt.cli.main(argv)`` exactly as ``python -m modbatt.cli`` does: an exception that
  escapes ``main`` prints its traceback and exits 1, ``SystemExit`` keeps its code, and the
  interpreter's exit (threads joined, atexit handlers, garbage collected) happens before the
  child ends.

The answer (one JSON line on stdout) gives the exit code (negative: killed by that signal), whether
the wall-clock timeout struck, the type of an escaped exception, and the peak address space above
the fork's size. Stubs replace what would run for minutes after the input was accepted (papermill
executing notebooks, an HTTP server serving forever); they never touch the code that reads input.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import io
import json
import os
import resource
import signal
import sys
import threading
import time
import traceback


def _vm(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


#: Modules the commands import on demand; imported before the baseline is measured.
_PRELOAD = (
    "sqlite3", "can", "cantools", "pandas", "papermill", "yaml",
    *(f"can.io.{fmt}" for fmt in ("asc", "blf", "canutils", "csv", "sqlite", "trc", "mf4")),
    "modbatt.cli.run_cmd", "modbatt.crypto.keystore", "modbatt.nodes.monitor_keys", "modbatt.sim.experiments",
    "modbatt.transport.canbus", "modbatt.transport.monitor", "modbatt.transport.recording",
    "modbatt.workbench.capture", "modbatt.workbench.monitor_view", "modbatt.workbench.parameters",
    "modbatt.workbench.sweep", "modbatt.workbench.vectors",
)  # fmt: skip


def _preload() -> None:
    """Import what the commands import lazily, so every fork starts from the same baseline."""
    import importlib

    from modbatt.cli import build_parser

    build_parser()
    for name in _PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):  # .mf4 needs the formats extra (part of the test extra)
        importlib.import_module("asammdf")


class _Finished(SystemExit):
    """Raised by the ``papermill`` stub: the parameters were accepted, a notebook would run now."""


def _hang(argv: object) -> int:
    while True:
        time.sleep(1)


def _traceback(argv: object) -> int:
    raise ValueError("an exception nobody caught")


def _allocate(argv: object) -> int:
    return len(bytearray(4 * 2**30))


def _escape(argv: object) -> int:
    print("modbatt x: error: \x1b]0;owned\x07", file=sys.stderr)
    return 2


def _two_lines(argv: object) -> int:
    print("modbatt x: error: one\nand two", file=sys.stderr)
    return 1


_SELFTESTS = {
    "selftest-hang": _hang,
    "selftest-traceback": _traceback,
    "selftest-allocate": _allocate,
    "selftest-escape": _escape,
    "selftest-two-lines": _two_lines,
}


def _apply_stubs(names: list[str]) -> None:
    for name in names:
        if name == "papermill":
            import papermill

            def execute_notebook(*args: object, **kwargs: object) -> None:
                raise _Finished(0)

            papermill.execute_notebook = execute_notebook
        elif name == "http-server":
            from modbatt.transport.http import ServerThread

            def start(self: object, app: object) -> None:
                raise _Finished(0)

            ServerThread.start = start  # type: ignore[method-assign]
        elif name.startswith("selftest-"):  # the harness's own tests: a command that misbehaves
            import modbatt.cli

            modbatt.cli.main = _SELFTESTS[name]  # type: ignore[assignment]
        else:
            raise ValueError(f"unknown stub {name!r}")


def _child(request: dict, base_vm: int) -> None:
    """Runs in the forked child; never returns."""
    code = 70
    try:
        os.setpgid(0, 0)
        out_dir = request["out_dir"]
        stdin = os.open(os.devnull, os.O_RDONLY)
        stdout = os.open(os.path.join(out_dir, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        stderr = os.open(os.path.join(out_dir, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(stdin, 0)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        for fd in (stdin, stdout, stderr):
            os.close(fd)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict")
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
        )
        budget = base_vm + request["budget_mib"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        for key, value in request.get("env", {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.chdir(request["cwd"])
        _apply_stubs(request.get("stubs", []))
        from modbatt.cli import main

        try:
            code = main(request["argv"])
        except SystemExit as exc:  # as `sys.exit(main())` would: argparse's 2, a stub's 0
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:
            # What the interpreter does with an exception escaping `python -m modbatt.cli`.
            with open(os.path.join(out_dir, "crash"), "w") as fh:
                fh.write(type(exc).__name__)
            traceback.print_exc()
            code = 1
        # What the interpreter does on the way out, which os._exit() below would skip: wait for
        # non-daemon threads, run atexit handlers, collect garbage (a half-built object whose
        # __del__ raises prints "Exception ignored in ..." with a traceback).
        try:
            threading._shutdown()  # type: ignore[attr-defined]
            atexit._run_exitfuncs()
            gc.collect()
        except BaseException as exc:
            with open(os.path.join(out_dir, "crash"), "w") as fh:
                fh.write(f"shutdown: {type(exc).__name__}")
            traceback.print_exc()
            code = 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException as exc:  # e.g. a lone surrogate the strict UTF-8 stdout refuses
                with open(os.path.join(out_dir, "crash"), "w") as fh:
                    fh.write(f"flush: {type(exc).__name__}")
                code = 1
        with open(os.path.join(out_dir, "peak"), "w") as fh:
            fh.write(str(_vm("VmPeak") - base_vm))
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code if 0 <= code < 256 else 1)


def _serve() -> None:
    _preload()
    base_vm = _vm("VmSize")
    print(json.dumps({"ready": True, "base_vm_mib": base_vm / 2**20}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(request, base_vm)
        deadline = started + request["timeout"]
        timed_out = False
        status = None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        # Whatever the command left running (a process pool's workers) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        assert status is not None
        code = os.waitstatus_to_exitcode(status)
        print(
            json.dumps({"exit": code, "timeout": timed_out, "seconds": time.monotonic() - started}),
            flush=True,
        )


if __name__ == "__main__":
    _serve()
