"""The workbench: notebook runner and report, figures, results; notebooks are nbval-checked separately."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from modbatt.cli import main
from modbatt.encoding import strict_loads
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.paired import paired_deployment
from modbatt.workbench.figures import (
    certificate_anatomy_figure,
    tier_overhead_figure,
    trust_graph,
    trust_graph_figure,
    validation_levels_figure,
)
from modbatt.workbench.results import save_figure, save_results
from modbatt.workbench.runner import run_notebooks

PARAMS = """from typing import Optional

figures_dir: Optional[str] = None  # figures folder
results_dir: Optional[str] = None  # results folder
reproducible: bool = True  # seeded run
answer: int = 1  # the answer to print
label: str = "x"  # a label
bus_interface: str = "virtual"  # python-can interface"""


def _notebook(path, body: str, params: str = PARAMS) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [new_code_cell(params, metadata={"tags": ["parameters"]}), new_code_cell(body)]
    nbformat.write(nb, path)


_GOOD = """import matplotlib.pyplot as plt
from modbatt.workbench.results import save_figure, save_results
save_results('good', {'answer': answer, 'label': label}, results_dir)
fig, ax = plt.subplots()
ax.plot([0, 1], [0, answer])
save_figure(fig, 'good-line', figures_dir, caption=f'A line up to {answer}.')
print('answer', answer)"""


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01-good.ipynb", _GOOD)
    other = PARAMS.replace("answer: int = 1  # the answer to print", "other: float = 0.5  # another value")
    _notebook(folder / "02-bad.ipynb", "raise RuntimeError('this notebook fails on purpose')", other)
    return folder


def test_runner_executes_injects_parameters_and_reports_failures(notebooks, tmp_path):
    out = tmp_path / "out"
    report = run_notebooks(output=out, notebooks_dir=notebooks, parameters={"answer": 42})
    assert [r.name for r in report.runs] == ["01-good", "02-bad"]
    good, bad = report.runs
    assert good.ok and not bad.ok and "RuntimeError" in bad.error
    assert not report.ok
    executed = nbformat.read(good.executed, as_version=4)
    assert "injected-parameters" in executed.cells[1].metadata.get("tags", [])
    assert json.loads((out / "results" / "good.json").read_text()) == {"answer": 42, "label": "x"}
    html = report.report.read_text()
    assert "01-good" in html and "FAILED" in html and "good.json" in html
    assert good.html is None or good.html.exists()
    assert report.parameters["01-good"]["answer"] == 42 and "answer" not in report.parameters["02-bad"]


def test_run_cli_exit_status_and_only(notebooks, tmp_path, capsys):
    assert main(["run", "--notebooks", str(notebooks), "--output", str(tmp_path / "o"), "--only", "good", "--json",
                 "-p", "answer=7"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and [n["name"] for n in summary["notebooks"]] == ["01-good"]
    assert main(["run", "--notebooks", str(notebooks), "--output", str(tmp_path / "o2"), "--json"]) == 1
    assert main(["run", "--notebooks", str(tmp_path / "missing")]) == 2
    assert main(["run", "--notebooks", str(notebooks), "-p", "not a pair"]) == 2


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["typo=1"], "unknown parameter 'typo'; the notebooks take: answer, bus_interface, figures_dir"),
        (["answer=abc"], "-p answer='abc': answer takes int (the answer to print)"),
        (["answer=true"], "answer takes int"),
        (["reproducible=3"], "reproducible takes bool"),
        (["02-bad.answer=3"], "unknown parameter '02-bad.answer': 02-bad takes bus_interface, figures_dir, label"),
        (["nine.answer=3"], "no notebook match 'nine'"),
    ],
)
def test_bad_parameters_are_one_line_before_anything_runs(notebooks, tmp_path, capsys, items, message):
    out = tmp_path / "never"
    args = ["run", "--notebooks", str(notebooks), "--output", str(out)]
    for item in items:
        args += ["-p", item]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()  # nothing ran, nothing was written


def test_parameters_reach_their_notebook(notebooks, tmp_path):
    report = run_notebooks(output=tmp_path / "o", notebooks_dir=notebooks, only=["good"],
                           parameters={"label": "all", "01-good.label": "mine", "answer": "5"})  # fmt: skip
    assert json.loads((tmp_path / "o" / "results" / "good.json").read_text()) == {"answer": 5, "label": "mine"}
    assert report.parameters["01-good"] == {
        "answer": 5,
        "label": "mine",
        "reproducible": True,
        "bus_interface": "virtual",
    }


