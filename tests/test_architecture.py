"""The layers of docs/architecture.md, enforced: a module imports only from its own layer or those below it, so
libraries never import a stage, stages never import the pipeline, and runtimes never import training code."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "compress"

# lowest first; the unit of a module is its top-level name under compress/ (a package or a module)
LAYERS: list[set[str]] = [
    {"compress", "errors", "registry", "fileio", "ui", "config", "environment", "safe_yaml"},
    {"devices", "artifacts", "data", "runtimes"},
    {"models"},
    {"losses", "training", "quant", "exporters", "evaluation", "search", "pruning", "moe", "runners", "report"},
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
