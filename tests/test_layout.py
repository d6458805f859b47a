"""The package layout keeps its promises (README "Map", docs/contributing.md):

* no import cycle between modules of ``engine`` (function-level imports included);
* imports go one way: ``api -> learn / propagate / guide -> ops -> (kernels | _C)``,
  and the evaluation harness and the HTTP server sit above the API;
* no module under ``engine/eval`` reads a ``_private`` attribute of another object;
* one atomic-write helper: ``os.replace`` appears once in ``engine/``;
* no ``.py`` file in ``engine/`` is over 500 lines.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "engine"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(module: str, path: Path) -> set[str]:
    """Modules of ``engine`` that ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # annotations only: not an import at run time
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_pkg, node.level, node.module)
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "engine.x.y" of a name in engine.x
                t = t.rpartition(".")[0]
            if t.startswith("engine") and t != module:
                found.add(t)
    return found


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycle():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            # a package's __init__ re-exporting its own submodules is not a cycle
            if w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in GRAPH:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


# which layers a layer may import (besides itself and the shared bottom: errors,
# checks, _files, _backends)
ALLOWED = {
    "ops": {"kernels", "_C", "_C_cuda"},
    "kernels": set(),
    "learn": {"ops"},
    "propagate": {"ops", "io"},
    "guide": {"ops"},
    "io": set(),
    "api": {"learn", "propagate", "guide", "ops"},
    "eval": {"api", "learn", "propagate", "guide", "ops", "io"},
    "server": {"api", "guide", "io"},  # above the API, beside eval: it serves Engine / Session
    "cli": {"eval", "propagate", "io", "api", "server", "ops"},  # `dilseg info` lists the ops
}
BOTTOM = {"errors", "checks", "_files", "_backends", ""}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_go_one_way(layer):
    bad = []
    for m, deps in GRAPH.items():
        if _layer(m) != layer:
            continue
        for d in deps:
            other = _layer(d)
            if other != layer and other not in BOTTOM and other not in ALLOWED[layer]:
                bad.append(f"{m} -> {d}")
    assert not bad, f"{layer} imports above its layer: {bad}"


def test_eval_reads_no_private_attribute():
    bad = []
    for m, path in MODULES.items():
        if _layer(m) != "eval":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and re.match(r"^_[a-z]", node.attr):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not bad, f"engine/eval reads private attributes: {bad}"


def test_one_atomic_write_helper():
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in MODULES.values()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "os.replace" in line
    ]
    assert len(hits) == 1 and hits[0].startswith("engine/_files.py"), hits


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
