"""The specification as a product: `modbatt spec build` (HTML + PDF, warnings as errors), its
generated normative tables, and one version number that every versioned structure carries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

import modbatt
from modbatt.can.ids import LAYOUTS
from modbatt.crypto import labels
from modbatt.errors import Reason
from modbatt.ledger.tree_head import STH_VERSION
from modbatt.model.binding import LEDGER_ENTRY_VERSION
from modbatt.model.pairing import CERTIFICATE_VERSION
from modbatt.workbench import spec_tables
from modbatt.workbench.vectors import FILES
from modbatt.workbench.vectors._format import reproducible
from modbatt.workbench.vectors.trace import record_scenario
from modbatt.workbench.vectors.validation import message_classes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One build per run, through the real command (Sphinx -W -n, then WeasyPrint)."""
    out = tmp_path_factory.mktemp("spec")
    done = subprocess.run(
        [sys.executable, "-m", "modbatt.cli", "spec", "build", "--output", str(out)],
        capture_output=True, text=True, timeout=1800, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (out / "stdout.txt").write_text(done.stdout)
    return out


@pytest.mark.slow
def test_spec_build_makes_one_html_page_and_its_pdf_without_warnings(built):
    html = (built / "html" / "index.html").read_text(encoding="utf-8")
    assert "WARNING" not in (built / "sphinx.log").read_text()
    assert f"Modbatt protocol specification {labels.SPEC_VERSION}" in html
    pdf = (built / f"modbatt-spec-{labels.SPEC_VERSION}.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    pages = int((built / "stdout.txt").read_text().split(" pages,")[0].rsplit("(", 1)[1])
    assert pages >= 50  # the whole document, not a stub
    # Normative tables generated from the package are in the page.
    for reason in Reason:
        assert f'<code class="docutils literal notranslate"><span class="pre">{reason.value}</span></code>' in html
    for name in labels.__dict__:
        if name.isupper() and not name.startswith("_") and isinstance(getattr(labels, name), bytes):
            assert name in html, name
    for _, msg_type, _ in message_classes():
        assert msg_type in html
    for layout in LAYOUTS:
        assert layout in html
    assert "0x18164203" in html and "aes-256-ccm-32" in html
    # Every part: informative pages, notebooks and the spec figures of the run.
    for page in ("Architecture", "Threat model", "Known-answer test vectors"):
        assert page.lower() in html.lower(), page
    assert html.count('id="document-notebooks/') == len(list((ROOT / "notebooks").glob("*.ipynb")))
    figures = sorted(p.name for p in (ROOT / "figures").glob("*.png"))
    assert figures and all(f"_images/{name}" in html for name in figures)


def test_every_versioned_structure_carries_the_spec_version():
    major = int(labels.SPEC_VERSION.split(".")[0])
    assert modbatt.SPEC_VERSION == labels.SPEC_VERSION
    assert major == labels.PROTOCOL_VERSION == CERTIFICATE_VERSION == LEDGER_ENTRY_VERSION == STH_VERSION
    assert all(v.startswith(f"modbatt/v{major}/".encode()) for v in vars(labels).values() if isinstance(v, bytes))
    with reproducible():
        rec = record_scenario()
    cert = rec.facts["certificate"]
    assert cbor2.loads(cert.encode())["v"] == major and cbor2.loads(cert.metadata_bytes)["v"] == major
    assert all(cbor2.loads(entry)["v"] == major for entry in rec.facts["ledger_entries"])
    assert all(cbor2.loads(data)["v"] == major for _, data in rec.messages)
    for name in FILES:
        assert json.loads((ROOT / "vectors" / name).read_bytes())["specVersion"] == labels.SPEC_VERSION


def test_every_reason_and_state_is_in_the_specification():
    assert set(spec_tables.REASONS) == set(Reason)
    text = (ROOT / "docs" / "spec" / "state-machines.md").read_text()
    for machine in spec_tables.STATE_MACHINES.values():
        for state in machine:
            assert f"`{state.value}`" in text, f"docs/spec/state-machines.md does not describe {state}"


def test_an_undescribed_field_reader_cannot_reach_the_specification():
    def read_anything(value, what):  # a reader kind the generator was never taught
        return value

    with pytest.raises(ValueError, match="cannot describe field reader"):
        spec_tables.describe_reader(read_anything)
    for cls in message_classes().values():
        for reader in cls.SPEC.values():
            spec_tables.describe_reader(reader)
