"""The HTML report of ``modbatt run``: one file that stands alone.

Figures are embedded as ``data:`` URIs, so the page shows them wherever it is copied. Each figure
carries its caption (written into the PNG by :func:`~modbatt.workbench.results.save_figure`). The
page records its provenance: when it was made, the package version, the git commit of the
checkout (and whether it had local changes), each notebook's parameters, the bus, and whether the
run was reproducible. A small script marks each image as loaded, so a browser, or a headless one
in a test, can tell that every figure shows.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import write_atomic

__all__ = ["Provenance", "figure_caption", "git_state", "package_version", "write_report"]


def package_version() -> str:
    """The installed modbatt version ("unknown" outside an install)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("modbatt")
    except PackageNotFoundError:
        return "unknown"


def git_state(root: Path) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout at ``root``; None outside git or without git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def figure_caption(png: Path) -> str | None:
    """The caption stored in a PNG's ``Description`` text chunk, if any."""
    from PIL import Image

    try:
        with Image.open(png) as img:
            text = img.text.get("Description") if hasattr(img, "text") else None  # type: ignore[attr-defined]
    except OSError:
        return None
    return str(text) if text else None


@dataclass
class Provenance:
    """Where a run came from."""

    reproducible: bool
    parameters: Mapping[str, Mapping[str, Any]]  # notebook -> the values it ran with
    bus: str
    root: Path
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    version: str = field(default_factory=package_version)
    git: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.git is None:
            self.git = git_state(self.root)

    def to_json(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "modbatt_version": self.version,
            "git": self.git,
            "reproducible": self.reproducible,
            "bus": self.bus,
            "parameters": {k: dict(v) for k, v in self.parameters.items()},
        }


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{max-width:100%} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
figure{margin:2em 0} figcaption{font-size:0.95em;color:#333} code{font-size:0.9em}
.failed{color:#b00020}"""

# Marks every image once the page has loaded: data-loaded="1" when it decoded, "0" when it did not.
_SCRIPT = """window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img'), ok = 0;
  imgs.forEach(function (img) {
    var loaded = img.complete && img.naturalWidth > 0;
    img.setAttribute('data-loaded', loaded ? '1' : '0');
    if (loaded) { ok++; }
  });
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def write_report(
    path: Path,
    *,
    runs: Sequence[Any],
    figures: Sequence[Path],
    results: Sequence[Path],
    provenance: Provenance,
    summary: Mapping[str, Any],
) -> Path:
    """Write the self-contained report to ``path`` (atomically) and return it."""
    esc = html.escape
    rows = []
    for r in runs:
        status = "ok" if r.ok else f"<span class='failed'>FAILED: {esc(r.error or '')}</span>"
        params = provenance.parameters.get(r.name, {})
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items()))
        rows.append(
            f"<tr><td>{esc(r.name)}</td><td>{status}</td><td>{r.seconds:.1f} s</td>"
            f"<td><code>{esc(shown)}</code></td><td><code>{esc(str(r.html or r.executed))}</code></td></tr>"
        )
    blocks = []
    for png in figures:
        caption = figure_caption(png)
        text = esc(caption) if caption else "<em>(no caption recorded)</em>"
        blocks.append(
            f"<figure id='{esc(png.stem)}'><img src='{_data_uri(png)}' alt='{esc(caption or png.stem)}'>"
            f"<figcaption><strong>{esc(png.stem)}</strong>: {text}</figcaption></figure>"
        )
    git = provenance.git
    commit = (
        "not a git checkout" if git is None else f"{git['commit']}" + (" (with local changes)" if git["dirty"] else "")
    )
    mode = (
        "reproducible (seeded keys and identifiers, fixed clock: outputs identical between runs)"
        if provenance.reproducible
        else "not reproducible (fresh keys and wall-clock time)"
    )
    ok = sum(r.ok for r in runs)
    embedded = json.dumps(dict(summary) | {"provenance": provenance.to_json()})
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>modbatt workbench report</title>
<style>{_STYLE}</style>
<script>{_SCRIPT}</script>
</head><body>
<h1>modbatt workbench report</h1>
<p>{ok} of {len(runs)} notebooks ran. Figures are embedded in this page, so it can be copied on its own.</p>
<h2>Provenance</h2>
<table>
<tr><th>created</th><td>{esc(provenance.created)}</td></tr>
<tr><th>modbatt version</th><td>{esc(provenance.version)}</td></tr>
<tr><th>git commit</th><td><code>{esc(commit)}</code></td></tr>
<tr><th>mode</th><td>{esc(mode)}</td></tr>
<tr><th>bus</th><td><code>{esc(provenance.bus)}</code></td></tr>
</table>
<h2>Notebooks</h2>
<table><tr><th>notebook</th><th>status</th><th>time</th><th>parameters</th><th>executed copy</th></tr>
{"".join(rows)}</table>
<h2>Figures</h2>
{"".join(blocks) or "<p>No figures.</p>"}
<h2>Results</h2><ul>{"".join(f"<li><code>{esc(p.name)}</code></li>" for p in results)}</ul>
<script type="application/json" id="run">{esc(embedded)}</script>
</body></html>
"""
    write_atomic(path, page.encode("utf-8"))
    return path
