"""GPU check, part a: versions, device, CPU count, the packages the check imports, a first call.

    python benchmarks/gpu_env.py [--tiny] [--json OUT.json]

Imports every module the check's parts use (``CHECK_MODULES``) and lists the third-party
packages they import at module level; any that is neither on the lent GPU machine
(``DEVICE_PACKAGES``) nor carried there (``CARRIED``) is reported, so a new dependency shows up
in the CPU dry run (tests/test_gpu_check.py) before a lease is spent on it.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Pure-Python packages the lent GPU machine lacks: ``gpu_check.py --prepare`` copies them into
# .whl/py, which the device call carries and gpu_check.sh puts on PYTHONPATH. (ml_collections
# needs absl-py and PyYAML, clu's metrics and parameter_overview (the training loop) need flax,
# jax, numpy and wrapt: all on the machine.)
CARRIED = ("ml_collections", "clu")
# Import names of packages the lent machine has (the device README's KINDS.md list, read
# 2026-11-17) that this project's modules may import at module level.
DEVICE_PACKAGES = (
    "absl",
    "chex",
    "etils",
    "flax",
    "jax",
    "jaxlib",
    "matplotlib",
    "msgpack",
    "numpy",
    "optax",
    "orbax",
    "PIL",
    "psutil",
    "scipy",
    "tensorstore",
    "torch",
    "torchvision",
    "tqdm",
    "typing_extensions",
    "yaml",
)
# The modules the parts import.
CHECK_MODULES = (
    "benchmarks.benchmark",
    "benchmarks.gpu_check",
    "benchmarks.gpu_report",
    "benchmarks.train_run",
    "configs.cuhk",
    "seqnet_jax.checkpoints",
    "seqnet_jax.data.cuhk_sysu",
    "seqnet_jax.data.fake_datasets",
    "seqnet_jax.data.pipeline",
    "seqnet_jax.inference",
    "seqnet_jax.train_lib.train",
)
LOCAL_PACKAGES = ("benchmarks", "configs", "seqnet_jax", "tests")
VERSIONS_OF = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "scipy",
    "pillow",
    "ml_collections",
    "absl-py",
    "PyYAML",
    "tensorboardX",
)


def module_level_imports(path: str) -> set:
    """Top-level names of the absolute imports a module makes at module level (in ``try`` /
    ``if`` / ``with`` blocks too; not inside functions or classes, which import lazily)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    names, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, (ast.Try, ast.If, ast.With, ast.ExceptHandler)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo.extend(getattr(node, field, []))
    return names


def third_party_imports() -> Dict[str, List[str]]:
    """Third-party packages imported at module level by the project modules loaded in this
    process, each with the modules that import it."""
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
    used: Dict[str, List[str]] = {}
    for name, mod in list(sys.modules.items()):
        path = getattr(mod, "__file__", None) or ""
        if name.split(".")[0] not in LOCAL_PACKAGES or not path.endswith(".py"):
            continue
        if not os.path.abspath(path).startswith(ROOT + os.sep):
            continue
        for top in module_level_imports(path):
            if top not in LOCAL_PACKAGES and top not in stdlib:
                used.setdefault(top, []).append(name)
    return {k: sorted(v) for k, v in sorted(used.items())}


def package_versions() -> Dict[str, Optional[str]]:
    from importlib import metadata

    out = {}
    for dist in VERSIONS_OF:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def nvidia_smi() -> str:
    query = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
    try:
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"nvidia-smi not available ({type(e).__name__})"
    return smi.stdout.strip() or smi.stderr.strip()


def check(tiny: bool) -> dict:
    import importlib

    res: dict = {"python": sys.version.split()[0], "executable": sys.executable}
    errors = {}
    for name in CHECK_MODULES:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - reported; the other parts show what follows
            errors[name] = f"{type(e).__name__}: {e}"
    used = third_party_imports()
    allowed = set(DEVICE_PACKAGES) | set(CARRIED)
    res["import_errors"] = errors
    res["third_party_imports"] = used
    res["not_on_the_device"] = {k: v for k, v in used.items() if k not in allowed}
    res["packages"] = package_versions()

    import jax
    import jax.numpy as jnp

    from benchmarks import common

    res["env"] = env = common.environment()
    res["devices"] = [str(d) for d in jax.devices()]
    res["memory"] = common.memory()
    res["nvidia_smi"] = nvidia_smi()
    counter = common.CompileCounter()  # the other parts count compilations the same way
    n = 256 if tiny else 8192
    f = jax.jit(lambda x: (x @ x).sum())
    x = jnp.ones((n, n), jnp.float32)
    t0 = time.perf_counter()
    f(x).block_until_ready()
    res["first_jit_call_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(5):
        y = f(x)
    y.block_until_ready()
    res["matmul_n"], res["matmul_ms"] = n, 1e3 * (time.perf_counter() - t0) / 5
    # without JAX's compile events every "0 compilations" row of the check would mean nothing
    res["compile_events_seen"] = counter.count > 0
    print(f"- device: {env['device']} (×{env['device_count']}); {res['nvidia_smi']}")
    print(f"- CPUs: {env['cpu_count']} ({env['cpus_usable']} usable); python {res['python']}")
    print("- packages: " + ", ".join(f"{k} {v}" for k, v in res["packages"].items() if v))
    print(
        f"- first jitted call (compile + run) {res['first_jit_call_s']:.2f} s; float32 {n}×{n} "
        f"matmul {res['matmul_ms']:.2f} ms"
    )
    print("- third-party imports: " + ", ".join(used))
    if not res["compile_events_seen"]:
        print(f"NO COMPILE EVENTS ({common.BACKEND_COMPILE_EVENT}): compilations are not counted")
    for k, v in errors.items():
        print(f"IMPORT ERROR {k}: {v}")
    for k, v in res["not_on_the_device"].items():
        print(f"NOT ON THE GPU MACHINE: {k} (imported by {', '.join(v)}): add it to CARRIED")
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="a small first call (CPU dry run)")
    p.add_argument("--json", default="", help="write the results to this JSON file")
    args = p.parse_args(argv)
    res = check(args.tiny)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    bad = res["import_errors"] or res["not_on_the_device"] or not res["compile_events_seen"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
