"""Benchmarks behind ``modbatt bench`` (and the scripts in ``benchmarks/``).

Each area module defines ``NAME``, a one-line ``DESCRIPTION`` and
``run(quick: bool) -> list[dict]`` returning JSON-ready rows. Timing lives here, never in
tests' assertions.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from types import ModuleType

# Area modules, by the name `modbatt bench NAME` uses.
AREAS = ("crypto", "binding", "ledger", "pairing", "codec", "validation")


def load_area(name: str) -> ModuleType | None:
    """The area module, or None when that area is not built."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None
        raise


def time_per_call(fn: Callable[[], object], *, min_seconds: float = 0.2, repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` over ``repeats`` runs of at least ``min_seconds``."""
    fn()  # warm-up
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds / repeats or n >= 1 << 20:
            break
        n *= 2
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    samples.sort()
    return samples[len(samples) // 2]
