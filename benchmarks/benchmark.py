"""SeqNet speed and memory: inference per frame, gallery throughput, one training iteration, host.

    python benchmarks/benchmark.py [--config configs/cuhk.py] [--height 900 --width 1500]
        [--batch 5] [--gallery_batch 1 4] [--dtype float32|bfloat16] [--dets 16]
        [--warmup 3] [--iters 20] [--json OUT.json]
    python benchmarks/benchmark.py --host_only [--batch 5] [--iters 20]
    (or ``python -m benchmarks.benchmark ...``)

Random weights (``init_variables`` of the config's model), structured random images of
``--height × --width`` padded to the pipeline's canvas (``transforms.default_buckets``: 900×1500
→ 928×1504), ``--gt_boxes`` person-like GT boxes per training image so both samplers see
positives. Every time is a median over ``--iters`` after ``--warmup`` untimed calls.

What is timed
  * Inference, one frame (batch 1), two ways:
    - ``detect() end to end``: ``SeqNetInference.detect`` as the evaluation calls it (no extra
      synchronisation) — the headline ms/frame.
    - the split: the same jitted stages and host functions called one by one with
      ``jax.block_until_ready`` after every device call and explicit ``jax.device_put`` /
      ``jax.device_get``, so device compute, host work and each transfer are separate. The sum is
      a little above the end-to-end time (the syncs cost a few dispatch round trips).
    - ``embed``: the query pass (``embed_boxes``: backbone + re-id head on one given box).
  * Gallery throughput: ``detect()`` on batches of each ``--gallery_batch`` images, frames/s.
  * Training: ``Trainer.iteration`` end to end at ``--batch`` (headline), and the same flow split
    with syncs: propose, host RPN anchor sampling, host NMS, host RoI sampling 1, stage 1, host
    RoI sampling 2, train step, and the transfers between them.
  * Peak device memory (``memory_stats()['peak_bytes_in_use']``; 'n/a' on CPU), jit cache sizes
    of every jitted stage and the number of XLA compilations (a listener on JAX's
    backend-compile event), both during warm-up and during the timed loops (must be 0). A jit
    cache holds one entry per input signature *and* per kind of caller: ``detect()`` passes numpy
    arrays, the split passes device arrays, so each shape shows up twice without a second XLA
    compile. ``--memory_analysis`` adds XLA's buffer sizes of the compiled train step (one extra
    compile; works on CPU too).
  * ``--compile_only`` lowers and compiles every stage at the requested size and prints XLA's
    buffer sizes (arguments / temp / outputs) without running anything: a memory estimate for
    a size or batch the machine cannot run (XLA:CPU numbers differ from the GPU's).
  * ``--set KEY=VALUE`` (repeatable) overrides config fields, e.g.
    ``--set model.roi_head.roi_align_impl=gather``.

How ``--dets`` controls the boxes reaching the second stage (random weights give arbitrary
scores): ``N > 0`` sets ``roi_head.score_thresh_test = -1`` (every first-stage box passes the
score test) and ``roi_head.detections_per_image_test = N``, so the unchanged stage-1 host step
(NMS 0.4 with early stop) keeps the top N boxes; the second stage then runs on the padded bucket
holding N (``stage2_buckets``) and its host step (CWS, NMS 0.5) sees N boxes. Fewer than N survive
only if NMS 0.4 leaves fewer; the table prints the measured mean. ``N = 0`` sets the threshold to
1.0 so nothing passes (no second stage: the reference's 19.6 ms lower-bound setting); ``N < 0``
keeps the config's thresholds. The stage-1 NMS then runs over all 300 boxes instead of the ~20 a
trained model keeps above 0.5: a conservative (slower) host stage.

``--host_only`` times the host stages alone on RPN-like boxes (``host_nms_bench.rpn_like_boxes``):
5 × (12000 → 2000 @ 0.7) in parallel threads and in worker processes (``--nms_processes``),
6000 → 300 @ 0.7, the test NMS steps and the
samplers, against the plain greedy loop ``nms_reference`` (checks identical keep lists).
"""

from __future__ import annotations

import argparse
import ast
import functools
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
from seqnet_jax.host import postprocess as post  # noqa: E402
from seqnet_jax.host.nms import (  # noqa: E402
    batched_nms_padded,
    nms,
    nms_reference,
    process_pool,
)
from seqnet_jax.modeling import seqnet  # noqa: E402
from seqnet_jax.ops.box_ops import remove_small_boxes_mask  # noqa: E402

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
DEFAULT_NUM_PIDS = {"cuhk_sysu": 5532, "prw": 482}


