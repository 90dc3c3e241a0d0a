"""The package's layering: each subpackage imports only the layers below it (imports inside functions included), so
no two packages need each other. Adding an import that points up fails here with the file and the line."""

import ast
from pathlib import Path

import speechprune

ROOT = Path(speechprune.__file__).parent

# lowest first; a package may import its own modules and those of earlier layers only
LAYERS = [
    {"errors", "paths", "numerics"},
    {"io"},
    {"scale"},
    {"data"},
    {"models"},
    {"importance", "recovery"},
    {"evaluate"},
    {"bench"},
    {"prune"},
    {"train"},
    {"export"},
    {"analysis"},
    {"federated"},
    {"report"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def _package(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level speechprune package)`` of every import in ``path``, absolute or relative."""
    rel = path.relative_to(ROOT).parts
    here = list(rel[:-1])  # the module's package path below speechprune
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names
                    if a.name.startswith("speechprune.") and a.name.count(".") >= 1]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0:
                if module.startswith("speechprune."):
                    out.append((node.lineno, module.split(".")[1]))
                elif module == "speechprune":
                    out += [(node.lineno, a.name) for a in node.names]
                continue
            base = here[: len(here) - (node.level - 1)]
            target = base + (module.split(".") if module else [])
            if target:
                out.append((node.lineno, target[0]))
            else:  # ``from .. import x`` at the top: x is the package
                out += [(node.lineno, a.name) for a in node.names]
    return out


def _edges() -> dict[str, list[tuple[str, int, str]]]:
    edges: dict[str, list[tuple[str, int, str]]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        pkg = _package(path)
        for line, target in imports(path):
            if target != pkg:
                edges.setdefault(pkg, []).append((f"{path.relative_to(ROOT.parent)}:{line}", line, target))
    return edges


def test_every_package_has_a_layer():
    packages = {_package(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert packages <= set(RANK), f"put {sorted(packages - set(RANK))} in a layer of tests/test_layering.py"


def test_the_import_parser_sees_relative_lazy_and_absolute_imports():
    edges = {pkg: {t for _, _, t in e} for pkg, e in _edges().items()}
    assert {"recovery", "models"} <= edges["prune"]  # module level and inside functions
    assert "evaluate" in edges["export"] and "cli" in edges["__main__"]


def test_no_package_imports_a_layer_above_its_own():
    upward = [f"{where}: {pkg} imports {target}" for pkg, es in _edges().items() for where, _, target in es
              if target in RANK and RANK[target] >= RANK[pkg]]
    assert not upward, "imports that point up or sideways (a cycle waiting to happen):\n" + "\n".join(upward)
