"""``modbatt spec build``: one specification document, as a single HTML page and a PDF of it.

Sources (docs/spec/index.md explains the document's parts):

* the normative pages ``docs/spec/*.md``, which include tables generated from the package
  (:mod:`modbatt.workbench.spec_tables`) at build time;
* every page of ``docs/`` as the informative part (the rationale, measurements and guides);
* the executed notebooks: ``build/notebooks/*.ipynb`` from the last ``modbatt run`` when present,
  else the committed ``notebooks/*.ipynb``, whose stored outputs the suite checks with nbval
  (they are never executed here, so a build takes a minute, not a run);
* the spec figures of the last run (``figures/*.png``).

Sphinx with MyST-NB builds the single HTML page with warnings as errors (``-W --keep-going``)
and nitpicky references (``-n``), so a broken internal link or a missing include fails the build;
WeasyPrint (PyPI, no TeX) prints that page to PDF.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..crypto.labels import SPEC_VERSION
from ..errors import ConfigError
from ..files import write_atomic
from .paths import repo_root
from .vectors._format import reproducible
from .vectors.trace import record_scenario

__all__ = ["SpecBuild", "build_spec", "stage_sources"]

_CONF = """\
# Written by modbatt.workbench.spec; edit that module, not this file.
project = "Modbatt protocol specification"
author = "modbatt developers"
copyright = "modbatt developers"
version = release = {version!r}
extensions = ["myst_nb"]
nb_execution_mode = "off"
nb_merge_streams = True
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]
nitpicky = True
# Informative pages show pseudo-JSON (with "..." placeholders) in json blocks: plain text is fine there.
suppress_warnings = ["misc.highlighting_failure"]
root_doc = "index"
exclude_patterns = ["spec/generated/*"]
html_theme = "alabaster"
html_title = "Modbatt protocol specification {version}"
html_show_sourcelink = False
html_theme_options = {{"page_width": "1200px", "sidebar_width": "260px"}}
"""
_PDF_CSS = """
@page { size: A4; margin: 16mm 14mm; @bottom-center { content: counter(page); font-size: 8pt; } }
body { font-size: 9pt; }
.sphinxsidebar, .related, .footer { display: none; }
div.document, div.documentwrapper, div.bodywrapper, div.body { margin: 0; width: auto; max-width: none; }
table { font-size: 7.5pt; border-collapse: collapse; }
td, th { overflow-wrap: anywhere; }
pre { font-size: 7pt; white-space: pre-wrap; }
img { max-width: 100%; }
h1 { page-break-before: always; }
"""


_BODY_START = '<div class="body" role="main">'
_BODY_END = '<div class="sphinxsidebar"'


def _printable(page: str) -> str:
    """The document body of the HTML page without the theme's frame (sidebar, floats), which costs
    WeasyPrint several times the layout time of the content itself."""
    start, end = page.find(_BODY_START), page.find(_BODY_END)
    head_end = page.find("<body")
    if min(start, end, head_end) < 0:
        return page
    return page[:head_end] + "<body>" + page[start:end] + "</body></html>"


@dataclass(frozen=True)
class SpecBuild:
    html: Path
    pdf: Path | None
    pdf_pages: int
    notebooks_from: Path
    figures: int


def _index(docs: list[str], notebooks: list[str], figures: bool) -> str:
    def toc(caption: str, entries: list[str]) -> str:
        return f"```{{toctree}}\n:caption: {caption}\n:maxdepth: 2\n\n" + "\n".join(entries) + "\n```\n\n"

    normative = ["spec/conventions", "spec/messages", "spec/state-machines", "spec/key-schedule",
                 "spec/frames", "spec/errors", "spec/ids"]  # fmt: skip
    return (
        f"# Modbatt protocol specification {SPEC_VERSION}\n\n"
        "```{include} spec/generated/version.md\n```\n\n"
        "Part I is normative: conventions, messages, state machines, the key schedule, frame formats, "
        "error reasons and identifier layouts, with tables generated from the reference implementation. "
        "Part II is the informative design and measurement record, Part III the executed workbench "
        "notebooks and the spec figures of the last run. Known-answer vectors: [vectors.md](vectors.md). "
        "Protocol profiles (`seed`, `efficient`) and their properties: [profiles.md](profiles.md).\n\n"
        + toc("Part I: normative", normative)
        + toc("Part II: informative", docs)
        + toc("Part III: notebooks and figures", notebooks + (["figures"] if figures else []))
    )


def _figures_page(names: list[str]) -> str:
    out = ["# Spec figures\n\nThe figures of the last `modbatt run` (`figures/`).\n"]
    for name in names:
        stem = name.removesuffix(".png")
        out.append(f"\n## {stem}\n\n```{{image}} figures/{name}\n:alt: {stem}\n:width: 100%\n```\n")
    return "".join(out)


def stage_sources(root: Path, src: Path) -> tuple[Path, int]:
    """Lay out the Sphinx source tree in ``src`` (emptied first); returns (notebooks used, figures)."""
    docs = root / "docs"
    if not (docs / "spec" / "conventions.md").is_file():
        raise ConfigError(f"no specification sources at {docs / 'spec'} (run from a modbatt checkout)")
    if src.exists():
        shutil.rmtree(src)
    (src / "spec" / "generated").mkdir(parents=True)
    pages = sorted(p for p in docs.glob("*.md"))
    for p in pages:
        shutil.copy2(p, src / p.name)
    for p in sorted((docs / "spec").glob("*.md")):
        shutil.copy2(p, src / "spec" / p.name)
    from .spec_tables import pages as generated

    with reproducible():
        record = record_scenario()
    for name, text in generated(record).items():
        (src / "spec" / "generated" / name).write_text(text, encoding="utf-8")
    executed = root / "build" / "notebooks"
    nb_dir = executed if sorted(executed.glob("*.ipynb")) else root / "notebooks"
    notebooks = sorted(nb_dir.glob("*.ipynb"))
    (src / "notebooks").mkdir()
    for nb in notebooks:
        shutil.copy2(nb, src / "notebooks" / nb.name)
    figures = sorted(p.name for p in (root / "figures").glob("*.png"))
    if figures:
        (src / "figures").mkdir()
        for name in figures:
            shutil.copy2(root / "figures" / name, src / "figures" / name)
        (src / "figures.md").write_text(_figures_page(figures), encoding="utf-8")
    informative = [p.stem for p in pages if p.stem != "index"]
    (src / "index.md").write_text(
        _index(informative, [f"notebooks/{nb.stem}" for nb in notebooks], bool(figures)), encoding="utf-8"
    )
    (src / "conf.py").write_text(_CONF.format(version=SPEC_VERSION), encoding="utf-8")
    return nb_dir, len(figures)


def build_spec(output: Path | None = None, *, pdf: bool = True, root: Path | None = None) -> SpecBuild:
    """Build ``DIR/html/index.html`` and ``DIR/modbatt-spec-<version>.pdf`` (default ``build/spec``).

    Raises :class:`~modbatt.errors.ConfigError` when Sphinx or WeasyPrint is missing (install the
    ``spec`` extra) and ``ModbattError`` when the document has a warning (the log says which).
    """
    from ..errors import ModbattError

    root = root or repo_root()
    out = Path(output) if output is not None else root / "build" / "spec"
    try:
        import myst_nb  # noqa: F401
        import sphinx  # noqa: F401
    except ImportError:
        raise ConfigError("building the specification needs Sphinx and MyST-NB: pip install -e '.[spec]'") from None
    nb_dir, n_figures = stage_sources(root, out / "src")
    html = out / "html"
    if html.exists():
        shutil.rmtree(html)
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    cmd = [sys.executable, "-m", "sphinx", "-b", "singlehtml", "-W", "--keep-going", "-n", "-q",
           "-d", str(out / "doctrees"), str(out / "src"), str(html)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    (out / "sphinx.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0:
        first = next((line for line in done.stderr.splitlines() if "WARNING" in line or "ERROR" in line), "")
        raise ModbattError(f"the specification has warnings (see {out / 'sphinx.log'}): {first.strip()}")
    pdf_path, pages = None, 0
    if pdf:
        try:
            from weasyprint import CSS, HTML
        except (ImportError, OSError):
            raise ConfigError("the PDF needs WeasyPrint and Pango: pip install -e '.[spec]'") from None
        pdf_path = out / f"modbatt-spec-{SPEC_VERSION}.pdf"
        page = _printable((html / "index.html").read_text(encoding="utf-8"))
        doc = HTML(string=page, base_url=str(html) + "/").render(stylesheets=[CSS(string=_PDF_CSS)])
        write_atomic(pdf_path, doc.write_pdf())
        pages = len(doc.pages)
    return SpecBuild(html / "index.html", pdf_path, pages, nb_dir, n_figures)
