"""Inference benchmark: ``SeqNetInference.detect`` end to end and split stage by stage, the query
embedding, and gallery throughput at several batch sizes (see ``benchmark.py``'s docstring)."""

from __future__ import annotations

import time

import jax
import numpy as np

from benchmarks.common import Samples, block, log, median_ms, ms, print_table, split_rows, take
from seqnet_jax.host import postprocess as post


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


def bench_inference(args, config, model, variables, batch, counter, progress=None) -> dict:
    """The inference rows (see the module docstring). ``progress(out)``, if given, is called
    with the results so far after the timed loop and after each gallery batch size."""
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
    out["throughput"] = throughput = {}
    if progress:
        progress(out)

    for gb in args.gallery_batch:
        gbatch = take(batch, gb)
        m, times = median_ms(lambda gbatch=gbatch: inf.detect(gbatch), args.warmup, args.iters)
        throughput[str(gb)] = {
            "median_ms_per_batch": m,
            "frames_per_s": 1e3 * gb / m,
            "ms_per_frame": m / gb,
        }
        log(f"inference: gallery batch {gb}: {m:.1f} ms/batch")
        if progress:
            progress(out)
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


def print_inference(args, inf: dict) -> None:
    """The inference split and the gallery-throughput tables of ``bench_inference``'s result."""
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
