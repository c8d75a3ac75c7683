"""Notebook parameters: what each notebook takes, and checking what a user passes before anything runs.

The convention (docs/workbench.md, "Parameters"): a notebook's first code cell is tagged
``parameters`` and declares every setting as an annotated assignment with a trailing comment::

    module_count: int = 31  # modules in the pack (1-31)
    bus_channel: Optional[str] = None  # python-can channel; None: a private virtual bus

papermill's own :func:`papermill.inspect_notebook` reads the name, type, default and description
from that cell, so the notebook is the single definition. :func:`check_parameters` turns the
``-p KEY=VALUE`` / ``-p NAME.KEY=VALUE`` items of ``modbatt run`` into per-notebook values and
refuses, with one line, a key no notebook declares or a value of the wrong type.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..model.profile import ProtocolProfile

__all__ = ["CHOICES", "ParamSpec", "check_parameters", "notebook_parameters", "parse_value"]


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter: ``type_name`` as written (``int``, ``Optional[str]``, ``None`` if unannotated)."""

    name: str
    type_name: str
    default: str
    help: str


def notebook_parameters(path: Path) -> dict[str, ParamSpec]:
    """The parameters ``path`` declares in its ``parameters`` cell (papermill's reading of it)."""
    import papermill

    try:
        with _quiet(_NOTEBOOK_LOGGERS):
            found = papermill.inspect_notebook(str(path))
    except Exception as exc:  # an unreadable notebook is reported, not raised as a traceback
        first = str(exc).strip().splitlines()
        why = first[0][:200] if first else type(exc).__name__
        raise ConfigError(f"cannot read the parameters of {path.name}: {why}") from None
    return {
        name: ParamSpec(
            name, str(p.get("inferred_type_name") or "None"), str(p.get("default")), str(p.get("help") or "")
        )
        for name, p in found.items()
    }


#: nbformat validates a notebook as it reads it and logs each problem, over many lines, through
#: traitlets' logger; the reading either works or fails with one ConfigError, so those stay quiet.
_NOTEBOOK_LOGGERS = ("traitlets", "nbformat", "papermill")


@contextlib.contextmanager
def _quiet(names: Sequence[str]) -> Iterator[None]:
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.disabled))
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in saved:
            logger.disabled = disabled


def parse_value(text: str) -> Any:
    """A ``-p`` value: JSON when it parses (``3``, ``true``, ``null``, ``[1, 2]``), else the text itself.

    Text that JSON refuses for its size rather than its syntax (an integer past Python's
    4 300-digit limit, nesting past the recursion limit) stays text too, so the type check names it.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return text


#: Parameters whose value must be one of a fixed set, whichever notebook declares them: a wrong
#: value is refused before anything runs, like a wrong type (papermill reads no ``Literal``).
CHOICES: dict[str, tuple[str, ...]] = {"profile": tuple(p.value for p in ProtocolProfile)}

_OPTIONAL = re.compile(r"^(?:Optional\[(?P<inner>.+)\]|(?P<union>.+?)\s*\|\s*None)$")
_CHECKS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "list": (list,),
    "dict": (dict,),
}


def _coerce(spec: ParamSpec, raw: str, where: str) -> Any:
    """The value of ``raw`` for ``spec``, or ConfigError naming the expected type."""
    type_name = spec.type_name.replace("typing.", "")
    optional = _OPTIONAL.match(type_name)
    if optional:
        type_name = (optional.group("inner") or optional.group("union")).strip()
        if raw in ("null", "None"):
            return None
    if type_name in ("None", "Any", ""):
        return parse_value(raw)  # unannotated: papermill's own rule
    if type_name == "str":
        choices = CHOICES.get(spec.name)
        if choices is not None and raw not in choices:
            raise ConfigError(f"{where}={raw!r}: {spec.name} is one of {', '.join(choices)} ({spec.help})")
        return raw  # a string that looks like a number stays a string
    value = parse_value(raw)
    accepted = _CHECKS.get(type_name.split("[")[0])
    if accepted is None:
        return value
    # bool is an int in Python; a switch is not a count.
    ok = isinstance(value, accepted) and not (isinstance(value, bool) and bool not in accepted)
    if not ok:
        raise ConfigError(f"{where}={raw!r}: {spec.name} takes {spec.type_name} ({spec.help})")
    return float(value) if type_name == "float" else value


def _match(notebooks: Sequence[Path], name: str) -> Path:
    hits = [nb for nb in notebooks if nb.stem == name or nb.stem.startswith(f"{name}-") or name in nb.stem]
    exact = [nb for nb in hits if nb.stem == name]
    if exact:
        return exact[0]
    if len(hits) != 1:
        names = ", ".join(nb.stem for nb in notebooks)
        what = "no notebook" if not hits else f"{len(hits)} notebooks"
        raise ConfigError(f"-p {name}.KEY: {what} match {name!r}; notebooks: {names}")
    return hits[0]


def check_parameters(
    notebooks: Sequence[Path], items: Mapping[str, str], specs: Mapping[str, Mapping[str, ParamSpec]] | None = None
) -> dict[str, dict[str, Any]]:
    """Per-notebook values for ``items`` (``KEY`` for every notebook that declares it, ``NAME.KEY`` for one).

    Raises :class:`ConfigError` (one line) for a key no selected notebook declares, a ``NAME``
    that matches no notebook, or a value that does not fit the declared type. Nothing runs before.
    """
    declared = {nb.stem: dict(specs[nb.stem]) if specs else notebook_parameters(nb) for nb in notebooks}
    out: dict[str, dict[str, Any]] = {nb.stem: {} for nb in notebooks}
    # KEY first, NAME.KEY after: the narrower choice wins for its notebook.
    for key, raw in sorted(items.items(), key=lambda kv: "." in kv[0]):
        target, dot, name = key.rpartition(".")
        if dot:
            nb = _match(notebooks, target)
            spec = declared[nb.stem].get(name)
            if spec is None:
                valid = ", ".join(sorted(declared[nb.stem]))
                raise ConfigError(f"unknown parameter {key!r}: {nb.stem} takes {valid}")
            out[nb.stem][name] = _coerce(spec, raw, f"-p {key}")
            continue
        takers = [nb for nb in notebooks if key in declared[nb.stem]]
        if not takers:
            valid = sorted({n for d in declared.values() for n in d})
            raise ConfigError(f"unknown parameter {key!r}; the notebooks take: {', '.join(valid)}")
        for nb in takers:
            out[nb.stem][key] = _coerce(declared[nb.stem][key], raw, f"-p {key}")
    return out
