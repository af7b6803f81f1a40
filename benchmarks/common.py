"""Shared helpers of the SeqNet benchmarks: timing, inputs, config loading and the report.

* timing: ``Samples`` (named durations, medians), ``median_ms`` (median after warm-up calls),
  ``block`` (``jax.block_until_ready``), ``log`` (progress on stderr);
* compilations: ``CompileCounter`` (XLA backend compiles through ``jax.monitoring``);
* memory: ``memory`` (the device allocator's statistics), ``compiled_memory`` (XLA's buffer
  sizes of a compiled function);
* the machine: ``environment`` (device, versions, CPU count);
* inputs: ``load_config`` / ``apply_overrides``, ``make_batch`` (structured random images with
  person-like GT boxes, padded like the input pipeline), ``fake_proposals`` (RPN-like boxes);
* report: ``print_table``, ``ms``, ``fmt_bytes``, ``split_rows`` (device / host / transfer rows
  and their sums), ``write_json`` (atomic, so it can be rewritten as a run goes).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402

from benchmarks.host_nms_bench import rpn_like_boxes  # noqa: E402
from seqnet_jax.data import transforms  # noqa: E402

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
DEFAULT_NUM_PIDS = {"cuhk_sysu": 5532, "prw": 482}


# ------------------------------------------------------------------------------ bookkeeping
class CompileCounter:
    """Counts XLA backend compilations (every jit / eager-op compile) through jax.monitoring."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.names: List[str] = []
        self.durations: List[float] = []
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.count += 1
                self.seconds += duration
                self.names.append(str(kwargs.get("fun_name", "?")))
                self.durations.append(float(duration))

    def mark(self) -> int:
        return self.count

    def since(self, mark: int) -> List[str]:
        return self.names[mark:]

    def seconds_since(self, mark: int) -> float:
        return float(sum(self.durations[mark:]))

    def summary(self) -> dict:
        """Total count and seconds, and per compiled function (``fun_name``) its count and
        seconds, slowest first: the compile time of each stage."""
        by: Dict[str, List[float]] = defaultdict(list)
        for name, d in zip(self.names, self.durations):
            by[name].append(d)
        order = sorted(by, key=lambda k: -sum(by[k]))
        return {
            "total": self.count,
            "seconds": self.seconds,
            "by_function": {k: {"count": len(by[k]), "seconds": sum(by[k])} for k in order},
        }


class Samples:
    """Named lists of durations (seconds)."""

    def __init__(self):
        self.data: Dict[str, List[float]] = defaultdict(list)

    def lap(self, name: str, t0: float) -> float:
        t = time.perf_counter()
        self.data[name].append(t - t0)
        return t

    def median_ms(self, name: str) -> float:
        v = self.data.get(name)
        return 1e3 * float(np.median(v)) if v else float("nan")

    def summary(self) -> Dict[str, dict]:
        return {
            k: {
                "median_ms": 1e3 * float(np.median(v)),
                "min_ms": 1e3 * float(np.min(v)),
                "mean_ms": 1e3 * float(np.mean(v)),
                "n": len(v),
            }
            for k, v in self.data.items()
        }


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr (a full-size CPU run takes many minutes)."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def block(tree):
    return jax.block_until_ready(tree)


def median_ms(fn: Callable[[], object], warmup: int, iters: int) -> tuple[float, list]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times)), times


def memory() -> Dict[str, Optional[int]]:
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - some backends raise instead of returning None
        stats = None
    if not stats:
        return {"peak_bytes_in_use": None, "bytes_in_use": None, "bytes_limit": None}
    return {k: stats.get(k) for k in ("peak_bytes_in_use", "bytes_in_use", "bytes_limit")}


def fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def environment() -> dict:
    import flax
    import jaxlib
    import optax

    dev = jax.devices()[0]
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    return {
        "device": f"{dev.platform}: {dev.device_kind}",
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "host": platform.node(),
    }


def print_table(title: str, rows: List[tuple], header: tuple) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(" --- " for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def ms(x: float) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


# --------------------------------------------------------------------------------- inputs
def load_config(path: str):
    spec = importlib.util.spec_from_file_location("benchmark_config", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"loading {path} failed: {e}. The configs need ml_collections (pure Python, with "
            "absl-py and PyYAML); see BENCHMARKS.md for carrying them to a machine without them."
        ) from e
    return module.get_config()


def apply_overrides(config, overrides: List[str]) -> None:
    """``key.path=value`` strings (values parsed as Python literals, else kept as strings)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = getattr(node, name)
        if leaf not in node:
            raise SystemExit(f"--set {item}: no config field {key!r}")
        setattr(node, leaf, value)


def canvas_for(height: int, width: int) -> tuple[int, int]:
    """The padded canvas the input pipeline uses for an image resized to ``height × width``."""
    lo, hi = min(height, width), max(height, width)
    return transforms.choose_bucket([(height, width)], transforms.default_buckets(lo, hi))


def person_boxes(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``(n, 4)`` person-like xyxy boxes inside an ``h × w`` image (height 12–45 % of the image,
    width 0.35–0.5 of the height)."""
    bh = rng.uniform(0.12, 0.45, n) * h
    bw = bh * rng.uniform(0.35, 0.5, n)
    x1 = rng.uniform(0, w - bw)
    y1 = rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)


