"""The vector file format (docs/vectors.md): Wycheproof-style test groups and cases, written
byte-identically on every run.

A file is one JSON object: ``algorithm``, ``schema``, ``specVersion``, ``generator``,
``numberOfTests``, ``header`` (lines of prose), ``notes`` (flag → description) and ``testGroups``.
A group has a ``type`` (which checker applies), its shared inputs, and ``tests``; a case has
``tcId`` (1, 2, … across the file), ``comment``, ``flags``, ``result`` (``valid``, ``invalid`` or
``acceptable``) and, when invalid, ``reason`` (a :class:`~modbatt.errors.Reason` value).
Byte strings are lower-case hex; integers are JSON numbers below 2**53.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..._version import __version__
from ...crypto.labels import SPEC_VERSION
from ...crypto.rng import REPRODUCIBLE_ENV, SeededRandom
from ...crypto.suite import PrivateKey
from ...errors import Reason

__all__ = [
    "SCHEMA_NAME",
    "Group",
    "VectorFile",
    "dumps",
    "fixed_key",
    "h",
    "reproducible",
]

SCHEMA_NAME = "modbatt-vectors.schema.json"
RESULTS = ("valid", "invalid", "acceptable")


def h(data: bytes) -> str:
    """Lower-case hex, the vectors' form of every byte string."""
    return bytes(data).hex()


def fixed_key(name: str) -> PrivateKey:
    """A named key that is the same on every run (seeded from ``modbatt-vectors/<name>``)."""
    return PrivateKey.generate(SeededRandom(f"modbatt-vectors/{name}"))


@contextlib.contextmanager
def reproducible() -> Iterator[None]:
    """Seeded randomness for the duration of a vector export, as ``modbatt run`` does for its
    kernels; every key made under it is marked reproducible, so no production store accepts it."""
    before = os.environ.get(REPRODUCIBLE_ENV)
    os.environ[REPRODUCIBLE_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(REPRODUCIBLE_ENV, None)
        else:
            os.environ[REPRODUCIBLE_ENV] = before


@dataclass
class Group:
    """One test group: a checker ``type``, shared inputs, and its cases."""

    type: str
    inputs: dict[str, Any]
    tests: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        comment: str,
        result: str = "valid",
        *,
        reason: Reason | None = None,
        flags: tuple[str, ...] = (),
        **values: Any,
    ) -> None:
        """Append a case; an invalid case must name its reason, a valid one must not."""
        if result not in RESULTS:
            raise ValueError(f"result must be one of {RESULTS}")
        if (result == "invalid") != (reason is not None):
            raise ValueError("an invalid case, and only an invalid case, names its reason")
        case: dict[str, Any] = {"tcId": 0, "comment": comment, "flags": list(flags), **values, "result": result}
        if reason is not None:
            case["reason"] = Reason(reason).value
        self.tests.append(case)


@dataclass
class VectorFile:
    """One JSON file of vectors for an ``algorithm`` (a protocol part, not a primitive)."""

    algorithm: str
    header: list[str]
    notes: dict[str, str]
    groups: list[Group] = field(default_factory=list)

    def group(self, type_: str, **inputs: Any) -> Group:
        g = Group(type_, inputs)
        self.groups.append(g)
        return g

    def to_json(self) -> dict[str, Any]:
        tc = 0
        groups = []
        used_flags: set[str] = set()
        for g in self.groups:
            tests = []
            for case in g.tests:
                tc += 1
                tests.append({**case, "tcId": tc})
                used_flags.update(case["flags"])
            groups.append({"type": g.type, **g.inputs, "tests": tests})
        unknown = used_flags - set(self.notes)
        if unknown:
            raise ValueError(f"{self.algorithm}: flags without a note: {sorted(unknown)}")
        return {
            "algorithm": self.algorithm,
            "schema": SCHEMA_NAME,
            "specVersion": SPEC_VERSION,
            "generator": f"modbatt {__version__}",
            "numberOfTests": tc,
            "header": self.header,
            "notes": dict(sorted(self.notes.items())),
            "testGroups": groups,
        }


def dumps(value: Mapping[str, Any]) -> bytes:
    """The one serialisation: two-space indent, keys in insertion order, ASCII, final newline."""
    return (json.dumps(value, indent=2, ensure_ascii=True) + "\n").encode("ascii")