# ------------------------------------------------------------------------------ bookkeeping
class CompileCounter:
    """Counts XLA backend compilations (every jit / eager-op compile) through jax.monitoring."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.names: List[str] = []
        self._lock = threading.Lock()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            with self._lock:
                self.count += 1
                self.seconds += duration
                self.names.append(str(kwargs.get("fun_name", "?")))

    def mark(self) -> int:
        return self.count

    def since(self, mark: int) -> List[str]:
        return self.names[mark:]


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


# ------------------------------------------------------------------------------ inference
def set_dets(model_cfg, dets: int) -> None:
    rh = model_cfg.roi_head
    if dets > 0:
        rh.score_thresh_test = -1.0
        rh.detections_per_image_test = int(dets)
        if dets > max(rh.stage2_buckets):
            raise SystemExit(
                f"--dets {dets} exceeds the largest stage-2 bucket {rh.stage2_buckets}"
            )
    elif dets == 0:
        rh.score_thresh_test = 1.0  # strict '>' on a probability: nothing passes


def detect_split(inf, batch: dict, rec: Samples) -> int:
    """``SeqNetInference.detect`` (gallery pass) stage by stage with a sync after every device
    call and explicit transfers. Returns the number of boxes that reached the second stage."""
    cfg = inf.cfg
    rh, rpn = cfg.roi_head, cfg.rpn
    v = inf.variables
    t = time.perf_counter()
    images, sizes = block(jax.device_put((batch["images"], batch["image_sizes"])))
    t = rec.lap("h2d images", t)
    feat, boxes, scores = block(inf._propose(v, images, sizes))
    t = rec.lap("device: propose", t)
    boxes, scores = jax.device_get((boxes, scores))
    t = rec.lap("d2h propose top-k", t)
    props, pvalid = post.rpn_proposals(boxes, scores, rpn.nms_thresh, rpn.post_nms_topn_test)
    t = rec.lap("host: RPN NMS", t)
    props_d, pvalid_d = block(jax.device_put((props, pvalid)))
    t = rec.lap("h2d proposals", t)
    b1, s1 = block(inf._first(v, feat, props_d, pvalid_d, sizes))
    t = rec.lap("device: stage1", t)
    b1, s1 = jax.device_get((b1, s1))
    t = rec.lap("d2h stage1", t)
    kept = post.stage1_detections(
        b1, s1, pvalid, rh.score_thresh_test, rh.nms_thresh_test, rh.detections_per_image_test
    )
    b = len(kept)
    n_max = max([len(k) for k in kept] + [0])
    nb = post.pad_to_bucket(max(n_max, 1), inf.stage2_buckets)
    rois = np.zeros((b, nb, 4), np.float32)
    rvalid = np.zeros((b, nb), bool)
    for i, k in enumerate(kept):
        k = k[:nb]
        kept[i] = k
        rois[i, : len(k)] = b1[i, k]
        rvalid[i, : len(k)] = True
    t = rec.lap("host: stage1 NMS", t)
    if n_max == 0:
        return 0
    rois_d, rvalid_d = block(jax.device_put((rois, rvalid)))
    t = rec.lap("h2d stage2 boxes", t)
    b2, e2 = block(inf._second(v, feat, rois_d, rvalid_d, sizes))
    t = rec.lap("device: stage2", t)
    b2, e2 = jax.device_get((b2, e2))
    t = rec.lap("d2h stage2", t)
    for i, k in enumerate(kept):
        n = len(k)
        bx, _, _ = post.stage2_detections(
            b2[i, :n], s1[i, k], e2[i, :n], rh.nms_thresh_test_2, rh.detections_per_image_test
        )
        _ = bx / np.asarray(batch["scales"][i])[[1, 0, 1, 0]]  # back to original coordinates
    rec.lap("host: stage2 NMS/CWS", t)
    return int(rvalid.sum())


def embed_split(inf, batch: dict, box: np.ndarray, rec: Samples) -> None:
    t = time.perf_counter()
    images, sizes, boxes, valid = block(
        jax.device_put((batch["images"], batch["image_sizes"], box, np.ones(box.shape[:2], bool)))
    )
    t = rec.lap("h2d query", t)
    e = block(inf._embed(inf.variables, images, sizes, boxes, valid))
    t = rec.lap("device: embed", t)
    jax.device_get(e)
    rec.lap("d2h embedding", t)


def bench_inference(args, config, model, variables, batch, counter) -> dict:
    from seqnet_jax.inference import SeqNetInference

    model_cfg = config.model
    set_dets(model_cfg, args.dets)
    inf = SeqNetInference(model, variables, model_cfg)
    one = take(batch, 1)
    query = one["boxes"][:, :1].copy()  # (1, 1, 4): the first GT box as the query
    out: dict = {}

    mark = counter.mark()
    t0 = time.perf_counter()
    inf.detect(one)
    out["first_detect_s"] = time.perf_counter() - t0  # compiles propose/stage1/stage2
    log(f"inference: first detect() (with compilation) {out['first_detect_s']:.1f} s")
    split, e2e = Samples(), Samples()
    dets = []
    for _ in range(args.warmup):
        inf.detect(one)
        dets.append(detect_split(inf, one, Samples()))
        embed_split(inf, one, query, Samples())
    out["warmup_compilations"] = len(counter.since(mark))
    log(f"inference: {args.warmup} warm-up rounds done")
    mark = counter.mark()
    cache_before = inf.num_compilations()
    for _ in range(args.iters):
        t = time.perf_counter()
        inf.detect(one)
        e2e.lap("detect() end to end", t)
        dets.append(detect_split(inf, one, split))
        embed_split(inf, one, query, split)
    out["timed_compilations"] = counter.since(mark)
    out["jit_cache_growth_in_timed_loop"] = inf.num_compilations() - cache_before
    out["dets_reaching_stage2_mean"] = float(np.mean(dets)) if dets else 0.0
    out["split"] = split.summary()
    out["end_to_end"] = e2e.summary()

    throughput = {}
    for gb in args.gallery_batch:
        gbatch = take(batch, gb)
        m, times = median_ms(lambda gbatch=gbatch: inf.detect(gbatch), args.warmup, args.iters)
        throughput[str(gb)] = {
            "median_ms_per_batch": m,
            "frames_per_s": 1e3 * gb / m,
            "ms_per_frame": m / gb,
        }
        log(f"inference: gallery batch {gb}: {m:.1f} ms/batch")
    out["throughput"] = throughput
    out["jit_cache_sizes"] = {
        name: int(f._cache_size())
        for name, f in (
            ("propose", inf._propose),
            ("stage1", inf._first),
            ("stage2", inf._second),
            ("embed", inf._embed),
        )
    }
    out["library_timings_ms"] = {k: 1e3 * float(np.median(v)) for k, v in inf.timings.items()}
    return out


# ------------------------------------------------------------------------------- training
def iteration_split(trainer, state, batch: dict, rec: Samples):
    """``Trainer.iteration`` stage by stage with a sync after every device call and explicit
    transfers (the library overlaps the RPN anchor sampling with the propose call)."""
    from seqnet_jax.train_lib.train import device_targets

    host = trainer.host
    t = time.perf_counter()
    step = int(state.step)
    t = rec.lap("d2h step counter", t)
    dev = block(trainer.shard({"images": batch["images"], "image_sizes": batch["image_sizes"]}))
    t = rec.lap("h2d images", t)
    variables = state.variables
    boxes, scores, cache = block(trainer.propose(variables, dev["images"], dev["image_sizes"]))
    t = rec.lap("device: propose", t)
    boxes, scores = jax.device_get((boxes, scores))
    t = rec.lap("d2h propose top-k", t)
    rpn_t = host.rpn_targets(batch, step, cache["feat"].shape[1:3])
    t = rec.lap("host: RPN anchor sampling", t)
    props, pvalid = host.proposals(boxes, scores)
    t = rec.lap("host: RPN NMS", t)
    s1 = host.roi_targets(props, pvalid, batch, step, stage=1)
    t = rec.lap("host: RoI sampling 1", t)
    s1_dev = block(trainer.shard(device_targets(s1)))  # sent once, as in Trainer.iteration
    t = rec.lap("h2d sampled RoIs 1", t)
    refined, cache = block(
        trainer.first_stage(variables, cache, s1_dev["boxes"], s1_dev["valid"], dev["image_sizes"])
    )
    t = rec.lap("device: stage1", t)
    refined = np.asarray(jax.device_get(refined))
    t = rec.lap("d2h stage1 boxes", t)
    s2 = host.roi_targets(refined, s1["valid"], batch, step, stage=2)
    t = rec.lap("host: RoI sampling 2", t)
    rpn_dev, s2_dev = block((trainer.shard(rpn_t), trainer.shard(device_targets(s2))))
    t = rec.lap("h2d targets", t)
    state, metrics = block(trainer.train_step(state, rpn_dev, s1_dev, s2_dev, cache))
    t = rec.lap("device: train step", t)
    jax.device_get(metrics)
    rec.lap("d2h metrics", t)
    return state


def bench_train(args, config, model, counter) -> dict:
    from seqnet_jax.train_lib.train import Trainer, create_train_state

    config.data.batch_size = args.batch
    out: dict = {}
    t0 = time.perf_counter()
    state, tx = create_train_state(config, model, 1000, jax.random.PRNGKey(config.seed))
    trainer = Trainer(config, model, tx)
    state = jax.device_put(state, trainer.replicated)
    block(state)
    out["init_s"] = time.perf_counter() - t0
    log(f"train: state created in {out['init_s']:.1f} s")
    rng = np.random.default_rng(1)
    batches = [
        make_batch(
            rng,
            args.batch,
            args.height,
            args.width,
            config.data.max_boxes,
            args.gt_boxes,
            args.num_pids,
        )
        for _ in range(2)
    ]
    mark = counter.mark()
    t0 = time.perf_counter()
    state, _ = trainer.iteration(state, batches[0])
    out["first_iteration_s"] = time.perf_counter() - t0
    log(f"train: first iteration (with compilation) {out['first_iteration_s']:.1f} s")
    for i in range(args.warmup):
        state, _ = trainer.iteration(state, batches[i % 2])
        state = iteration_split(trainer, state, batches[(i + 1) % 2], Samples())
    out["warmup_compilations"] = len(counter.since(mark))
    log(f"train: {args.warmup} warm-up iterations done")
    trainer.timings.clear()
    mark = counter.mark()
    cache_before = trainer.num_compilations()
    split, e2e = Samples(), Samples()
    for i in range(args.iters):
        t = time.perf_counter()
        state, metrics = trainer.iteration(state, batches[i % 2])
        e2e.lap("Trainer.iteration end to end", t)
        state = iteration_split(trainer, state, batches[(i + 1) % 2], split)
    out["timed_compilations"] = counter.since(mark)
    out["jit_cache_growth_in_timed_loop"] = trainer.num_compilations() - cache_before
    out["split"] = split.summary()
    out["end_to_end"] = e2e.summary()
    out["last_loss"] = float(metrics["loss"])
    out["jit_cache_sizes"] = {
        name: int(f._cache_size())
        for name, f in (
            ("propose", trainer.propose),
            ("stage1", trainer.first_stage),
            ("train_step", trainer.train_step),
        )
    }
    out["library_timings_ms"] = {k: 1e3 * float(np.median(v)) for k, v in trainer.timings.items()}
    log(f"train: {args.iters} timed iterations done")
    if args.memory_analysis:
        log("train: compiling the train step once more for its memory analysis")
        out["memory_analysis"] = train_memory_analysis(trainer, state, batches[0])
    trainer.host.close()
    return out


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


def train_memory_analysis(trainer, state, batch: dict) -> dict:
    """The compiled train step's buffers (one extra compile, nothing executed; works on CPU).
    Targets come from the real host stages run on RPN-like proposals, so shapes are exact."""
    from seqnet_jax.train_lib.train import device_targets

    cfg = trainer.config.model
    host = trainer.host
    h, w = (int(x) for x in batch["image_sizes"][0])
    dev = trainer.shard({"images": batch["images"], "image_sizes": batch["image_sizes"]})
    cache = jax.eval_shape(trainer.propose, state.variables, dev["images"], dev["image_sizes"])[2]
    rpn_t = host.rpn_targets(batch, 0, cache["feat"].shape[1:3])
    boxes, scores = fake_proposals(
        np.random.default_rng(0), batch["images"].shape[0], cfg.rpn.pre_nms_topn_train, h, w
    )
    props, pvalid = host.proposals(boxes, scores)
    s1 = host.roi_targets(props, pvalid, batch, 0, stage=1)
    s2 = host.roi_targets(s1["boxes"], s1["valid"], batch, 0, stage=2)
    s1_dev = trainer.shard(device_targets(s1))
    stage1_args = (state.variables, cache, s1_dev["boxes"], s1_dev["valid"], dev["image_sizes"])
    out = {
        "propose": compiled_memory(
            trainer.propose, state.variables, dev["images"], dev["image_sizes"]
        ),
        "stage1": compiled_memory(trainer.first_stage, *stage1_args),
    }
    cache = jax.eval_shape(trainer.first_stage, *stage1_args)[1]
    out["train_step"] = compiled_memory(
        trainer.train_step,
        state,
        trainer.shard(rpn_t),
        s1_dev,
        trainer.shard(device_targets(s2)),
        cache,
    )
    return out


def inference_memory_analysis(inf, batch: dict, dets: int) -> dict:
    """Compiled buffers of the inference stages for one frame (nothing executed)."""
    images, sizes = batch["images"], batch["image_sizes"]
    v = inf.variables
    feat, _, _ = jax.eval_shape(inf._propose, v, images, sizes)
    p = inf.cfg.rpn.post_nms_topn_test
    b = images.shape[0]
    nb = post.pad_to_bucket(max(dets, 1), inf.stage2_buckets)
    box = functools.partial(jax.ShapeDtypeStruct, dtype=np.float32)
    mask = functools.partial(jax.ShapeDtypeStruct, dtype=np.bool_)
    return {
        "propose": compiled_memory(inf._propose, v, images, sizes),
        "stage1": compiled_memory(inf._first, v, feat, box((b, p, 4)), mask((b, p)), sizes),
        "stage2": compiled_memory(inf._second, v, feat, box((b, nb, 4)), mask((b, nb)), sizes),
    }


def compile_only(args, config, model) -> dict:
    """Memory analysis of every jitted stage at the requested size without running them."""
    from seqnet_jax.inference import SeqNetInference
    from seqnet_jax.train_lib.train import Trainer, create_train_state

    out: dict = {}
    rng = np.random.default_rng(0)
    mb, g, pids = config.data.max_boxes, args.gt_boxes, args.num_pids
    if not args.skip_inference:
        set_dets(config.model, args.dets)
        variables = seqnet.init_variables(model, jax.random.PRNGKey(0))
        inf = SeqNetInference(model, variables, config.model)
        one = make_batch(rng, 1, args.height, args.width, mb, g, pids)
        out["inference"] = inference_memory_analysis(inf, one, max(args.dets, 1))
        log("compile_only: inference stages compiled")
        del variables, inf
    if not args.skip_train:
        config.data.batch_size = args.batch
        state, tx = create_train_state(config, model, 1000, jax.random.PRNGKey(config.seed))
        trainer = Trainer(config, model, tx)
        state = jax.device_put(state, trainer.replicated)
        batch = make_batch(rng, args.batch, args.height, args.width, mb, g, pids)
        out["train"] = train_memory_analysis(trainer, state, batch)
        log("compile_only: training stages compiled")
        trainer.host.close()
    return out


def print_compile_only(args, env, res: dict) -> None:
    cfg = res["config"]
    print("\n## SeqNet compiled-buffer analysis (nothing executed)\n")
    print(f"- device: {env['device']}; jax {env['jax']}")
    print(
        f"- config {args.config}: ResNet-{cfg['depth']}, {args.dtype}, image "
        f"{args.height}×{args.width} on canvas {cfg['canvas']}, train batch {args.batch}"
    )
    rows = []
    for phase, stages in res["compiled"].items():
        for name, ma in stages.items():
            if not ma:
                continue
            rows.append(
                (
                    f"{phase}: {name}",
                    fmt_bytes(ma.get("argument_size_in_bytes")),
                    fmt_bytes(ma.get("temp_size_in_bytes")),
                    fmt_bytes(ma.get("output_size_in_bytes")),
                    fmt_bytes(ma.get("alias_size_in_bytes")),
                )
            )
    print_table(
        "XLA buffer sizes per compiled stage",
        rows,
        ("stage", "arguments", "temp", "outputs", "aliased (donated)"),
    )


# ----------------------------------------------------------------------------- host only
def bench_host(args) -> dict:
    """Host stages alone on RPN-like inputs vs the plain greedy loop."""
    from configs import default
    from seqnet_jax.train_lib.host_stages import HostStages

    cfg = default.get_config().model
    rng = np.random.default_rng(0)
    b, iters = args.batch, args.iters
    h, w = args.height, args.width
    n_ref = max(3, iters // 4)
    rows = []

    def rpn_inputs(n, nb):
        return fake_proposals(rng, nb, n, h, w)  # sorted like the device top-k

    def reference_rpn(boxes, scores, thr, k):
        out = []
        for i in range(boxes.shape[0]):
            vi = np.flatnonzero(remove_small_boxes_mask(boxes[i], post.RPN_MIN_SIZE))
            out.append(vi[nms_reference(boxes[i, vi], scores[i, vi], thr, k)])
        return out

    def check(boxes, scores, thr, k, executor=None):
        valid = remove_small_boxes_mask(boxes, post.RPN_MIN_SIZE)
        keep, kv = batched_nms_padded(boxes, scores, valid, thr, k, executor=executor)
        ref = reference_rpn(boxes, scores, thr, k)
        return all(np.array_equal(keep[i][kv[i]], ref[i]) for i in range(boxes.shape[0]))

    nproc = args.nms_processes or min(b, os.cpu_count() or 1)
    pool = process_pool(nproc)
    for name, n, k, nb, thr, ex in (
        (f"RPN NMS train, {b} images in threads", 12000, 2000, b, 0.7, None),
        (f"RPN NMS train, {b} images in {nproc} processes", 12000, 2000, b, 0.7, pool),
        ("RPN NMS train, 1 image", 12000, 2000, 1, 0.7, None),
        ("RPN NMS test, 1 image", 6000, 300, 1, 0.7, None),
    ):
        boxes, scores = rpn_inputs(n, nb)
        exact = check(boxes, scores, thr, k, ex)
        inputs = (boxes, scores, thr, k)
        fast, _ = median_ms(lambda a=inputs, e=ex: post.rpn_proposals(*a, executor=e), 2, iters)
        plain, _ = median_ms(lambda a=inputs: reference_rpn(*a), 1, n_ref)
        rows.append(
            {
                "stage": name,
                "input": f"{nb}×({n}→{k} @ {thr})",
                "fast_ms": fast,
                "ms_per_image": fast / nb,
                "plain_ms": plain,
                "plain_ms_per_image": plain / nb,
                "speedup": plain / fast,
                "exact": exact,
            }
        )

    pool.shutdown()

    # test stage-1 host step: 300 first-stage boxes, score > 0.5, NMS 0.4, cap 300
    boxes, _ = rpn_inputs(300, 1)
    s1 = rng.uniform(0, 1, (1, 300)).astype(np.float32)
    pv = np.ones((1, 300), bool)
    rh = cfg.roi_head

    def stage1(fn):
        sel = np.flatnonzero(pv[0] & (s1[0] > rh.score_thresh_test))
        return sel[fn(boxes[0, sel], s1[0, sel], rh.nms_thresh_test, rh.detections_per_image_test)]

    exact = np.array_equal(stage1(nms), stage1(nms_reference))
    fast, _ = median_ms(
        lambda: post.stage1_detections(
            boxes, s1, pv, rh.score_thresh_test, rh.nms_thresh_test, rh.detections_per_image_test
        ),
        2,
        iters,
    )
    plain, _ = median_ms(lambda: stage1(nms_reference), 1, iters)
    rows.append(
        {
            "stage": "stage-1 NMS test (score>0.5, NMS 0.4)",
            "input": "1×300",
            "fast_ms": fast,
            "ms_per_image": fast,
            "plain_ms": plain,
            "plain_ms_per_image": plain,
            "speedup": plain / fast,
            "exact": exact,
        }
    )
    emb = rng.normal(size=(20, 256)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    fast, _ = median_ms(
        lambda: post.stage2_detections(
            boxes[0, :20], s1[0, :20], emb, rh.nms_thresh_test_2, rh.detections_per_image_test
        ),
        2,
        iters,
    )
    rows.append(
        {
            "stage": "stage-2 NMS/CWS test",
            "input": "1×20",
            "fast_ms": fast,
            "ms_per_image": fast,
            "plain_ms": None,
            "plain_ms_per_image": None,
            "speedup": None,
            "exact": None,
        }
    )

    # samplers at batch b on a canvas of the given size
    hc, wc = canvas_for(h, w)
    batch = make_batch(rng, b, h, w, 64, args.gt_boxes, 5532)
    host = HostStages(cfg, seed=0, num_threads=4)
    anchors = host.canvas_anchors(batch)
    pb, ps = rpn_inputs(12000, b)
    props, pvalid = post.rpn_proposals(pb, ps, 0.7, 2000)
    s1d = host.roi_targets(props, pvalid, batch, 0, stage=1)
    for name, fn, inp in (
        (
            "RPN anchor sampling",
            lambda: host.rpn_targets(batch, 0, (hc // 16, wc // 16)),
            f"{b}×{anchors.shape[0]} anchors, {args.gt_boxes} GT → 256",
        ),
        (
            "RoI sampling 1",
            lambda: host.roi_targets(props, pvalid, batch, 0, stage=1),
            f"{b}×(2000 + GT → 128)",
        ),
        (
            "RoI sampling 2",
            lambda: host.roi_targets(s1d["boxes"], s1d["valid"], batch, 0, stage=2),
            f"{b}×(128 + GT → 128)",
        ),
    ):
        fast, _ = median_ms(fn, 2, iters)
        rows.append(
            {
                "stage": name,
                "input": inp,
                "fast_ms": fast,
                "ms_per_image": fast / b,
                "plain_ms": None,
                "plain_ms_per_image": None,
                "speedup": None,
                "exact": None,
            }
        )
    host.close()
    return {"rows": rows}


def print_host(res: dict) -> None:
    rows = []
    for r in res["rows"]:
        rows.append(
            (
                r["stage"],
                r["input"],
                ms(r["fast_ms"]),
                ms(r["ms_per_image"]),
                ms(r["plain_ms_per_image"]) if r["plain_ms_per_image"] is not None else "—",
                f"{r['speedup']:.1f}×" if r["speedup"] is not None else "—",
                {True: "yes", False: "NO", None: "—"}[r["exact"]],
            )
        )
    print_table(
        "Host stages alone (median wall ms)",
        rows,
        (
            "stage",
            "input",
            "ms/call",
            "ms/image",
            "plain greedy ms/image",
            "speed-up",
            "identical keeps",
        ),
    )


# --------------------------------------------------------------------------------- output
INFER_ORDER = (
    "h2d images",
    "device: propose",
    "d2h propose top-k",
    "host: RPN NMS",
    "h2d proposals",
    "device: stage1",
    "d2h stage1",
    "host: stage1 NMS",
    "h2d stage2 boxes",
    "device: stage2",
    "d2h stage2",
    "host: stage2 NMS/CWS",
)
TRAIN_ORDER = (
    "d2h step counter",
    "h2d images",
    "device: propose",
    "d2h propose top-k",
    "host: RPN anchor sampling",
    "host: RPN NMS",
    "host: RoI sampling 1",
    "h2d sampled RoIs 1",
    "device: stage1",
    "d2h stage1 boxes",
    "host: RoI sampling 2",
    "h2d targets",
    "device: train step",
    "d2h metrics",
)


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


def report(args, env, res) -> None:
    print("\n## SeqNet benchmark\n")
    print(
        f"- device: {env['device']} (×{env['device_count']}); CPUs: {env['cpu_count']} "
        f"({env['cpus_usable']} usable); host {env['host']}"
    )
    print(
        f"- jax {env['jax']}, jaxlib {env['jaxlib']}, flax {env['flax']}, optax {env['optax']}, "
        f"numpy {env['numpy']}, python {env['python']}"
    )
    cfg = res.get("config", {})
    if cfg:
        print(
            f"- config {args.config}: ResNet-{cfg['depth']} width {cfg['width']}, "
            f"{args.dtype}, image {args.height}×{args.width} on canvas {cfg['canvas']}, "
            f"median of {args.iters} after {args.warmup} warm-up"
        )
        if args.set:
            print(f"- overrides: {' '.join(args.set)}")
    if "inference" in res:
        inf = res["inference"]
        print_table(
            f"Inference, 1 frame (--dets {args.dets}: mean "
            f"{inf['dets_reaching_stage2_mean']:.1f} boxes reached stage 2)",
            split_rows(inf["split"], INFER_ORDER)
            + [
                (
                    "**detect() end to end (headline)**",
                    ms(inf["end_to_end"]["detect() end to end"]["median_ms"]),
                    ms(inf["end_to_end"]["detect() end to end"]["min_ms"]),
                ),
                ("query: h2d image+box", ms(inf["split"]["h2d query"]["median_ms"]), ""),
                (
                    "query: device: embed",
                    ms(inf["split"]["device: embed"]["median_ms"]),
                    ms(inf["split"]["device: embed"]["min_ms"]),
                ),
            ],
            ("stage", "median ms", "min ms"),
        )
        print_table(
            "Gallery throughput (detect() on a batch)",
            [
                (
                    gb,
                    ms(v["median_ms_per_batch"]),
                    ms(v["ms_per_frame"]),
                    f"{v['frames_per_s']:.1f}",
                )
                for gb, v in inf["throughput"].items()
            ],
            ("batch", "ms/batch", "ms/frame", "frames/s"),
        )
    if "train" in res:
        tr = res["train"]
        e2e = tr["end_to_end"]["Trainer.iteration end to end"]
        print_table(
            f"Training iteration, batch {args.batch}",
            split_rows(tr["split"], TRAIN_ORDER)
            + [
                (
                    "**Trainer.iteration end to end (headline)**",
                    ms(e2e["median_ms"]),
                    ms(e2e["min_ms"]),
                )
            ],
            ("stage", "median ms", "min ms"),
        )
    mem = res.get("memory", {})
    comp = res.get("compilations", {})
    rows = [
        (
            "peak device memory after inference",
            fmt_bytes(mem.get("after_inference", {}).get("peak_bytes_in_use")),
        ),
        (
            "peak device memory after training",
            fmt_bytes(mem.get("after_train", {}).get("peak_bytes_in_use")),
        ),
        (
            "device memory in use after setup (params)",
            fmt_bytes(mem.get("after_setup", {}).get("bytes_in_use")),
        ),
    ]
    if "train" in res and "memory_analysis" in res["train"]:
        ma = res["train"]["memory_analysis"]["train_step"]
        rows.append(
            (
                "train step XLA buffers: args / temp / output",
                " / ".join(
                    fmt_bytes(ma.get(k))
                    for k in (
                        "argument_size_in_bytes",
                        "temp_size_in_bytes",
                        "output_size_in_bytes",
                    )
                ),
            )
        )
    for phase in ("inference", "train"):
        if phase in res:
            r = res[phase]
            rows.append(
                (
                    f"{phase}: jit cache entries (one per input shape)",
                    ", ".join(f"{k} {v}" for k, v in r["jit_cache_sizes"].items()),
                )
            )
            rows.append(
                (
                    f"{phase}: XLA compilations in warm-up / timed loops",
                    f"{r['warmup_compilations']} / {len(r['timed_compilations'])}"
                    + (
                        " (RECOMPILED: " + ", ".join(sorted(set(r["timed_compilations"]))) + ")"
                        if r["timed_compilations"]
                        else ""
                    ),
                )
            )
    rows.append(
        (
            "XLA compilations in total (compile seconds)",
            f"{comp.get('total', 0)} ({comp.get('seconds', 0):.1f} s)"
            if comp.get("total")
            else f"n/a (no {BACKEND_COMPILE_EVENT} events seen on this jax)",
        )
    )
    print_table("Memory and compilations", rows, ("what", "value"))


# ----------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--config",
        default=os.path.join(_ROOT, "configs", "cuhk.py"),
        help="config file with get_config() (default configs/cuhk.py)",
    )
    p.add_argument("--height", type=int, default=900, help="resized image height")
    p.add_argument("--width", type=int, default=1500, help="resized image width")
    p.add_argument("--batch", type=int, default=5, help="training batch (images per step)")
    p.add_argument(
        "--gallery_batch",
        type=int,
        nargs="+",
        default=[1],
        help="inference batch sizes for the throughput rows, e.g. 1 4",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default=None,
        help="model.compute_dtype (default: the config's)",
    )
    p.add_argument(
        "--dets",
        type=int,
        default=16,
        help="boxes reaching the second stage (0: none, <0: config thresholds)",
    )
    p.add_argument("--gt_boxes", type=int, default=6, help="GT person boxes per training image")
    p.add_argument(
        "--num_pids",
        type=int,
        default=0,
        help="OIM lookup-table size (0: config lut_size, else 5532 CUHK / 482 PRW)",
    )
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--skip_inference", action="store_true")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument(
        "--memory_analysis",
        action="store_true",
        help="also compile the train step once more for XLA's buffer sizes",
    )
    p.add_argument("--host_only", action="store_true", help="time the host stages alone")
    p.add_argument(
        "--nms_processes",
        type=int,
        default=0,
        help="worker processes for the batched RPN NMS row (0: min(batch, CPU count))",
    )
    p.add_argument(
        "--compile_only",
        action="store_true",
        help="compile every stage at the given size and print XLA's buffer sizes; run nothing",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set model.roi_head.roi_align_impl=gather",
    )
    p.add_argument("--json", default="", help="write every number to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    counter = CompileCounter()
    env = environment()
    res: dict = {"env": env, "args": vars(args)}
    if args.host_only:
        res["host"] = bench_host(args)
        print(
            f"\n## Host stages: {env['cpu_count']} CPUs ({env['cpus_usable']} usable), "
            f"numpy {env['numpy']}, python {env['python']}, median of {args.iters}"
        )
        print_host(res["host"])
    else:
        config = load_config(args.config)
        apply_overrides(config, args.set)
        if args.dtype:
            config.model.compute_dtype = args.dtype
        args.dtype = config.model.compute_dtype
        if args.num_pids <= 0:
            lut = config.model.oim.lut_size
            args.num_pids = (
                int(lut)
                if lut > 0
                else DEFAULT_NUM_PIDS.get(
                    config.data.dataset, int(config.data.synthetic.get("num_train_ids", 100))
                )
            )
        model = seqnet.build_model(config.model, args.num_pids)
        res["config"] = {
            "depth": model.depth,
            "width": model.width,
            "canvas": "×".join(map(str, canvas_for(args.height, args.width))),
            "num_pids": args.num_pids,
            "dtype": args.dtype,
        }
        mem: dict = {}
        if args.compile_only:
            res["compiled"] = compile_only(args, config, model)
            print_compile_only(args, env, res)
            return finish(args, res)
        if not args.skip_inference:
            variables = seqnet.init_variables(model, jax.random.PRNGKey(0))
            block(variables)
            mem["after_setup"] = memory()
            batch = make_batch(
                np.random.default_rng(0),
                max(args.gallery_batch),
                args.height,
                args.width,
                config.data.max_boxes,
                args.gt_boxes,
                args.num_pids,
            )
            res["inference"] = bench_inference(args, config, model, variables, batch, counter)
            mem["after_inference"] = memory()
            del variables
        if not args.skip_train:
            res["train"] = bench_train(args, config, model, counter)
            mem["after_train"] = memory()
        res["memory"] = mem
        res["compilations"] = {"total": counter.count, "seconds": counter.seconds}
        report(args, env, res)
    return finish(args, res)


def finish(args, res: dict) -> dict:
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
        print(f"\nwrote {args.json}")
    return res


if __name__ == "__main__":
    main()
