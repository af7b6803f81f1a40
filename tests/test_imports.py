"""The import graph of ``seqnet_jax``: no cycles, and every module imports on its own.

The graph is read with ``ast`` from every ``.py`` file of the package: ``import`` statements
anywhere in a module, also inside functions and methods (a function-level import that closes a
cycle fails as soon as that function runs first in a fresh process). Importing ``a.b.c`` also
executes the packages ``a.b`` and ``a``, so those are edges too (except a module's own parent
packages, which Python has initialised, perhaps partially, before the module runs). Code under a
module's ``if __name__ == "__main__":`` is the script ``python -m`` runs, in a separate module
``__main__`` that nothing imports: its imports are edges of that script, not of the module.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "seqnet_jax"
NEEDS_TENSORFLOW_DATASETS = {"seqnet_jax.data.tfds_builders"}  # the optional TFDS data path


def package_modules(root: Path, package: str) -> Dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_main_guard(node: ast.AST) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    t = node.test
    names = [t.left, *t.comparators]
    return (
        len(t.ops) == 1
        and isinstance(t.ops[0], ast.Eq)
        and any(isinstance(n, ast.Name) and n.id == "__name__" for n in names)
        and any(isinstance(n, ast.Constant) and n.value == "__main__" for n in names)
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> List[str]:
    """Absolute names imported anywhere in ``tree`` except under ``if __name__ == "__main__"``."""
    out: List[str] = []
    stack: List[ast.AST] = [n for n in tree.body if not _is_main_guard(n)]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")
                if not is_package:
                    base_parts = base_parts[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.append(base)
            out += [f"{base}.{a.name}" for a in node.names]  # ``from pkg import submodule``
        stack.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path, package: str) -> Dict[str, Set[str]]:
    """``{module: modules of the package it imports}`` (see the module docstring)."""
    modules = package_modules(root, package)
    graph: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps: Set[str] = set()
        for imported in _imported_names(tree, name, path.name == "__init__.py"):
            parts = imported.split(".")
            for i in range(1, len(parts) + 1):  # the module and every package above it
                target = ".".join(parts[:i])
                if target in modules and target != name and target not in own_parents:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``[]`` when it is acyclic."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def dependency_order(graph: Dict[str, Set[str]]) -> List[str]:
    """Every module after the modules it imports (the graph must be acyclic)."""
    done: List[str] = []
    seen: Set[str] = set()

    def visit(node: str) -> None:
        seen.add(node)
        for dep in sorted(graph[node]):
            if dep not in seen:
                visit(dep)
        done.append(node)

    for node in sorted(graph):
        if node not in seen:
            visit(node)
    return done


# -----------------------------------------------------------------------------------------------
def test_the_checker_finds_cycles_through_function_level_and_package_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.sub import c  # function level\n",
        "sub/__init__.py": "from pkg.sub.c import X\n",
        "sub/c.py": "X = 1\n",
        "d.py": "from . import a\n",
        "e.py": "import os\nif __name__ == '__main__':\n    from pkg import d\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub", "pkg.sub.c"}  # the package runs before its module
    assert graph["pkg.sub.c"] == set()  # its own package is not an edge
    assert graph["pkg.d"] == {"pkg.a"}  # relative import
    assert graph["pkg.e"] == set()  # the __main__ script's imports are not the module's
    assert find_cycle(graph) == []
    (pkg / "sub" / "c.py").write_text("def g():\n    import pkg.a\n")
    cycle = find_cycle(import_graph(tmp_path, "pkg"))
    assert cycle[0] == cycle[-1] and {"pkg.a", "pkg.b", "pkg.sub.c"} <= set(cycle)


def test_seqnet_jax_has_no_import_cycle():
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 40 and "seqnet_jax.search.searcher" in graph
    assert "seqnet_jax.train_lib.train" in graph["seqnet_jax.weights_cli"]
    cycle = find_cycle(graph)
    assert cycle == [], "import cycle: " + " -> ".join(cycle)


def test_every_module_imports_in_a_fresh_interpreter_without_tensorflow():
    """One fresh interpreter imports every module in dependency order (TensorFlow must not load
    for any of them but the TFDS builders), then runs ``python -m seqnet_jax.weights``' script."""
    graph = import_graph(ROOT, PACKAGE)
    order = [m for m in dependency_order(graph) if m not in NEEDS_TENSORFLOW_DATASETS]
    script = textwrap.dedent(f"""
        import importlib, runpy, sys, warnings
        for name in {order!r}:
            importlib.import_module(name)
            assert "tensorflow" not in sys.modules, name + " imported TensorFlow"
        sys.argv = ["weights"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the module is already imported
            try:
                runpy.run_module("seqnet_jax.weights", run_name="__main__")
            except SystemExit as e:
                assert e.code == 2, e.code  # no command: the usage, exit status 2
            else:
                raise AssertionError("python -m seqnet_jax.weights did not exit")
        print("imported", len({order!r}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"imported {len(order)}" in proc.stdout
    assert "usage:" in proc.stderr and "to_orbax" in proc.stderr
