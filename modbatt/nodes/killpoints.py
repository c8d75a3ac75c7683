"""Kill points: a process SIGKILLs itself at a named step, for crash-and-restart tests.

``MODBATT_KILL_AT=NAME`` (or ``NAME#N``: at the N-th time the step is reached, 1-based) makes
:func:`kill_point` send SIGKILL to its own process when it reaches that step: nothing after it
runs, no handler, no ``finally``, no flush, as when a device loses power or an operator kills
it. ``MODBATT_KILL_TRACE=FILE`` appends the name of every step reached to FILE (one per line,
written and closed before the step goes on), so a test first lists the steps of a run, then
kills a run at each one. Without either variable a kill point costs one dictionary lookup.
Steps and what a restart must find are listed in docs/delivery.md §5.
"""

from __future__ import annotations

import collections
import os
import signal

__all__ = ["KILL_AT_ENV", "KILL_TRACE_ENV", "kill_point"]

KILL_AT_ENV = "MODBATT_KILL_AT"
KILL_TRACE_ENV = "MODBATT_KILL_TRACE"
_reached: collections.Counter[str] = collections.Counter()


def kill_point(name: str) -> None:
    """Reached step ``name``: record it if tracing, and die here if this is the step to kill at."""
    trace = os.environ.get(KILL_TRACE_ENV)
    target = os.environ.get(KILL_AT_ENV)
    if not trace and not target:
        return
    _reached[name] += 1
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(f"{name}\n")
    if target:
        step, _, nth = target.partition("#")
        if step == name and _reached[name] == (int(nth) if nth else 1):
            os.kill(os.getpid(), signal.SIGKILL)
