"""The import graph of ``seqnet_jax``: no cycles, and every module imports on its own.

The graph is read with ``ast`` from every ``.py`` file of the package. An edge ``X -> Y`` means
that X imports module Y somewhere: at module level or inside a function or method (a
function-level import is still a dependency; the weights <-> train_lib.train cycle was one).
Importing ``a.b.c`` also executes the packages ``a.b`` and ``a``, i.e. their ``__init__``'s
import-time (module-level) imports, so X gets edges to those too; the functions of a package's
``__init__`` (e.g. ``data.build_dataset``'s per-dataset imports) run only when called, and a
module's own parent packages are already initialising when it runs. Code under
``if __name__ == "__main__":`` is the script ``python -m`` runs, a separate module ``__main__``
that nothing imports: its imports are not edges of the module.
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


def _imported_modules(
    tree: ast.Module, module: str, is_package: bool, modules: Set[str]
) -> List[tuple]:
    """``(module imported, at import time)`` for every import in ``tree`` of a module in
    ``modules``, except under ``if __name__ == "__main__"``; ``at import time`` is False inside
    functions. ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg``.
    """
    out: List[tuple] = []
    stack: List[tuple] = [(n, True) for n in tree.body if not _is_main_guard(n)]
    while stack:
        node, at_import = stack.pop()
        if isinstance(node, ast.Import):
            out += [(a.name, at_import) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")
                if not is_package:
                    base_parts = base_parts[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub if sub in modules else base, at_import))
        inner = at_import and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))
    return [(m, now) for m, now in out if m in modules]


def import_graph(root: Path, package: str) -> Dict[str, Set[str]]:
    """``{module: modules of the package it depends on}`` (see the module docstring)."""
    modules = package_modules(root, package)
    imports, at_import = {}, {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        found = _imported_modules(tree, name, path.name == "__init__.py", set(modules))
        imports[name] = {m for m, _ in found}
        at_import[name] = {m for m, now in found if now}
    graph: Dict[str, Set[str]] = {}
    for name in modules:
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        deps = set(imports[name])
        for target in imports[name]:
            parts = target.split(".")
            for i in range(1, len(parts)):  # the packages above it run their import-time imports
                parent = ".".join(parts[:i])
                if parent not in own_parents:
                    deps |= at_import.get(parent, set())
        graph[name] = deps - {name} - own_parents
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
        "__init__.py": "def make():\n    from pkg import a  # runs only when called\n",
        "a.py": "from pkg import b\n",
        "b.py": "def f():\n    from pkg.sub import d  # function level\n",
        "sub/__init__.py": "from pkg.sub.c import X\n",
        "sub/c.py": "X = 1\n",
        "sub/d.py": "",
        "e.py": "from . import a\nimport os\nif __name__ == '__main__':\n    from pkg import f\n",
        "f.py": "from pkg.sub import c\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg"] == {"pkg.a"}
    assert graph["pkg.a"] == {"pkg.b"}  # pkg's function-level import does not run for pkg.a
    assert graph["pkg.b"] == {"pkg.sub.d", "pkg.sub.c"}  # pkg.sub's __init__ runs first
    assert graph["pkg.sub"] == {"pkg.sub.c"} and graph["pkg.sub.c"] == set()
    assert graph["pkg.e"] == {"pkg.a"}  # relative; the __main__ script's imports are not edges
    assert find_cycle(graph) == []
    assert dependency_order(graph).index("pkg.b") < dependency_order(graph).index("pkg.a")
    # A function-level import closing a loop is a cycle ...
    (pkg / "sub" / "d.py").write_text("def g():\n    import pkg.a\n")
    cycle = find_cycle(import_graph(tmp_path, "pkg"))
    assert cycle[0] == cycle[-1] and {"pkg.a", "pkg.b", "pkg.sub.d"} <= set(cycle)
    # ... and so is one through a package's import-time imports (b -> sub/__init__ -> c -> a).
    (pkg / "sub" / "d.py").write_text("")
    (pkg / "sub" / "c.py").write_text("import pkg.a\nX = 1\n")
    cycle = find_cycle(import_graph(tmp_path, "pkg"))
    assert {"pkg.a", "pkg.b", "pkg.sub.c"} <= set(cycle)


def test_seqnet_jax_has_no_import_cycle():
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 40 and "seqnet_jax.search.searcher" in graph
    assert "seqnet_jax.model_loading" in graph["seqnet_jax.weights_cli"]
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