def make_batch(
    rng: np.random.Generator,
    b: int,
    height: int,
    width: int,
    max_boxes: int,
    n_gt: int,
    num_pids: int,
) -> dict:
    """A padded batch like ``seqnet_jax.data.pipeline`` yields (float32 0..255 images)."""
    hc, wc = canvas_for(height, width)
    n_gt = min(n_gt, max_boxes)
    images = np.zeros((b, hc, wc, 3), np.float32)
    boxes = np.zeros((b, max_boxes, 4), np.float32)
    pids = np.zeros((b, max_boxes), np.int32)
    box_valid = np.zeros((b, max_boxes), bool)
    yy = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    for i in range(b):
        base = np.stack(
            [
                128 + 90 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(3 * yy),
                128 + 90 * np.cos(5 * yy + rng.uniform(0, 6)) + 0 * xx,
                100 + 60 * np.sin(4 * (xx + yy) + rng.uniform(0, 6)),
            ],
            -1,
        )
        base = base + rng.normal(0, 12, base.shape).astype(np.float32)
        gt = person_boxes(rng, n_gt, height, width)
        for x1, y1, x2, y2 in gt.astype(int):
            base[y1:y2, x1:x2] = rng.uniform(0, 255, 3)  # a "person": a flat coloured block
        images[i, :height, :width] = np.clip(base, 0, 255)
        boxes[i, :n_gt] = gt
        labeled = max(1, (2 * n_gt) // 3)
        pids[i, :n_gt] = -1
        pids[i, :labeled] = rng.integers(1, num_pids + 1, labeled)
        box_valid[i, :n_gt] = True
    return {
        "images": images,
        "image_sizes": np.tile(np.asarray([[height, width]], np.int32), (b, 1)),
        "orig_sizes": np.tile(np.asarray([[height, width]], np.int32), (b, 1)),
        "scales": np.ones((b, 2), np.float32),
        "boxes": boxes,
        "pids": pids,
        "box_valid": box_valid,
    }


def take(batch: dict, n: int) -> dict:
    """The first ``n`` images of ``batch`` (repeating images if ``n`` exceeds its size)."""
    idx = np.arange(n) % batch["images"].shape[0]
    return {k: v[idx] for k, v in batch.items()}


# --------------------------------------------------------------------------------- memory
MEMORY_KEYS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
)


def compiled_memory(jitted, *args) -> dict:
    """XLA's buffer accounting of ``jitted`` compiled for ``args`` (arrays or
    ``ShapeDtypeStruct``s): lowers and compiles, runs nothing."""
    ma = jitted.lower(*args).compile().memory_analysis()
    if ma is None:
        return {}
    return {k: int(getattr(ma, k)) for k in MEMORY_KEYS if hasattr(ma, k)}


def fake_proposals(rng, b: int, n: int, height: int, width: int):
    """``(B, n, 4)`` RPN-like boxes (``host_nms_bench.rpn_like_boxes``: 60 % jittered copies of a
    dozen person boxes, 40 % anchor-like boxes anywhere) and ``(B, n)`` scores, sorted by score
    like the device top-k."""
    # generated at 900×1500 (the helper assumes that scale), then scaled to height × width
    data = [rpn_like_boxes(rng, n, width=1500.0, height=900.0) for _ in range(b)]
    scale = np.asarray([width / 1500, height / 900, width / 1500, height / 900], np.float32)
    boxes = np.stack([d[0] for d in data]) * scale
    scores = np.stack([d[1] for d in data])
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(boxes, order[..., None], 1), np.take_along_axis(scores, order, 1)


# --------------------------------------------------------------------------------- report
def split_rows(split: dict, order) -> List[tuple]:
    rows, groups = [], defaultdict(float)
    for k in order:
        if k not in split:
            continue
        m = split[k]["median_ms"]
        kind = k.split(":")[0] if ":" in k else "transfer"
        groups[kind] += m
        rows.append((k, ms(m), ms(split[k]["min_ms"])))
    total = sum(groups.values())
    for kind in ("device", "host", "transfer"):
        rows.append((f"**sum {kind}**", ms(groups[kind]), ""))
    rows.append(("**sum of the split**", ms(total), ""))
    return rows


def write_json(path: str, res: dict) -> None:
    """``res`` as indented JSON (values JSON cannot hold are written as strings)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=2, default=str)
    os.replace(tmp, path)  # atomic: a run killed mid-write leaves the previous file intact
