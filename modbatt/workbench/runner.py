"""``modbatt run``: execute every notebook headlessly with papermill and build the report.

Each notebook gets the same injected parameters: where to write figures and results, whether to
run in reproducible mode, and the python-can bus to use. Executed copies land in ``build/``
(``.ipynb`` and an HTML rendering), and ``build/report.html`` links them and shows every figure.
A notebook that fails is reported with its error and the run carries on; the exit status says
whether all succeeded.
"""

from __future__ import annotations

import html
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crypto.rng import REPRODUCIBLE_ENV
from ..errors import ConfigError
from .paths import OutputLayout, find_notebooks_dir
from .results import write_atomic

__all__ = ["NotebookRun", "RunReport", "list_notebooks", "run_notebooks"]

#: Seconds one notebook may take before papermill stops it.
NOTEBOOK_TIMEOUT_S = 600


def _ipc_kernel_manager() -> type:
    """A kernel manager whose kernels talk over IPC sockets, not TCP on loopback.

    Other local users cannot reach an IPC socket in a private directory, and ipykernel stops
    warning, once per notebook, that its TCP traffic is unencrypted.
    """
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IpcKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc")

    return IpcKernelManager


@dataclass
class NotebookRun:
    name: str
    ok: bool
    seconds: float
    executed: Path
    html: Path | None
    error: str | None = None


@dataclass
class RunReport:
    layout: OutputLayout
    runs: list[NotebookRun] = field(default_factory=list)
    report: Path | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    def figures(self) -> list[Path]:
        return sorted(self.layout.figures.glob("*.png"))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "report": str(self.report) if self.report else None,
            "notebooks": [
                {
                    "name": r.name,
                    "ok": r.ok,
                    "seconds": round(r.seconds, 2),
                    "executed": str(r.executed),
                    "error": r.error,
                }
                for r in self.runs
            ],
            "figures": [str(p) for p in self.figures()],
            "results": sorted(str(p) for p in self.layout.results.glob("*.json")),
        }


def list_notebooks(notebooks_dir: Path | None = None) -> list[Path]:
    """The workbench notebooks in run order (file names sort by their numeric prefix)."""
    return sorted(find_notebooks_dir(notebooks_dir).glob("[0-9][0-9]-*.ipynb"))


def _to_html(executed: Path) -> Path | None:
    try:
        import nbformat
        from nbconvert import HTMLExporter
    except ImportError:  # the report then links the .ipynb only
        return None
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    out = executed.with_suffix(".html")
    write_atomic(out, body.encode("utf-8"))
    return out


def run_notebooks(
    *,
    output: Path | None = None,
    notebooks_dir: Path | None = None,
    only: Sequence[str] = (),
    parameters: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
    reproducible: bool = True,
) -> RunReport:
    """Run the notebooks (all, or those whose name contains one of ``only``) and write the report."""
    import papermill

    layout = OutputLayout.under(output) if output is not None else OutputLayout.default()
    layout.create()
    notebooks = [nb for nb in list_notebooks(notebooks_dir) if not only or any(o in nb.stem for o in only)]
    if not notebooks:
        raise ConfigError("no notebook matches" + (f" {', '.join(only)}" if only else ""))
    injected = {
        "figures_dir": str(layout.figures),
        "results_dir": str(layout.results),
        "reproducible": reproducible,
        **dict(parameters or {}),
    }
    report = RunReport(layout)
    kernel_manager = _ipc_kernel_manager()
    env_before = os.environ.get(REPRODUCIBLE_ENV)
    if reproducible:
        os.environ[REPRODUCIBLE_ENV] = "1"  # the kernels inherit it: seeded keys, stable outputs
    try:
        for i, nb in enumerate(notebooks, 1):
            executed = layout.build / "notebooks" / nb.name
            executed.parent.mkdir(parents=True, exist_ok=True)
            if progress:
                progress(f"[{i}/{len(notebooks)}] {nb.stem} ...")
            t0 = time.perf_counter()
            error = None
            try:
                papermill.execute_notebook(
                    str(nb), str(executed), parameters=injected, kernel_name="python3", progress_bar=False,
                    cwd=str(nb.parent), execution_timeout=NOTEBOOK_TIMEOUT_S, log_output=False,
                    kernel_manager_class=kernel_manager,
                )  # fmt: skip
            except Exception as exc:  # a failing notebook is reported, the run goes on
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            seconds = time.perf_counter() - t0
            rendered = _to_html(executed) if executed.exists() else None
            report.runs.append(NotebookRun(nb.stem, error is None, seconds, executed, rendered, error))
            if progress:
                progress(
                    f"      {'ok' if error is None else 'FAILED'} in {seconds:.1f} s" + (f": {error}" if error else "")
                )
    finally:
        if env_before is None:
            os.environ.pop(REPRODUCIBLE_ENV, None)
        else:
            os.environ[REPRODUCIBLE_ENV] = env_before
    report.report = _write_report(report)
    return report


def _write_report(report: RunReport) -> Path:
    layout = report.layout
    path = layout.build / "report.html"
    rel = os.path.relpath
    rows = []
    for r in report.runs:
        link = r.html or r.executed
        status = "ok" if r.ok else f"FAILED — {html.escape(r.error or '')}"
        rows.append(
            f"<tr><td><a href='{html.escape(rel(link, path.parent))}'>{html.escape(r.name)}</a></td>"
            f"<td>{status}</td><td>{r.seconds:.1f} s</td></tr>"
        )
    figures = "\n".join(
        f"<figure><img src='{html.escape(rel(p, path.parent))}' alt='{html.escape(p.stem)}'>"
        f"<figcaption>{html.escape(p.stem)} (<a href='{html.escape(rel(p.with_suffix('.svg'), path.parent))}'>svg</a>)"
        "</figcaption></figure>"
        for p in report.figures()
    )
    results = "\n".join(
        f"<li><a href='{html.escape(rel(p, path.parent))}'>{html.escape(p.name)}</a></li>"
        for p in sorted(layout.results.glob("*.json"))
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>modbatt workbench report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} img{{max-width:100%}}
table{{border-collapse:collapse}} td{{border:1px solid #ccc;padding:4px 8px}} figure{{margin:2em 0}}</style>
</head><body>
<h1>modbatt workbench report</h1>
<p>{sum(r.ok for r in report.runs)} of {len(report.runs)} notebooks ran. Executed notebooks, figures and results are
linked below.</p>
<h2>Notebooks</h2><table>{"".join(rows)}</table>
<h2>Figures</h2>{figures}
<h2>Results</h2><ul>{results}</ul>
<script type="application/json" id="run">{html.escape(json.dumps(report.to_json() | {"report": str(path)}))}</script>
</body></html>
"""
    write_atomic(path, page.encode("utf-8"))
    return path
