"""Which process holds a claim, and whether that process is provably gone.

A claim (docs/controller.md, "claims") records its owner: host name, process id and the process's
start time (field 22 of ``/proc/PID/stat``, proc(5), in clock ticks since boot), so a recycled
process id is not mistaken for the owner. An owner is *provably dead* only on the same host: no
process with that id, or one that started at another time. On another host, or where ``/proc``
is missing and the id is in use, nothing is proved and the claim's lease applies.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

__all__ = ["owner_is_dead", "this_process"]


def _started(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def this_process() -> dict[str, Any]:
    """The calling process as a claim's owner."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _started(pid)}


def owner_is_dead(owner: Mapping[str, Any] | None) -> bool:
    """Whether ``owner`` (from :func:`this_process`) has provably exited."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = _started(pid)
    return started is not None and owner.get("started") is not None and started != owner["started"]
