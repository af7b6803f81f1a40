"""Speed of the evaluation on a synthetic CUHK-SYSU-sized problem.

2,900 queries, 6,978 gallery images with ~8 detections each (score >= 0.5, plus a few below),
256-d features, explicit protocols TestG50..TestG4000 (generated, nested like the real ones) plus
the full set (every other gallery image), each with and without CBGM (k1=10, k2=3); detection
recall/AP (all and labeled-only) on top. Everything runs through ``evaluate_all``; the report
writing is timed separately.

    python benchmarks/eval_speed.py [--queries 2900] [--gallery 6978] [--out /tmp/eval_speed]

Restrict to 2 cores with e.g. ``taskset -c 0,1`` (BLAS threads follow the affinity).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqnet_jax.data.types import (  # noqa: E402
    UNLABELED_PID,
    ImageAnnotation,
    PersonSearchDataset,
    Query,
)
from seqnet_jax.evaluation import evaluator, protocols  # noqa: E402
from seqnet_jax.evaluation.detection import eval_detection  # noqa: E402
from seqnet_jax.evaluation.search import SearchConfig, SearchEvaluator  # noqa: E402

GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_problem(
    num_queries: int = 2900,
    num_gallery: int = 6978,
    dets_per_image: int = 8,
    dim: int = 256,
    sizes=GALLERY_SIZES,
    seed: int = 0,
):
    """A synthetic CUHK-SYSU-like problem.

    Returns ``(dataset, feats)`` where ``feats`` holds the ``evaluate_all`` keyword inputs.
    Query ``q`` (pid ``q + 1``) stands in one query image and 1-3 further gallery images; each GT
    person has a jittered detection whose feature is near the identity's embedding (or is missed
    with probability 0.05); the rest of the detections are background people / false alarms.
    """
    rng = np.random.default_rng(seed)
    n_img = num_gallery
    persons = rng.integers(4, 9, size=n_img)  # GT boxes per image
    # Each query's appearances: its query image + 1..3 more, drawn without overlap of identities.
    appear = [rng.choice(n_img, size=rng.integers(2, 5), replace=False) for _ in range(num_queries)]
    labeled = [[] for _ in range(n_img)]
    for q, imgs in enumerate(appear):
        for g in imgs:
            labeled[g].append(q + 1)
    persons = np.maximum(persons, [len(x) for x in labeled])
    pids = [
        np.r_[labeled[g], np.full(persons[g] - len(labeled[g]), UNLABELED_PID)].astype(np.int32)
        for g in range(n_img)
    ]
    gallery = []
    for g in range(n_img):
        n = persons[g]
        x1 = rng.uniform(0, 1600, n)
        y1 = rng.uniform(0, 600, n)
        w = rng.uniform(15, 200, n)
        h = w * rng.uniform(1.8, 3.0, n)
        boxes = np.stack([x1, y1, x1 + w, y1 + h], 1).astype(np.float32)
        gallery.append(ImageAnnotation(f"s{g}.jpg", boxes, pids[g], -1, 1080, 1920))
    ident = _unit(rng.standard_normal((num_queries + 1, dim))).astype(np.float32)

    dets, feats = [], []
    for a in gallery:
        n = a.boxes.shape[0]
        wh = a.boxes[:, 2:] - a.boxes[:, :2]
        jit = rng.normal(0, 0.05, (n, 4)) * np.concatenate([wh, wh], 1)
        gt_dets = a.boxes + jit
        keep = rng.random(n) > 0.05
        extra = max(0, dets_per_image + 1 - int(keep.sum()))
        ex1 = rng.uniform(0, 1700, extra)
        ey1 = rng.uniform(0, 700, extra)
        ew = rng.uniform(20, 150, extra)
        extra_boxes = np.stack([ex1, ey1, ex1 + ew, ey1 + 2.5 * ew], 1)
        boxes = np.concatenate([gt_dets[keep], extra_boxes]).astype(np.float32)
        score = np.concatenate([rng.uniform(0.6, 1.0, keep.sum()), rng.uniform(0.3, 0.9, extra)])
        pid = np.concatenate([a.pids[keep], np.full(extra, UNLABELED_PID)])
        f = _unit(rng.standard_normal((boxes.shape[0], dim)).astype(np.float32))
        lab = pid > 0
        f[lab] = _unit(ident[pid[lab]] + 2.0 * f[lab])
        dets.append(np.concatenate([boxes, score[:, None]], 1).astype(np.float32))
        feats.append((f * score[:, None]).astype(np.float32))  # CWS

    queries, qfeats, ctx_dets, ctx_feats = [], [], [], []
    for q, imgs in enumerate(appear):
        g = int(imgs[0])
        a = gallery[g]
        k = np.flatnonzero(a.pids == q + 1)
        k = int(k[0]) if k.size else 0
        box = a.boxes[k]
        queries.append(Query(a.name, box, q + 1))
        qf = _unit(ident[q + 1] + _unit(rng.standard_normal(dim)))
        qfeats.append(qf)
        others = np.delete(np.arange(a.boxes.shape[0]), k)[:3]
        cb = np.concatenate([box[None], a.boxes[others]])
        ctx_dets.append(np.concatenate([cb, np.ones((cb.shape[0], 1))], 1).astype(np.float32))
        cf = _unit(rng.standard_normal((cb.shape[0], dim))).astype(np.float32)
        cf[0] = qf
        ctx_feats.append(cf)

    # Explicit protocols: the query's other appearances, then a per-query distractor order
    # (nested: a smaller gallery is a prefix of a larger one).
    idx = {s: [] for s in sizes}
    gts = {s: [] for s in sizes}
    for q, imgs in enumerate(appear):
        pos = [int(g) for g in imgs[1:] if (gallery[g].pids == q + 1).any()]
        pos_boxes = [gallery[g].boxes[np.flatnonzero(gallery[g].pids == q + 1)[0]] for g in pos]
        mask = np.ones(n_img, bool)
        mask[imgs] = False
        order = rng.permutation(np.flatnonzero(mask))
        for s in sizes:
            n_neg = min(max(0, s - len(pos)), order.shape[0])
            idx[s].append(np.concatenate([pos, order[:n_neg]]).astype(np.int32))
            b = np.full((len(pos) + n_neg, 4), np.nan, np.float32)
            if pos:
                b[: len(pos)] = np.stack(pos_boxes)
            gts[s].append(b)
    protos = [protocols.explicit(f"TestG{s}", s, idx[s], gts[s]) for s in sizes]
    protos.append(protocols.full_set_protocol(None, name="TestG-full"))
    dataset = PersonSearchDataset(
        name="synthetic-CUHK-SYSU-size",
        train=[],
        gallery=gallery,
        queries=queries,
        protocols=protos,
        num_train_pids=0,
    )
    inputs = dict(
        gallery_dets=dets,
        gallery_feats=feats,
        query_box_feats=np.stack(qfeats).astype(np.float32),
        query_context_dets=ctx_dets,
        query_context_feats=ctx_feats,
    )
    return dataset, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=2900)
    ap.add_argument("--gallery", type=int, default=6978)
    ap.add_argument("--dets", type=int, default=8)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--out", default=None, help="output folder for the reports (default: temp)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    dataset, inputs = make_problem(args.queries, args.gallery, args.dets, args.dim)
    n_det = sum(int((d[:, 4] >= 0.5).sum()) for d in inputs["gallery_dets"])
    print(
        f"problem: {len(dataset.queries)} queries, {len(dataset.gallery)} gallery images, "
        f"{n_det} detections >= 0.5 ({n_det / len(dataset.gallery):.1f}/image), "
        f"dim {args.dim}; generated in {time.perf_counter() - t0:.1f} s"
    )
    print(f"cpu affinity: {len(os.sched_getaffinity(0))} cores")

    t0 = time.perf_counter()
    results = evaluator.evaluate_all(dataset, **inputs, cbgm_k1=10, cbgm_k2=3)
    t_eval = time.perf_counter() - t0
    print(evaluator.format_table(results))
    print(
        f"\nevaluate_all: detection (all + labeled-only) and {len(results['search'])} search runs "
        f"(6 gallery sizes + full set, CBGM off and on), per-query top-10 recorded: "
        f"{t_eval:.1f} s"
    )
    # Break-down.
    t0 = time.perf_counter()
    eval_detection(dataset.gallery, inputs["gallery_dets"])
    eval_detection(dataset.gallery, inputs["gallery_dets"], labeled_only=True)
    print(f"  detection, both variants: {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    ev = SearchEvaluator(
        dataset.gallery,
        dataset.queries,
        inputs["gallery_dets"],
        inputs["gallery_feats"],
        inputs["query_box_feats"],
        query_context_dets=inputs["query_context_dets"],
        query_context_feats=inputs["query_context_feats"],
    )
    print(f"  search set-up (validation, concatenation): {time.perf_counter() - t0:.1f} s")
    for cbgm in (False, True):
        t0 = time.perf_counter()
        ev.evaluate([SearchConfig(p, cbgm=cbgm) for p in dataset.protocols])
        print(f"  7 protocols, CBGM {'on ' if cbgm else 'off'}: {time.perf_counter() - t0:.1f} s")
    out = args.out or tempfile.mkdtemp(prefix="eval_speed_")
    t0 = time.perf_counter()
    paths = evaluator.write_results(results, out)
    print(f"write_results: {time.perf_counter() - t0:.1f} s -> {paths}")


if __name__ == "__main__":
    main()
