"""The layers of docs/architecture.md, enforced: a module imports only from its own layer or those below it, so
libraries never import a stage, stages never import the pipeline, and runtimes never import training code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compress"

# lowest first; the unit of a module is its top-level name under compress/ (a package or a module)
LAYERS: list[set[str]] = [
    {"compress", "errors", "registry", "fileio", "ui", "config", "environment", "safe_yaml"},
    {"devices", "artifacts", "data", "runtimes"},
    {"models"},
    {"losses", "training", "quant", "exporters", "evaluation", "graphs", "search", "pruning", "moe", "runners",
     "report", "ship"},
    {"families"},
    {"context"},
    {"stages"},
    {"recipe", "pipeline"},
    {"cli", "__main__"},
]
# Upward imports that still exist, each named with the work that removes it. The list may only shrink.
KNOWN: dict[tuple[str, str], str] = {}
# narrower rules inside a layer
FORBIDDEN = {("runtimes", "training"), ("runtimes", "models")}


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return None if parts[0] != "compress" else (parts[1] if len(parts) > 1 else "compress")


def _imports(tree: ast.Module) -> list[str]:
    """Every `compress` import, module level or inside functions, except `if TYPE_CHECKING:` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _edges() -> set[tuple[str, str, str]]:
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        if "scripts" in path.parts:  # the self-contained benchmark script imports nothing of ours
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        source = _unit(".".join(p for p in rel.parts if p != "__init__"))
        assert source is not None
        for module in _imports(ast.parse(path.read_text(), str(path))):
            target = _unit(module)
            if target is not None and target != source:
                edges.add((source, target, str(rel)))
    return edges


def test_every_unit_has_a_layer() -> None:
    units = {s for s, _, _ in _edges()} | {t for _, t, _ in _edges()}
    missing = sorted(u for u in units if not any(u in layer for layer in LAYERS))
    assert not missing, f"add these to a layer in tests/test_architecture.py and docs/architecture.md: {missing}"


def test_no_module_imports_upward() -> None:
    upward = sorted(
        f"{where}: {s} (layer {_layer(s)}) imports {t} (layer {_layer(t)})"
        for s, t, where in _edges()
        if (_layer(t) > _layer(s) and (s, t) not in KNOWN) or (s, t) in FORBIDDEN
    )
    assert not upward, "\n".join(upward)


def test_known_exceptions_still_exist() -> None:
    """A removed exception must leave KNOWN too: the list only shrinks."""
    present = {(s, t) for s, t, _ in _edges()}
    assert set(KNOWN) <= present, set(KNOWN) - present


def test_the_page_names_every_layer() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for layer in LAYERS:
        for unit in layer - {"compress", "__main__"}:
            assert f"`{unit}" in page, unit


# ---- no import circle anywhere, whatever the layers allow ------------------------------------------------------
def _module_graph() -> dict[str, set[str]]:
    """Module -> the compress modules it imports: module level, inside functions and under `TYPE_CHECKING` alike
    (an import made only for type hints still ties the two modules together). ``from pkg import name`` counts as
    an import of ``pkg.name`` when that is a module, else of ``pkg``. The implicit import of a package's
    ``__init__`` by its submodules is not counted."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        if "scripts" in path.parts:
            continue
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        modules[".".join(p for p in rel.parts if p != "__init__")] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else known(node.module)
                    if target:
                        out.add(target)
            elif isinstance(node, ast.Import):
                out |= {t for a in node.names if (t := known(a.name))}
        graph[name] = out - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle() -> None:
    cycles = _cycles(_module_graph())
    assert not cycles, "import circles (break each one; see docs/architecture.md):\n" + "\n".join(map(str, cycles))


def test_the_circle_finder_finds_circles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# ---- what a model is, asked of its family: no branches on it below the families --------------------------------
MODEL_WORDS = {"hf", "cnn", "python", "text", "image", "lm", "classification", "causal_lm"}


def _model_branches(path: Path) -> list[str]:
    """Comparisons of a `.modality`, `.kind` or `.task` with a model kind, modality or task name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Compare):
            continue
        parts = [node.left, *node.comparators]
        attrs = [p.attr for p in parts if isinstance(p, ast.Attribute) and p.attr in ("modality", "kind", "task")]
        words = {c.value for p in parts for c in ast.walk(p) if isinstance(c, ast.Constant)}
        if attrs and words & MODEL_WORDS:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_exporters_search_and_context_ask_the_family() -> None:
    paths = [*(PACKAGE / "exporters").rglob("*.py"), *(PACKAGE / "search").rglob("*.py"),
             *(PACKAGE / "graphs").rglob("*.py"), PACKAGE / "context.py"]  # fmt: skip
    found = [hit for path in paths for hit in _model_branches(path)]
    assert not found, "\n".join(found)


def test_the_branch_finder_finds_branches() -> None:
    sample = PACKAGE / "_branch_sample.py"
    try:
        sample.write_text("def f(model):\n    return model.modality == 'text' or m.kind in ('hf',)\n")
        assert len(_model_branches(sample)) == 2
        sample.write_text("def f(a):\n    return a.kind != 'model'\n")
        assert _model_branches(sample) == []
    finally:
        sample.unlink()


def test_stages_hold_no_family_branch_and_no_long_function() -> None:
    stages = PACKAGE / "stages"
    pattern = re.compile(r"kv_cache|is_moe|is_bnb|\.task ==|has_transform|modality")
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sorted(stages.glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]  # fmt: skip
    assert not hits, "\n".join(hits)
    long = [f"{p.name}: {n.name} ({n.end_lineno - n.lineno + 1} lines)" for p in sorted(stages.glob("*.py"))
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
            and n.end_lineno is not None and n.end_lineno - n.lineno + 1 > 80]  # fmt: skip
    assert not long, "functions over 80 lines in stages/: " + ", ".join(long)
