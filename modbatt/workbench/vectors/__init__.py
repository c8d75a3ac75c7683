"""Known-answer test vectors of the Modbatt protocol (docs/vectors.md).

``export(directory)`` writes one JSON file per protocol part plus the JSON Schema they follow;
``check(directory)`` runs the package against every case of a directory of vectors. Both are
deterministic: exporting twice gives byte-identical files, so any change to a wire format, a
label or a derivation shows up as a diff of the committed ``vectors/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...files import write_atomic
from . import certificates, ecies, frames, ids, keyschedule, ledger, validation
from ._format import SCHEMA_NAME, VectorFile, dumps, reproducible
from .trace import Record, record_scenario

__all__ = ["FILES", "check", "check_file", "export", "render", "schema_bytes"]

#: File name → (generator, case checker). A generator takes the recorded run.
FILES: dict[str, tuple[Callable[[Record], VectorFile], Callable[[dict[str, Any], dict[str, Any]], None]]] = {
    "key_schedule.json": (keyschedule.generate, keyschedule.check_case),
    "ecies.json": (lambda rec: ecies.generate(), ecies.check_case),
    "signatures_certificates.json": (certificates.generate, certificates.check_case),
    "can_frames.json": (lambda rec: frames.generate(), frames.check_case),
    "can_ids.json": (lambda rec: ids.generate(), ids.check_case),
    "freshness.json": (lambda rec: ids.generate_freshness(), ids.check_case),
    "ledger.json": (ledger.generate, ledger.check_case),
    "validation_messages.json": (validation.generate, validation.check_case),
}


def schema_bytes() -> bytes:
    """The JSON Schema every vector file validates against (shipped with the package)."""
    return resources.files("modbatt").joinpath("data", SCHEMA_NAME).read_bytes()


def render() -> dict[str, bytes]:
    """Every vector file's bytes by name (and the schema), from one recorded run.

    Each file is checked against the package before it is returned: a case whose stated result
    the package does not give is a generator bug or a broken promise, never a vector.
    """
    with reproducible():
        rec = record_scenario()
        out = {}
        for name, (gen, _) in FILES.items():
            data = gen(rec).to_json()
            check_file(name, data)
            out[name] = dumps(data)
    out[SCHEMA_NAME] = schema_bytes()
    return out


def export(directory: Path) -> list[Path]:
    """Write every file into ``directory`` (created if missing); each file replaced atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} exists and is not a directory")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in render().items():
        path = directory / name
        write_atomic(path, data)
        written.append(path)
    return written


def check(directory: Path) -> dict[str, int]:
    """Run the package on every case in ``directory``; returns cases checked per file.

    Raises ``AssertionError`` naming the file and tcId of the first disagreement, and
    :class:`~modbatt.errors.ConfigError` for a missing file.
    """
    counts = {}
    with reproducible():
        for name in FILES:
            path = Path(directory) / name
            if not path.is_file():
                raise ConfigError(f"{path} is missing (run `modbatt vectors export {directory}`)")
            counts[name] = check_file(name, json.loads(path.read_bytes()))
    return counts


def check_file(name: str, data: dict[str, Any]) -> int:
    """Run the package on every case of one parsed file; returns the number of cases."""
    check_case = FILES[name][1]
    n = 0
    for group in data["testGroups"]:
        for case in group["tests"]:
            try:
                check_case(group, case)
            except AssertionError as exc:
                raise AssertionError(f"{name} tcId {case['tcId']}: {exc}") from None
            n += 1
    if name == "ledger.json":
        ledger.check_roots(data)
    return n
