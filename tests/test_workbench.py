"""The workbench: notebook runner and report, figures, results; notebooks are nbval-checked separately."""

from __future__ import annotations

import json

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from modbatt.cli import main
from modbatt.encoding import strict_loads
from modbatt.nodes.inmemory import InMemoryDeployment
from modbatt.nodes.pairing_flow import pair_entities
from modbatt.workbench.figures import (
    certificate_anatomy_figure,
    tier_overhead_figure,
    trust_graph,
    trust_graph_figure,
    validation_levels_figure,
)
from modbatt.workbench.results import save_figure, save_results
from modbatt.workbench.runner import run_notebooks


def _notebook(path, body: str) -> None:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        new_code_cell(
            "figures_dir = None\nresults_dir = None\nreproducible = True\nanswer = 1", metadata={"tags": ["parameters"]}
        ),
        new_code_cell(body),
    ]
    nbformat.write(nb, path)


@pytest.fixture
def notebooks(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "01-good.ipynb", "from modbatt.workbench.results import save_results\n"
              "save_results('good', {'answer': answer}, results_dir)\nprint('answer', answer)")  # fmt: skip
    _notebook(folder / "02-bad.ipynb", "raise RuntimeError('this notebook fails on purpose')")
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
    assert json.loads((out / "results" / "good.json").read_text()) == {"answer": 42}
    html = report.report.read_text()
    assert "01-good" in html and "FAILED" in html and "good.json" in html
    assert good.html is not None and good.html.exists()


def test_run_cli_exit_status_and_only(notebooks, tmp_path, capsys):
    assert main(["run", "--notebooks", str(notebooks), "--output", str(tmp_path / "o"), "--only", "good", "--json",
                 "-p", "answer=7"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and [n["name"] for n in summary["notebooks"]] == ["01-good"]
    assert main(["run", "--notebooks", str(notebooks), "--output", str(tmp_path / "o2"), "--json"]) == 1
    assert main(["run", "--notebooks", str(tmp_path / "missing")]) == 2
    assert main(["run", "--notebooks", str(notebooks), "-p", "not a pair"]) == 2


def test_trust_graph_reflects_the_ledger():
    d = InMemoryDeployment(seed=3, modules=3)
    records = {}
    for node_id, module in d.modules.items():
        records[node_id] = d.bind(d.pack, module).record
        pair_entities(d.controller, d.pack, module, records[node_id].binding_id)
    d.controller.revoke(records[3].binding_id, "removed")
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
