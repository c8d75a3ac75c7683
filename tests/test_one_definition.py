"""Each limit and file-writing rule has one definition; these scans fail when a copy creeps back.

The CAN identifier limits live in ``modbatt.can.ids`` (the node range in
``modbatt.model.access``), and atomic file replacement in ``modbatt.files``.
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

import modbatt

PACKAGE = Path(modbatt.__file__).parent
# Known-answer vectors spell out literal identifiers on purpose: they are the data, not a rule.
_EXEMPT_DIRS = ("workbench/vectors",)


def _sources(*owners: str) -> list[tuple[str, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in owners or rel.startswith(_EXEMPT_DIRS):
            continue
        out.append((rel, _code_only(path.read_text(encoding="utf-8"))))
    return out


def _code_only(source: str) -> str:
    """``source`` without comments and string literals (docstrings may name the values)."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return " ".join(t.string for t in tokens if t.type not in (tokenize.COMMENT, tokenize.STRING))


@pytest.mark.parametrize(
    ("what", "pattern", "owners"),
    [
        ("CAN ID limits", r"0x1FFF_?FFFF|0x7FF\b|\(\s*1\s*<<\s*29\s*\)\s*-\s*1", ("can/ids.py",)),
        ("the module node range", r"<=\s*0x1F\b|<=\s*31\b|range\s*\(\s*1\s*,\s*(32|0x20)\s*\)", ("model/access.py",)),
        ("atomic file replacement", r"os\s*\.\s*replace\s*\(|mkstemp|NamedTemporaryFile", ("files.py",)),
    ],
)
def test_defined_once(what: str, pattern: str, owners: tuple[str, ...]) -> None:
    rx = re.compile(pattern)
    copies = [rel for rel, code in _sources(*owners) if rx.search(code)]
    assert copies == [], f"{what} written outside {owners}: {copies}"
