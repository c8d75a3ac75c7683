"""Known-answer test vectors of the Modbatt protocol (docs/vectors.md).

``export(directory)`` writes one JSON file per protocol part plus the JSON Schema they follow;
``check(directory)`` runs the package against every case of a directory of vectors. Both are
deterministic: exporting twice gives byte-identical files, so any change to a wire format, a
label or a derivation shows up as a diff of the committed ``vectors/``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from ...encoding import strict_json_loads
from ...errors import ConfigError, EncodingError
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


#: The largest vector file accepted (the committed ones are at most a few hundred KiB).
MAX_VECTOR_FILE_BYTES = 8 * 1024 * 1024


def check(directory: Path) -> dict[str, int]:
    """Run the package on every case in ``directory``; returns cases checked per file.

    Raises ``AssertionError`` naming the file and tcId of the first disagreement, and
    :class:`~modbatt.errors.ConfigError` for a missing file or one that is not a vector file
    (not JSON, not the schema's shape, a case whose fields cannot be used).
    """
    counts = {}
    with reproducible():
        for name in FILES:
            path = Path(directory) / name
            if not path.is_file():
                raise ConfigError(f"{path} is missing (run `modbatt vectors export {directory}`)")
            with path.open("rb") as fh:
                raw = fh.read(MAX_VECTOR_FILE_BYTES + 1)
            if len(raw) > MAX_VECTOR_FILE_BYTES:
                raise ConfigError(f"{path} is larger than {MAX_VECTOR_FILE_BYTES} bytes, not a vector file")
            try:
                data = strict_json_loads(raw)
            except EncodingError as exc:
                raise ConfigError(f"{path} is not a vector file: {exc}") from None
            counts[name] = check_file(name, data)
    return counts


def _cases(name: str, data: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(group, case)`` pairs of a parsed file, or ConfigError when it does not have the schema's shape."""
    groups = data.get("testGroups") if isinstance(data, dict) else None
    shaped = isinstance(groups, list) and all(isinstance(g, dict) and isinstance(g.get("tests"), list) for g in groups)
    if not shaped:
        raise ConfigError(f"{name} is not a vector file: no list of testGroups, each with a list of tests")
    pairs = [(g, c) for g in groups for c in g["tests"]]
    if not all(isinstance(c, dict) and isinstance(c.get("tcId"), int) for _, c in pairs):
        raise ConfigError(f"{name} is not a vector file: a test without an integer tcId")
    return pairs


def check_file(name: str, data: dict[str, Any]) -> int:
    """Run the package on every case of one parsed file; returns the number of cases."""
    check_case = FILES[name][1]
    n = 0
    for group, case in _cases(name, data):
        try:
            check_case(group, case)
        except AssertionError as exc:
            raise AssertionError(f"{name} tcId {case['tcId']}: {exc}") from None
        except Exception as exc:  # a field the checker cannot use: the file is malformed, not the package wrong
            detail = str(exc).strip().splitlines()
            why = f"{type(exc).__name__}: {detail[0][:160]}" if detail else type(exc).__name__
            raise ConfigError(f"{name} tcId {case['tcId']} is not a usable case ({why})") from None
        n += 1
    if name == "ledger.json":
        try:
            ledger.check_roots(data)
        except AssertionError:
            raise
        except Exception as exc:
            raise ConfigError(f"{name} is not a usable vector file ({type(exc).__name__})") from None
    return n
