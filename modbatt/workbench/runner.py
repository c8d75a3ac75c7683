"""``modbatt run``: execute every notebook headlessly with papermill and build the report.

Each notebook gets the folders for its figures and results and the reproducible switch, plus
the ``-p`` values meant for it, checked against the parameters it declares
(:mod:`modbatt.workbench.parameters`) before any notebook starts. Executed copies land in
``build/`` (``.ipynb`` and an HTML rendering), and ``build/report.html`` (:mod:`modbatt.workbench.report`)
stands alone with every figure embedded and the run's provenance. A notebook that fails is
reported with its error and the run carries on; the exit status says whether all succeeded.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crypto.rng import REPRODUCIBLE_ENV
from ..errors import ConfigError
from .parameters import ParamSpec, check_parameters, notebook_parameters
from .paths import OutputLayout, find_notebooks_dir, repo_root
from .report import Provenance, write_report
from .results import write_atomic

__all__ = ["NotebookRun", "RunReport", "list_notebooks", "list_parameters", "run_notebooks"]

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
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each notebook ran with

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
            "parameters": self.parameters,
        }


def list_notebooks(notebooks_dir: Path | None = None) -> list[Path]:
    """The workbench notebooks in run order (file names sort by their numeric prefix)."""
    return sorted(find_notebooks_dir(notebooks_dir).glob("[0-9][0-9]-*.ipynb"))


def _select(notebooks_dir: Path | None, only: Sequence[str]) -> list[Path]:
    notebooks = [nb for nb in list_notebooks(notebooks_dir) if not only or any(o in nb.stem for o in only)]
    if not notebooks:
        raise ConfigError("no notebook matches" + (f" {', '.join(only)}" if only else ""))
    return notebooks


def list_parameters(notebooks_dir: Path | None = None, only: Sequence[str] = ()) -> dict[str, dict[str, ParamSpec]]:
    """Each selected notebook's declared parameters, in run order."""
    return {nb.stem: notebook_parameters(nb) for nb in _select(notebooks_dir, only)}


def _to_html(executed: Path) -> Path | None:
    """An HTML rendering beside the executed notebook; None when nbconvert cannot render here.

    The rendering is a convenience: without nbconvert or its templates (a virtual environment
    that does not see the base installation's ``share/jupyter``), the report points at the .ipynb.
    """
    try:
        import nbformat
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    except Exception:
        return None
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
    """Run the notebooks (all, or those whose name contains one of ``only``) and write the report.

    ``parameters`` maps ``KEY`` (every notebook that declares it) or ``NAME.KEY`` (one notebook)
    to a value, as text (``-p`` on the command line: parsed and type-checked against the
    declaration) or as a Python value. An unknown key or a wrong type raises ConfigError before
    any notebook runs.
    """
    import papermill

    notebooks = _select(notebooks_dir, only)
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (parameters or {}).items()}
    per_notebook = check_parameters(notebooks, raw)
    layout = OutputLayout.under(output) if output is not None else OutputLayout.default()
    layout.create()
    injected = {
        "figures_dir": str(layout.figures),
        "results_dir": str(layout.results),
        "reproducible": reproducible,
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
            values = injected | per_notebook[nb.stem]
            report.parameters[nb.stem] = _effective(nb, values)
            try:
                papermill.execute_notebook(
                    str(nb), str(executed), parameters=values, kernel_name="python3", progress_bar=False,
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
    report.report = _write_report(report, reproducible)
    return report


def _effective(nb: Path, values: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's declared defaults with what was injected on top (for the report)."""
    out: dict[str, Any] = {}
    for name, spec in notebook_parameters(nb).items():
        if name in ("figures_dir", "results_dir"):
            continue  # folders of this machine: in the report's file list, not its parameters
        out[name] = values[name] if name in values else _literal(spec.default)
    return out


def _literal(text: str) -> Any:
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _bus_text(parameters: Mapping[str, Mapping[str, Any]]) -> str:
    """The buses the notebooks ran on, from their ``bus_*`` parameters (docs/buses.md §2.6)."""
    buses = set()
    for values in parameters.values():
        if "bus_interface" not in values:
            continue
        if values["bus_interface"] is None:
            buses.add("the bus rule's choice: python-can's configuration, else each notebook's embedded virtual bus")
            continue
        text = " ".join(str(values[k]) for k in ("bus_interface", "bus_channel") if values.get(k) is not None)
        if values.get("bus_options"):
            text += " " + json.dumps(values["bus_options"], sort_keys=True)
        buses.add(text)
    return "; ".join(sorted(buses)) or "none declared"


def _write_report(report: RunReport, reproducible: bool) -> Path:
    layout = report.layout
    provenance = Provenance(
        reproducible=reproducible, parameters=report.parameters, bus=_bus_text(report.parameters), root=repo_root()
    )
    return write_report(
        layout.build / "report.html",
        runs=report.runs,
        figures=report.figures(),
        results=sorted(layout.results.glob("*.json")),
        provenance=provenance,
        summary=report.to_json() | {"report": str(layout.build / "report.html")},
    )
