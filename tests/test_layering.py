"""The layering of docs/architecture.md, checked on the import graph of every module.

The table under "## Layers" in docs/architecture.md is the one source of the layer map: this
test parses it. Every module's imports are read with :mod:`ast` (absolute ``modbatt.x`` and
relative imports, at module level or inside functions, under ``TYPE_CHECKING`` too) plus the
imports it makes by name: ``importlib.import_module("...")`` with a constant argument, and any
string constant that is exactly the dotted name of a ``modbatt`` module (lazy-export tables).
A module may import its own layer or a lower one; an upward import fails, and so does a cycle
between layers (rows with the same number are one layer).
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modbatt"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

#: Upward imports the suite tolerates, each with the reason and the issue that removes it:
#: (importing module, imported module) -> why. Empty means the layering holds everywhere.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}


def layer_table(text: str | None = None) -> dict[str, int]:
    """Package name -> layer, from the table under "## Layers" in docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8") if text is None else text
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        for name in re.findall(r"`(modbatt(?:\.\w+)*)`", cells[1]):
            assert name not in layers, f"{name} is listed twice in the layer table"
            layers[name] = int(cells[0])
    return layers


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _target(name: str, known: dict[str, Path]) -> str | None:
    """The module an imported dotted name denotes (a name inside a module counts as that module)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ``modbatt`` modules that ``module`` imports, found statically."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import name``: the submodule ``pkg.name`` if there is one, else ``pkg``.
            names.update(f"{stem}.{a.name}" if f"{stem}.{a.name}" in known else stem for a in node.names)
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if arg.value.startswith("."):  # relative to ``__name__``, the way the package calls it
                    names.add(module + arg.value)
                else:
                    names.add(arg.value)
        elif isinstance(node, ast.Constant) and str(node.value).startswith("modbatt.") and node.value in known:
            names.add(node.value)  # a module named by its dotted name, e.g. a lazy-export table
    found = {_target(n, known) for n in names if n == "modbatt" or n.startswith("modbatt.")}
    # Importing a name from a module of the package means importing that module, not its children.
    return {t for t in found if t is not None and t != module}


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id in ("import_module", "__import__")
    )


def layer_of(module: str, table: dict[str, int]) -> tuple[str, int] | None:
    """The table package a module belongs to (the longest listed prefix) and its layer."""
    best = None
    for package, layer in table.items():
        # A package row covers its subpackages; the root row covers only the modules it names.
        covers = module == package or (package != "modbatt" and module.startswith(package + "."))
        if covers and (best is None or len(package) > len(best[0])):
            best = (package, layer)
    return best


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_the_layer_table_is_parsed_and_names_every_package():
    table = layer_table()
    assert table["modbatt.errors"] == 0 and table["modbatt.crypto"] == 1 and table["modbatt.cli"] == 6
    unplaced = sorted(m for m in modules() if layer_of(m, table) is None)
    assert not unplaced, f"modules in no row of docs/architecture.md's layer table: {unplaced}"
    exists = set(modules()) | {".".join(d.relative_to(ROOT).parts) for d in PACKAGE.rglob("*") if d.is_dir()}
    listed_but_missing = sorted(p for p in table if p not in exists)
    assert not listed_but_missing, f"the layer table lists packages that do not exist: {listed_but_missing}"


def test_the_import_scanner_sees_relative_function_level_and_string_imports(tmp_path):
    known = {name: PACKAGE for name in ("modbatt", "modbatt.a", "modbatt.a.low", "modbatt.b", "modbatt.c", "modbatt.d")}
    src = tmp_path / "low.py"
    src.write_text(
        "from ..b import thing\n"
        "def f():\n"
        "    from modbatt.c import other\n"
        "    import importlib\n"
        "    return importlib.import_module('modbatt.d')\n"
        "LAZY = {'x': 'modbatt.a'}\n"
        "DOC = 'modbatt.b is described elsewhere'\n",
        encoding="utf-8",
    )
    assert imports_of("modbatt.a.low", src, known) == {"modbatt.a", "modbatt.b", "modbatt.c", "modbatt.d"}


def test_no_module_imports_a_higher_layer():
    table = layer_table()
    upward = []
    for module, targets in sorted(import_graph().items()):
        src = layer_of(module, table)
        for target in sorted(targets):
            dst = layer_of(target, table)
            if src and dst and dst[1] > src[1] and (module, target) not in ALLOWED_UPWARD:
                upward.append(f"{module} (layer {src[1]}) -> {target} (layer {dst[1]})")
    assert not upward, "upward imports (docs/architecture.md, Layers):\n" + "\n".join(upward)


def test_every_allowed_upward_import_still_exists():
    graph = import_graph()
    stale = [edge for edge in ALLOWED_UPWARD if edge[1] not in graph.get(edge[0], set())]
    assert not stale, f"allow-list entries no longer needed, remove them: {stale}"


def test_no_cycle_between_the_layers():
    # Rows with the same number are one layer (docs/architecture.md), so the unit here is the layer.
    table = layer_table()
    edges: dict[int, set[int]] = defaultdict(set)
    witness: dict[tuple[int, int], str] = {}
    for module, targets in import_graph().items():
        src = layer_of(module, table)
        for target in targets:
            dst = layer_of(target, table)
            if src and dst and src[1] != dst[1] and (module, target) not in ALLOWED_UPWARD:
                edges[src[1]].add(dst[1])
                witness.setdefault((src[1], dst[1]), f"{module} -> {target}")
    cycles = [c for c in _strongly_connected(edges) if len(c) > 1]
    detail = [
        f"layers {sorted(c)}: " + "; ".join(witness[(a, b)] for a in sorted(c) for b in sorted(edges[a] & c))
        for c in cycles
    ]
    assert not cycles, "import cycles between layers:\n" + "\n".join(detail)


def _strongly_connected(edges: dict[int, set[int]]) -> list[set[int]]:
    """Tarjan's algorithm over the layer graph."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    stack: list[int] = []
    on_stack: set[int] = set()
    out: list[set[int]] = []

    def visit(v: int) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            out.append(component)

    for v in list(edges):
        if v not in index:
            visit(v)
    return out
