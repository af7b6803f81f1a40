"""Host stages alone: the RPN NMS (threads and worker processes), the test NMS steps and the
samplers on RPN-like inputs, against the plain greedy loop ``nms_reference`` (identical keeps)."""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import canvas_for, fake_proposals, make_batch, median_ms, ms, print_table
from seqnet_jax.host import postprocess as post
from seqnet_jax.host.nms import batched_nms_padded, nms, nms_reference, process_pool
from seqnet_jax.ops.box_ops import remove_small_boxes_mask


def bench_host(args) -> dict:
    """Host stages alone on RPN-like inputs vs the plain greedy loop."""
    from configs import default
    from seqnet_jax.train_lib.host_stages import HostStages

    cfg = default.get_config().model
    rng = np.random.default_rng(0)
    b, iters = args.batch, args.iters
    h, w = args.height, args.width
    n_ref = max(3, iters // 4)
    sc = getattr(args, "host_scale", 1.0)

    def n_of(n: int) -> int:  # box counts scaled by --host_scale (1: the reference sizes)
        return max(1, int(round(n * sc)))

    n_train, k_train, n_test, k_test = n_of(12000), n_of(2000), n_of(6000), n_of(300)
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
        (f"RPN NMS train, {b} images in threads", n_train, k_train, b, 0.7, None),
        (f"RPN NMS train, {b} images in {nproc} processes", n_train, k_train, b, 0.7, pool),
        ("RPN NMS train, 1 image", n_train, k_train, 1, 0.7, None),
        ("RPN NMS test, 1 image", n_test, k_test, 1, 0.7, None),
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
    boxes, _ = rpn_inputs(k_test, 1)
    s1 = rng.uniform(0, 1, (1, k_test)).astype(np.float32)
    pv = np.ones((1, k_test), bool)
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
            "input": f"1×{k_test}",
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
    n2 = min(20, k_test)
    emb = emb[:n2]
    fast, _ = median_ms(
        lambda: post.stage2_detections(
            boxes[0, :n2], s1[0, :n2], emb, rh.nms_thresh_test_2, rh.detections_per_image_test
        ),
        2,
        iters,
    )
    rows.append(
        {
            "stage": "stage-2 NMS/CWS test",
            "input": f"1×{n2}",
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
    pb, ps = rpn_inputs(n_train, b)
    props, pvalid = post.rpn_proposals(pb, ps, 0.7, k_train)
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
            f"{b}×({k_train} + GT → 128)",
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
