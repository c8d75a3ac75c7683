"""Saving what notebooks and sweeps produce: JSON results and figures (PNG + SVG), reproducibly.

Notebooks call these with the folders the runner injects as parameters, so a notebook holds no
file-handling logic of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .. import files

__all__ = ["OUTPUT_ENV", "output_dir", "save_figure", "save_results", "write_atomic"]

#: Where figures and results go when a notebook runs outside ``modbatt run`` with no folder
#: given: ``$MODBATT_OUTPUT_DIR/{figures,results}`` (the test suite points it at a temporary
#: folder), else the repository's ``figures/`` and ``data/results/``.
OUTPUT_ENV = "MODBATT_OUTPUT_DIR"


def output_dir(kind: str, explicit: str | os.PathLike[str] | None) -> Path:
    """The folder for ``kind`` (``"figures"`` or ``"results"``): ``explicit``, else the default above."""
    if explicit is not None:
        return Path(explicit)
    base = os.environ.get(OUTPUT_ENV)
    if base:
        return Path(base) / kind
    from .paths import OutputLayout

    layout = OutputLayout.default()
    return layout.figures if kind == "figures" else layout.results


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename (no half-written outputs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomic(path, data, mode=0o600)


def save_results(name: str, data: Any, results_dir: str | os.PathLike[str] | None = None) -> Path:
    """``results_dir/NAME.json`` with sorted keys (stable diffs between runs)."""
    path = output_dir("results", results_dir) / f"{name}.json"
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
    return path


def save_figure(
    fig: Any, name: str, figures_dir: str | os.PathLike[str] | None = None, *, caption: str | None = None
) -> list[Path]:
    """Save a matplotlib figure as ``NAME.png`` and ``NAME.svg``, byte-identical between runs.

    No timestamps or software versions go into the files, and SVG element ids come from a fixed
    salt. ``caption`` (what the figure shows, one or two sentences) is stored in both files
    (PNG ``Description`` text chunk, SVG ``dc:description``); the report prints it under the figure.
    """
    import matplotlib

    out = []
    png_meta: dict[str, Any] = {"Software": None}
    svg_meta: dict[str, Any] = {"Date": None, "Creator": None}
    if caption:
        png_meta["Description"] = caption
        svg_meta["Description"] = caption
    with matplotlib.rc_context({"svg.hashsalt": "modbatt", "svg.fonttype": "none"}):
        for ext, meta in (("png", png_meta), ("svg", svg_meta)):
            path = output_dir("figures", figures_dir) / f"{name}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, format=ext, metadata=meta, bbox_inches="tight", dpi=110)
            out.append(path)
    return out
