"""SeqNet speed and memory: inference per frame, gallery throughput, one training iteration, host.

    python benchmarks/benchmark.py [--config configs/cuhk.py] [--height 900 --width 1500]
        [--batch 5] [--gallery_batch 1 4] [--dtype float32|bfloat16] [--dets 16]
        [--warmup 3] [--iters 20] [--json OUT.json]
    python benchmarks/benchmark.py --host_only [--batch 5] [--iters 20] [--host_scale 1]
    (or ``python -m benchmarks.benchmark ...``)

This file is the entry point (flags, the report header, memory and compilation rows); the
measurements live beside it, one module per kind: ``inference_bench`` (detect, embed, gallery
throughput), ``train_bench`` (one training iteration), ``host_bench`` (host stages alone),
``memory_bench`` (XLA buffer sizes, ``--memory_analysis`` / ``--compile_only``) and ``common``
(timing, compile counting, machine header, inputs, table and JSON output).

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
samplers, against the plain greedy loop ``nms_reference`` (checks identical keep lists);
``--host_scale`` scales those box counts (the GPU check's CPU dry run uses 0.05).

``--json`` is rewritten after each finished phase (the timed loop, each gallery batch size), so
a run stopped later leaves the numbers it had; the compilation rows include the compile seconds
of every jitted function and the wall time of the first (compiling) call of each stage.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import jax  # noqa: E402

from benchmarks.common import (  # noqa: E402
    BACKEND_COMPILE_EVENT,
    DEFAULT_NUM_PIDS,
    CompileCounter,
    apply_overrides,
    block,
    canvas_for,
    environment,
    fmt_bytes,
    load_config,
    make_batch,
    memory,
    print_table,
    write_json,
)
from benchmarks.host_bench import bench_host, print_host  # noqa: E402
from benchmarks.inference_bench import bench_inference, print_inference  # noqa: E402
from benchmarks.memory_bench import compile_only, print_compile_only  # noqa: E402
from benchmarks.train_bench import bench_train, print_train  # noqa: E402
from seqnet_jax.modeling import seqnet  # noqa: E402


# --------------------------------------------------------------------------------- output
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
        print_inference(args, res["inference"])
    if "train" in res:
        print_train(args, res["train"])
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
    slowest = [(k, v) for k, v in comp.get("by_function", {}).items() if v["seconds"] >= 0.1]
    if slowest:
        rows.append(
            (
                "compile seconds of the slowest functions (count)",
                ", ".join(f"{k} {v['seconds']:.1f} s ({v['count']})" for k, v in slowest[:6]),
            )
        )
    for phase, key, what in (
        ("inference", "first_detect_s", "first detect() with its compilation"),
        ("train", "first_iteration_s", "first Trainer.iteration with its compilation"),
    ):
        if phase in res:
            rows.append((what, f"{res[phase][key]:.1f} s"))
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
        "--host_scale",
        type=float,
        default=1.0,
        help="--host_only: scale the box counts (12000→2000, 6000→300, 300) by this factor",
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

        def progress(phase: str):
            def save(out: dict) -> None:  # a run stopped later still leaves the finished rows
                res[phase] = out
                res["memory"] = dict(mem, latest=memory())
                res["compilations"] = counter.summary()
                if args.json:
                    write_json(args.json, res)

            return save

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
            res["inference"] = bench_inference(
                args, config, model, variables, batch, counter, progress("inference")
            )
            mem["after_inference"] = memory()
            del variables
        if not args.skip_train:
            res["train"] = bench_train(args, config, model, counter, progress("train"))
            mem["after_train"] = memory()
        res["memory"] = mem
        res["compilations"] = counter.summary()
        report(args, env, res)
    return finish(args, res)


def finish(args, res: dict) -> dict:
    if args.json:
        write_json(args.json, res)
        print(f"\nwrote {args.json}")
    return res


if __name__ == "__main__":
    main()
