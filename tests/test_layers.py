"""The package's layers import only downward and never in a cycle (docs/architecture.md).

Reads the import graph of slam/ from the source (every `import` and `from ... import`, including those
inside functions), so a lazy import cannot hide a cycle or an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "slam"

# Module (or package prefix) -> layer. Lower layers never import higher ones; the longest prefix wins. The
# package itself ("slam", its __init__) matches only itself: a new top-level module must be given a layer here.
LAYERS: dict[str, int] = {
    "slam": 0, "slam.errors": 0, "slam.utils": 0, "slam.config": 0, "slam.tracking": 0, "slam.lock": 0,
    "slam.tokens": 1, "slam.text": 1,
    "slam.audio": 2, "slam.units": 2, "slam.synth": 2,
    "slam.attention": 3, "slam.model": 3, "slam.model_folder": 3, "slam.data": 3, "slam.vocoder": 3,
    "slam.generate": 4, "slam.eval": 4, "slam.prefs": 4, "slam.train": 4, "slam.push": 4,
    "slam.demo": 5,
    "slam.cli": 6,
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The slam module an imported name lives in (`slam.data.PackedLoader` -> `slam.data`)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            if t == "slam" or t.startswith("slam."):
                r = resolve(t, known)
                if r and r != name and not name.startswith(r + "."):  # a package's own __init__ is not an edge
                    found.add(r)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def _covers(key: str, name: str) -> bool:
    return name == key or (key != "slam" and name.startswith(key + "."))


def layer(name: str) -> int:
    best = max((k for k in LAYERS if _covers(k, name)), key=len)
    return LAYERS[best]


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def upward(g: dict[str, set[str]]) -> list[str]:
    return [f"{a} (L{layer(a)}) imports {b} (L{layer(b)})" for a, deps in sorted(g.items()) for b in sorted(deps)
            if layer(b) > layer(a)]


def test_every_module_has_a_layer():
    missing = [name for name in modules() if not any(_covers(k, name) for k in LAYERS)]
    assert missing == [], f"give these modules a layer in LAYERS: {missing}"


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down():
    assert upward(graph()) == []


@pytest.fixture
def fake_tree(tmp_path):
    """A copy-free miniature: three modules in two layers, written as files."""
    pkg = tmp_path / "slam"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "engine.py").write_text("from slam.errors import X\n")
    return pkg


def test_the_checks_catch_a_cycle_and_an_upward_import(fake_tree):
    """The guards fail when they should: an import inside a function closes a cycle and points up."""
    assert find_cycle(graph(fake_tree)) is None and upward(graph(fake_tree)) == []
    (fake_tree / "errors.py").write_text("def f():\n    from slam.train.engine import step\n")
    assert find_cycle(graph(fake_tree)) == ["slam.errors", "slam.train.engine", "slam.errors"]
    assert upward(graph(fake_tree)) == ["slam.errors (L0) imports slam.train.engine (L4)"]


def test_a_new_top_level_module_needs_a_layer():
    """The package key covers only the package itself, so a new module cannot slip in at L0 unnoticed."""
    assert _covers("slam", "slam") and not _covers("slam", "slam.newthing")
    assert not any(_covers(k, "slam.newthing") for k in LAYERS)
    assert layer("slam.train.engine") == 4 and layer("slam.data.packing") == 3
