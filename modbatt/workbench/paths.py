"""Where the workbench finds notebooks and puts what it makes.

Defaults are the repository's own folders (docs/workbench.md): executed notebooks and the report in
``build/``, figures in ``figures/``, results in ``data/results/``. ``--output DIR`` puts all of
it under ``DIR``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

__all__ = ["OutputLayout", "find_notebooks_dir", "repo_root"]


def repo_root() -> Path:
    """The checkout this package runs from (editable install), else the current directory."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "notebooks").is_dir() else Path.cwd()


def find_notebooks_dir(explicit: Path | None = None) -> Path:
    candidate = explicit or repo_root() / "notebooks"
    if not candidate.is_dir():
        raise ConfigError(f"no notebooks folder at {candidate} (pass --notebooks DIR)")
    return candidate


@dataclass(frozen=True)
class OutputLayout:
    """Folders a run writes to."""

    build: Path
    figures: Path
    results: Path

    @classmethod
    def default(cls, root: Path | None = None) -> OutputLayout:
        root = root or repo_root()
        return cls(root / "build", root / "figures", root / "data" / "results")

    @classmethod
    def under(cls, output: Path) -> OutputLayout:
        return cls(output / "build", output / "figures", output / "results")

    def create(self) -> None:
        for d in (self.build, self.figures, self.results):
            d.mkdir(parents=True, exist_ok=True)