def test_list_params(notebooks, capsys):
    assert main(["run", "--notebooks", str(notebooks), "--list-params"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "01-good" and "answer           int" in out and "the answer to print" in out
    assert main(["run", "--notebooks", str(notebooks), "--list-params", "bad"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("02-bad") and "01-good" not in out and "other            float" in out


#: The design-space notebook runs only the latency model (no keys, no bus): no seed or bus settings.
#: 07 is a model notebook too, but replays one measured level on the bus beside the model. The soak
#: (11) runs its own udp_multicast bus and real randomness: no seed or bus settings either.
MODEL_ONLY = ("09-", "11-")


def _annotated_names(nb: Path) -> set[str]:
    """Every name the notebook's ``parameters`` cell declares, read with Python's own parser."""
    cell = next(c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return {n.target.id for n in ast.parse(cell.source).body if isinstance(n, ast.AnnAssign)}


def test_every_workbench_notebook_declares_typed_described_parameters():
    from modbatt.workbench.parameters import notebook_parameters
    from modbatt.workbench.runner import list_notebooks

    notebooks = list_notebooks()
    assert [nb.stem[:2] for nb in notebooks] == [f"{i:02d}" for i in range(1, len(notebooks) + 1)]
    for nb in notebooks:
        specs = notebook_parameters(nb)
        # papermill reads every declaration (it skips `X | None`, hence Optional[X]): -p can set each one.
        assert set(specs) == _annotated_names(nb), nb.stem
        assert {"figures_dir", "results_dir", "reproducible"} <= set(specs), nb.stem
        # A bus notebook takes the whole bus the rule resolves (docs/buses.md §2.6).
        session = {"seed", "bus_interface", "bus_channel", "bus_options"}
        assert (session & set(specs)) == (set() if nb.stem.startswith(MODEL_ONLY) else session), nb.stem
        for spec in specs.values():
            assert spec.type_name != "None" and spec.help, (nb.stem, spec)


def test_every_committed_figure_carries_its_caption():
    from modbatt.workbench.report import figure_caption

    figures = sorted((Path(__file__).resolve().parents[1] / "figures").glob("*.png"))
    assert figures
    assert [png.name for png in figures if not figure_caption(png)] == []


def _chromium() -> str | None:
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and os.environ.get("MODBATT_REQUIRE_CHROMIUM") == "1":
        pytest.fail("MODBATT_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
    return found


def test_report_stands_alone_in_a_browser(notebooks, tmp_path):
    chromium = _chromium()
    report = run_notebooks(output=tmp_path / "o", notebooks_dir=notebooks, only=["good"], parameters={"answer": 3})
    alone = tmp_path / "elsewhere" / "copied.html"
    alone.parent.mkdir()
    shutil.copy(report.report, alone)  # the page alone: no figures/ folder beside it
    html = alone.read_text()
    assert "../figures" not in html and "src='data:image/png;base64," in html
    assert "A line up to 3." in html  # the caption stored in the PNG
    run = json.loads(re.search(r'<script type="application/json" id="run">(.*?)</script>', html, re.S).group(1)
                     .replace("&quot;", '"').replace("&#x27;", "'").replace("&amp;", "&"))  # fmt: skip
    prov = run["provenance"]
    assert prov["reproducible"] is True and prov["modbatt_version"] and prov["created"]
    assert prov["parameters"]["01-good"]["answer"] == 3 and "virtual" in prov["bus"]
    assert prov["git"] is None or len(prov["git"]["commit"]) == 40
    if chromium is None:
        pytest.skip("no chromium on PATH: the page's images were checked as embedded, not rendered")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--virtual-time-budget=5000", "--dump-dom", alone.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    imgs = re.findall(r"<img [^>]*>", dom)
    assert imgs and all('data-loaded="1"' in img for img in imgs), dom[:500]
    assert re.search(r'data-images="(\d+)/\1"', dom)


def test_trust_graph_reflects_the_ledger():
    made = paired_deployment(3, modules=3)
    d = made.dep
    d.controller.revoke(made.binding_id(3), "removed")
    g = trust_graph(d.ledger.entries())
    assert set(g.nodes) == {"pack-01", "module-01", "module-02", "module-03"}
    edges = {(frozenset((u, v)), data["relation"]): data for u, v, data in g.edges(data=True)}
    assert edges[(frozenset(("pack-01", "module-01")), "pairing")]["completed"] is True
    assert edges[(frozenset(("pack-01", "module-03")), "binding")]["revoked"] is True
    assert edges[(frozenset(("pack-01", "module-03")), "pairing")]["revoked"] is True  # void with its binding
    assert edges[(frozenset(("pack-01", "module-02")), "binding")]["revoked"] is False
    # Decoded maps work as well as raw entries.
    assert trust_graph([strict_loads(e) for e in d.ledger.entries()]).number_of_edges() == g.number_of_edges()


def test_figures_render_and_save_reproducibly(tmp_path):
    d = InMemoryDeployment(seed=4, modules=1)
    record = d.bind(d.pack, d.modules[1]).record
    cert = d.controller.issue_pairing(record.binding_id)
    figures = {
        "trust": trust_graph_figure(trust_graph(d.ledger.entries())),
        "overhead": tier_overhead_figure(),
        "anatomy": certificate_anatomy_figure({"standard": cert}),
        "levels": validation_levels_figure(
            {"1": {"bytes": [280], "can_frames": 42}, "5": {"bytes": [300, 200], "can_frames": 80}}
        ),
    }
    assert len(figures["overhead"].axes) == 2
    for name, fig in figures.items():
        first = [p.read_bytes() for p in save_figure(fig, name, tmp_path / "a")]
        second = [p.read_bytes() for p in save_figure(fig, name, tmp_path / "b")]
        assert all(len(blob) > 1000 for blob in first)
        assert first[1] == second[1]  # SVG without timestamps: identical bytes run to run
    assert save_results("x", {"b": 2, "a": b"\x01"}, tmp_path).read_text().startswith('{\n  "a"')
