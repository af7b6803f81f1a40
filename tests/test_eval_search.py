"""Search metrics (§6.2-§6.4): hand-computed cases, a loop port of the reference, the evaluator."""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from seqnet_jax.data.types import (
    UNLABELED_PID,
    ImageAnnotation,
    PersonSearchDataset,
    Query,
    SearchProtocol,
)
from seqnet_jax.evaluation import evaluator, protocols
from seqnet_jax.evaluation.metrics import pairwise_iou
from seqnet_jax.evaluation.search import SearchConfig, SearchEvaluator, eval_search

NAN4 = [np.nan] * 4


# --------------------------------------------------------------------------- hand-made helpers
def _img(name, boxes=(), pids=(), cam=-1):
    return ImageAnnotation(
        name,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(pids, np.int32).reshape(-1),
        cam,
    )


def _dets_feats(rows):
    """rows of (x1, y1, x2, y2, score, sim) -> dets (N, 5) and 2-d feats with q = [1, 0]."""
    rows = np.asarray(rows, np.float32).reshape(-1, 6)
    feats = np.zeros((rows.shape[0], 2), np.float32)
    feats[:, 0] = rows[:, 5]
    return rows[:, :5], feats


def _run(gallery, rows_per_image, protocol, queries=None, **kw):
    queries = queries or [Query("q.jpg", np.array([0, 0, 50, 100], np.float32), 1)]
    df = [_dets_feats(r) for r in rows_per_image]
    return eval_search(
        protocol,
        gallery,
        queries,
        [d for d, _ in df],
        [f for _, f in df],
        np.tile(np.array([[1, 0]], np.float32), (len(queries), 1)),
        **kw,
    )


P = [0, 0, 100, 200]  # a target box


# --------------------------------------------------------------------------- hand-computed
def test_hand_computed_explicit():
    gallery = [
        _img("g0", [P], [1]),
        _img("g1", [[300, 0, 400, 200]], [UNLABELED_PID]),
        _img("g2", [P], [1]),
        _img("g3", [P], [1]),
        _img("q.jpg", [[0, 0, 50, 100]], [1]),
    ]
    rows = [
        # Two detections overlapping the target: only the more similar one is the positive.
        [[0, 0, 100, 190, 0.9, 0.9], [0, 10, 100, 200, 0.9, 0.7]],
        [[300, 0, 400, 200, 0.8, 0.8], [0, 0, 10, 10, 0.6, 0.1], [0, 0, 9, 9, 0.4, 0.99]],
        [],  # the target is in g2 but nothing was detected: it still counts as a GT
        [[0, 0, 100, 80, 0.9, 0.95]],  # IoU 0.4 < 0.5: not the target
        [[0, 0, 50, 100, 0.9, 0.99]],  # the query image: not in this protocol
    ]
    proto = protocols.explicit("T", 4, [[0, 1, 2, 3]], [[P, NAN4, P, P]])
    r = _run(gallery, rows, proto)
    # Ranked .95 (neg), .9 (pos), .8, .7, .1 (the 0.99 det has score 0.4 < 0.5: dropped).
    # sklearn AP = 1/2; recall 1/3 -> 1/6.
    assert r["mAP"] == pytest.approx(1 / 6)
    assert (r["top1"], r["top5"], r["top10"]) == (0.0, 1.0, 1.0)
    pq = r["per_query"][0]
    assert (pq["count_gt"], pq["count_tp"]) == (3, 1)
    top = pq["top10"]
    assert [t["image"] for t in top] == ["g3", "g0", "g1", "g0", "g1"]
    assert [t["correct"] for t in top] == [0, 1, 0, 0, 0]
    assert [t["score"] for t in top] == pytest.approx([0.95, 0.9, 0.8, 0.7, 0.1])
    assert top[1]["box"] == [0, 0, 100, 190]


def test_size_dependent_iou_threshold():
    small = [0, 0, 10, 20]  # threshold 200 / (20 * 30) = 1/3
    gallery = [_img("a", [small], [1]), _img("b", [P], [1])]
    rows = [
        [[0, 0, 10, 8, 0.9, 0.8]],  # IoU 0.4 >= 1/3: the target
        [[0, 0, 100, 80, 0.9, 0.9]],  # IoU 0.4 < 0.5: not the target
    ]
    r = _run(gallery, rows, protocols.explicit("T", 2, [[0, 1]], [[small, P]]))
    pq = r["per_query"][0]
    assert (pq["count_gt"], pq["count_tp"]) == (2, 1)
    assert r["mAP"] == pytest.approx(0.5 * 0.5)
    assert (r["top1"], r["top5"]) == (0.0, 1.0)


@pytest.mark.parametrize("order,top1", [([1, 0], 0.0), ([0, 1], 1.0)])
def test_tied_similarities(order, top1):
    gallery = [_img("t", [P], [1]), _img("n", [P], [UNLABELED_PID])]
    rows = [[[0, 0, 100, 200, 0.9, 0.6]], [[0, 0, 100, 200, 0.9, 0.6]]]
    boxes = [P if i == 0 else NAN4 for i in order]
    r = _run(gallery, rows, protocols.explicit("T", 2, [order], [boxes]))
    # One tie group holding the positive and a negative: AP 1/2 whatever the order.
    assert r["mAP"] == pytest.approx(0.5)
    # Top-k: equal similarities rank in gallery order.
    assert r["top1"] == top1 and r["top5"] == 1.0


def test_target_never_detected_and_no_detections_at_all():
    gallery = [_img("a", [P], [1]), _img("b")]
    rows = [[[300, 300, 400, 400, 0.9, 0.9]], [[0, 0, 10, 10, 0.9, 0.5]]]
    r = _run(gallery, rows, protocols.explicit("T", 2, [[0, 1]], [[P, NAN4]]))
    assert (r["mAP"], r["top1"], r["top10"]) == (0.0, 0.0, 0.0)
    assert r["per_query"][0]["count_tp"] == 0
    # Every gallery detection below 0.5: nothing to rank, AP 0.
    rows = [[[0, 0, 100, 200, 0.3, 0.9]], []]
    r = _run(gallery, rows, protocols.explicit("T", 2, [[0, 1]], [[P, NAN4]]))
    assert r["mAP"] == 0.0 and r["per_query"][0]["top10"] == []


def test_duplicated_gallery_entry_counts_twice_searched_once():
    gallery = [_img("a", [P], [1]), _img("b")]
    rows = [[[0, 0, 100, 200, 0.9, 0.9]], [[0, 0, 10, 10, 0.9, 0.5]]]
    r = _run(gallery, rows, protocols.explicit("T", 3, [[0, 1, 0]], [[P, NAN4, P]]))
    # As the reference: count_gt += 1 per listed entry, the image itself ranked once.
    pq = r["per_query"][0]
    assert (pq["count_gt"], pq["count_tp"]) == (2, 1)
    assert len(pq["top10"]) == 2
    assert r["mAP"] == pytest.approx(0.5)


def test_prw_rules_hand_computed():
    q = Query("f0", np.array([0, 0, 50, 100], np.float32), 7, cam_id=1)
    gallery = [
        _img("f0", [[0, 0, 50, 100]], [7], cam=1),  # the query frame: never gallery
        _img("f1", [P], [7], cam=1),
        _img("f2", [P, [200, 0, 300, 200]], [3, 7], cam=2),
        _img("f3", [P], [3], cam=2),
    ]
    rows = [
        [[0, 0, 50, 100, 0.9, 0.99]],
        [[0, 0, 100, 200, 0.9, 0.5]],  # target, same camera
        [[200, 0, 300, 200, 0.9, 0.8], [0, 0, 100, 200, 0.9, 0.85]],  # target at .8
        [[0, 0, 100, 200, 0.9, 0.6]],
    ]
    r = _run(gallery, rows, protocols.prw_protocol(gallery, [q]), queries=[q])
    # Ranked .85, .8 (pos), .6, .5 (pos); count_gt 2: AP = (1/2 * 1/2 + 1/2 * 2/4) = 0.5.
    assert r["mAP"] == pytest.approx(0.5)
    assert (r["top1"], r["top5"]) == (0.0, 1.0)
    r = _run(gallery, rows, protocols.prw_protocol(gallery, [q], multiview=True), queries=[q])
    # Only camera 2: ranked .85, .8 (pos), .6; count_gt 1.
    assert r["mAP"] == pytest.approx(0.5)
    assert r["per_query"][0]["count_gt"] == 1
    assert {t["image"] for t in r["per_query"][0]["top10"]} == {"f2", "f3"}


def test_full_set_adds_every_other_image_as_negatives():
    gallery = [_img("a", [P], [1]), _img("b"), _img("c"), _img("q.jpg", [P], [1])]
    rows = [
        [[0, 0, 100, 200, 0.9, 0.7]],
        [[0, 0, 10, 10, 0.9, 0.5]],
        [[0, 0, 10, 10, 0.9, 0.8]],  # only in the full set
        [[0, 0, 100, 200, 0.9, 0.99]],  # the query image: excluded
    ]
    base = protocols.explicit("TestG50", 50, [[0, 1]], [[P, NAN4]])
    assert _run(gallery, rows, base)["mAP"] == pytest.approx(1.0)
    full = _run(gallery, rows, protocols.full_set_protocol(base))
    assert full["mAP"] == pytest.approx(0.5)
    assert full["gallery_size"] == -1
    # Ground truth from the pids instead of the base protocol: same here.
    assert _run(gallery, rows, protocols.full_set_protocol())["mAP"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- reference port
def _brute_match(w):
    k, n = w.shape
    best = None
    if k <= n:
        cands = [list(zip(range(k), c, strict=True)) for c in itertools.permutations(range(n), k)]
    else:
        cands = [list(zip(r, range(n), strict=True)) for r in itertools.permutations(range(k), n)]
    for pairs in cands:
        total = sum(w[i, j] for i, j in pairs)
        if best is None or total > best[0]:
            best = (total, pairs)
    pairs = best[1]
    return next((j for i, j in pairs if i == 0), -1), max(w[i, j] for i, j in pairs)


def _reference_search(gallery, dets, feats, qfeats, entries, cbgm, k1, k2, ctx_feats):
    """Loop port of the reference eval_search_{cuhk,prw} (brute-force matching for CBGM).

    ``entries[i]`` lists ``(image name, GT box or None)`` in the order the reference visits them.
    """
    name_to = {}
    for anno, det, feat in zip(gallery, dets, feats, strict=True):
        if len(det):
            inds = np.where(det[:, 4] >= 0.5)[0]
            if len(inds):
                name_to[anno.name] = (det[inds], feat[inds])
    aps, accs = [], []
    for i, ent in enumerate(entries):
        y_true, y_score, count_gt, count_tp = [], [], 0, 0
        name2sim, name2gt, sims, imgs = {}, {}, [], []
        for name, gt in ent:
            count_gt += gt is not None
            if name not in name_to:
                continue
            det, feat_g = name_to[name]
            sim = feat_g.dot(qfeats[i]).ravel()
            if name in name2sim:
                continue
            name2sim[name], name2gt[name] = sim, gt
            sims.extend(list(sim))
            imgs.extend([name] * len(sim))
        if cbgm and sims:
            inds = np.argsort(np.array(sims))[-k1:]
            for img in set(np.array(imgs)[inds]):
                j, max_val = _brute_match(ctx_feats[i][:k2] @ name_to[img][1].T)
                if j >= 0:
                    name2sim[img][j] = max_val
        for name, sim in name2sim.items():
            gt, det = name2gt[name], name_to[name][0]
            label = np.zeros(len(sim), np.int32)
            if gt is not None:
                w, h = gt[2] - gt[0], gt[3] - gt[1]
                thr = min(0.5, w * h / ((w + 10) * (h + 10)))
                inds = np.argsort(sim)[::-1]
                sim, det = sim[inds], det[inds]
                for j, roi in enumerate(det[:, :4]):
                    if pairwise_iou(roi, gt) >= thr:
                        label[j] = 1
                        count_tp += 1
                        break
            y_true.extend(list(label))
            y_score.extend(list(sim))
        y_true, y_score = np.asarray(y_true), np.asarray(y_score)
        ap = 0 if count_tp == 0 else average_precision_score(y_true, y_score) * count_tp / count_gt
        aps.append(ap)
        y_sorted = y_true[np.argsort(y_score)[::-1]]
        accs.append([min(1, y_sorted[:k].sum()) for k in (1, 5, 10)])
    return np.array(aps), np.array(accs, float)


def _entries(protocol, gallery, queries):
    """What the reference iterates for each query under ``protocol``."""
    out = []
    for qi, q in enumerate(queries):
        if protocol.rule in ("explicit", "full_set"):
            ent = [
                (gallery[g].name, None if np.isnan(b).any() else b)
                for g, b in zip(protocol.gallery_indices[qi], protocol.gt_boxes[qi], strict=True)
                if not (protocol.rule == "full_set" and gallery[g].name == q.name)
            ]
            if protocol.rule == "full_set":
                listed = {n for n, _ in ent}
                ent += [(a.name, None) for a in gallery if a.name not in listed | {q.name}]
        else:
            ent = []
            for a in gallery:
                if a.name == q.name:
                    continue
                if protocol.rule == "other_cameras" and a.cam_id == q.cam_id:
                    continue
                hit = np.flatnonzero(a.pids == q.pid)
                ent.append((a.name, a.boxes[hit[0]] if hit.size else None))
        out.append(ent)
    return out


def _random_problem(seed, n_img=16, n_q=6, dim=6):
    rng = np.random.default_rng(seed)
    boxes = [[] for _ in range(n_img)]
    pids = [[] for _ in range(n_img)]

    def add_box(g, pid):
        x, y = rng.uniform(0, 400, 2)
        w = rng.choice([rng.uniform(4, 25), rng.uniform(25, 120)])  # small boxes: low thresholds
        boxes[g].append([x, y, x + w, y + w * rng.uniform(1.5, 3)])
        pids[g].append(pid)

    for g in range(n_img):
        for _ in range(int(rng.integers(0, 3))):
            add_box(g, UNLABELED_PID)
    appear = [rng.choice(n_img, size=int(rng.integers(2, 5)), replace=False) for _ in range(n_q)]
    for q, imgs in enumerate(appear):
        for g in imgs:
            add_box(int(g), 100 + q)
    gallery = [
        _img(f"i{g}.jpg", np.round(boxes[g]), pids[g], cam=int(rng.integers(1, 4)))
        for g in range(n_img)
    ]
    qfeats = rng.normal(size=(n_q, dim)).astype(np.float32)
    qfeats /= np.linalg.norm(qfeats, axis=1, keepdims=True)
    dets, feats = [], []
    for a in gallery:
        rows, frows = [], []
        if rng.random() < 0.15:  # an image without any detection
            dets.append(np.zeros((0, 5), np.float32))
            feats.append(np.zeros((0, dim), np.float32))
            continue
        for b, p in zip(a.boxes, a.pids, strict=True):
            for _ in range(int(rng.choice([0, 1, 1, 2]))):  # missed, found, found twice
                wh = np.r_[b[2:] - b[:2], b[2:] - b[:2]]
                rows.append(np.r_[b + rng.normal(0, 0.12, 4) * wh, rng.uniform(0.3, 1)])
                f = rng.normal(size=dim)
                if p >= 100:
                    f += 1.5 * qfeats[p - 100] * np.sqrt(dim)
                frows.append(f / np.linalg.norm(f) * rows[-1][4])
        for _ in range(int(rng.integers(0, 3))):
            x, y = rng.uniform(0, 400, 2)
            rows.append([x, y, x + 40, y + 90, rng.uniform(0.3, 1)])
            f = rng.normal(size=dim)
            frows.append(f / np.linalg.norm(f) * rows[-1][4])
        dets.append(np.asarray(rows, np.float32).reshape(-1, 5))
        feats.append(np.asarray(frows, np.float32).reshape(-1, dim))
    queries, ctx_dets, ctx_feats = [], [], []
    for q, imgs in enumerate(appear):
        a = gallery[int(imgs[0])]
        box = a.boxes[np.flatnonzero(a.pids == 100 + q)[0]]
        queries.append(Query(a.name, box, 100 + q, a.cam_id))
        k = int(rng.integers(1, 5))
        cd = np.concatenate([box[None], rng.uniform(0, 300, (k - 1, 4))])
        ctx_dets.append(np.concatenate([cd, np.ones((k, 1))], 1).astype(np.float32))
        cf = rng.normal(size=(k, dim)).astype(np.float32)
        cf /= np.linalg.norm(cf, axis=1, keepdims=True)
        cf[0] = qfeats[q]
        ctx_feats.append(cf)
    # An explicit protocol: the other appearances, random distractors, sometimes a duplicate.
    idx, gts = [], []
    for q, imgs in enumerate(appear):
        others = [g for g in range(n_img) if g not in set(imgs.tolist())]
        chosen = [int(g) for g in imgs[1:]] + rng.choice(others, 6, replace=False).tolist()
        rng.shuffle(chosen)
        if rng.random() < 0.5:
            chosen.append(chosen[0])
        b = []
        for g in chosen:
            hit = np.flatnonzero(gallery[g].pids == 100 + q)
            b.append(gallery[g].boxes[hit[0]] if hit.size else NAN4)
        idx.append(chosen)
        gts.append(b)
    explicit = protocols.explicit("TestG8", 8, idx, gts)
    return dict(
        gallery=gallery,
        queries=queries,
        dets=dets,
        feats=feats,
        qfeats=qfeats,
        ctx_dets=ctx_dets,
        ctx_feats=ctx_feats,
        protocols=[
            explicit,
            protocols.full_set_protocol(explicit),
            protocols.full_set_protocol(None),
            protocols.prw_protocol(gallery, queries),
            protocols.prw_protocol(gallery, queries, multiview=True),
        ],
    )


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_port(seed):
    p = _random_problem(seed)
    ev = SearchEvaluator(
        p["gallery"],
        p["queries"],
        p["dets"],
        p["feats"],
        p["qfeats"],
        query_context_dets=p["ctx_dets"],
        query_context_feats=p["ctx_feats"],
    )
    configs = [
        SearchConfig(proto, cbgm=c, k1=k1, k2=k2)
        for proto in p["protocols"]
        for c, k1, k2 in ((False, 10, 3), (True, 10, 3), (True, 4, 2))
    ]
    results = ev.evaluate(configs)
    for cfg, r in zip(configs, results, strict=True):
        entries = _entries(cfg.protocol, p["gallery"], p["queries"])
        aps, accs = _reference_search(
            p["gallery"], p["dets"], p["feats"], p["qfeats"], entries,
            cfg.cbgm, cfg.k1, cfg.k2, p["ctx_feats"],
        )  # fmt: skip
        got = np.array([e["ap"] for e in r["per_query"]])
        np.testing.assert_allclose(got, aps, atol=1e-6, err_msg=f"{r['protocol']} {cfg}")
        assert r["mAP"] == pytest.approx(aps.mean(), abs=1e-6)
        np.testing.assert_allclose([r["top1"], r["top5"], r["top10"]], accs.mean(0))


@pytest.mark.parametrize("seed", range(3))
def test_rules_equal_their_explicit_expansion(seed):
    p = _random_problem(seed)
    args = (p["gallery"], p["queries"], p["dets"], p["feats"], p["qfeats"])
    kw = dict(query_context_dets=p["ctx_dets"], query_context_feats=p["ctx_feats"])
    for proto in p["protocols"][1:]:
        for cbgm in (False, True):
            a = eval_search(proto, *args, cbgm=cbgm, **kw)
            b = eval_search(protocols.to_explicit(proto, p["gallery"], p["queries"]), *args,
                            cbgm=cbgm, **kw)  # fmt: skip
            assert a["per_query"] == b["per_query"]


# --------------------------------------------------------------------------- bad input
def _small():
    gallery = [_img("a", [P], [1]), _img("b")]
    rows = [[[0, 0, 100, 200, 0.9, 0.9]], [[0, 0, 10, 10, 0.9, 0.5]]]
    df = [_dets_feats(r) for r in rows]
    q = [Query("q.jpg", np.array([0, 0, 50, 100], np.float32), 1)]
    proto = protocols.explicit("T", 2, [[0, 1]], [[P, NAN4]])
    return proto, gallery, q, [d for d, _ in df], [f for _, f in df], np.array([[1, 0]], "f4")


def test_bad_inputs():
    proto, gallery, q, dets, feats, qf = _small()
    with pytest.raises(ValueError, match="gallery is empty"):
        eval_search(proto, [], q, [], [], qf)
    with pytest.raises(ValueError, match="gallery_feats has 1 entries"):
        eval_search(proto, gallery, q, dets, feats[:1], qf)
    with pytest.raises(ValueError, match="gallery_dets has 3 entries"):
        eval_search(proto, gallery, q, dets + dets[:1], feats, qf)
    with pytest.raises(ValueError, match=r"image 0 \(a\): 1 detections but 2 feature rows"):
        eval_search(proto, gallery, q, dets, [np.zeros((2, 2), "f4"), feats[1]], qf)
    with pytest.raises(ValueError, match=r"image 1 \(b\): features contain NaN"):
        eval_search(proto, gallery, q, dets, [feats[0], feats[1] * np.nan], qf)
    bad = dets[0].copy()
    bad[0, 4] = np.nan
    with pytest.raises(ValueError, match=r"image 0 \(a\): detections .* NaN"):
        eval_search(proto, gallery, q, [bad, dets[1]], feats, qf)
    with pytest.raises(ValueError, match="query_box_feats must be"):
        eval_search(proto, gallery, q, dets, feats, np.zeros((2, 2), "f4"))
    with pytest.raises(ValueError, match="query_box_feats of query 0"):
        eval_search(proto, gallery, q, dets, feats, qf * np.nan)
    with pytest.raises(ValueError, match="feature dim 3"):
        eval_search(proto, gallery, q, dets, feats, np.zeros((1, 3), "f4"))
    with pytest.raises(ValueError, match="CBGM needs"):
        eval_search(proto, gallery, q, dets, feats, qf, cbgm=True)
    ctx_d = [np.array([[1, 0, 50, 100, 1]], "f4")]
    with pytest.raises(ValueError, match="is not the query box"):
        eval_search(proto, gallery, q, dets, feats, qf, cbgm=True, query_context_dets=ctx_d,
                    query_context_feats=[qf])  # fmt: skip
    with pytest.raises(ValueError, match="gallery_indices has 2 entries for 1 queries"):
        eval_search(SearchProtocol("X", 2, [[0], [1]], [[P], [P]]), gallery, q, dets, feats, qf)
    with pytest.raises(ValueError, match="outside"):
        eval_search(protocols.explicit("T", 1, [[5]], [[P]]), gallery, q, dets, feats, qf)
    with pytest.raises(ValueError, match="unknown protocol rule"):
        eval_search(SearchProtocol("X", -1, rule="nope"), gallery, q, dets, feats, qf)
    with pytest.raises(ValueError, match="camera ids"):
        eval_search(SearchProtocol("X", -1, rule="other_cameras"), gallery, q, dets, feats, qf)


# --------------------------------------------------------------------------- evaluator
def _dataset(seed=0, sizes=(5, 8)):
    p = _random_problem(seed)
    explicit = p["protocols"][0]
    protos = []
    for s in sizes:  # nested prefixes of the random explicit protocol
        protos.append(
            protocols.explicit(
                f"TestG{s}", s,
                [i[:s] for i in explicit.gallery_indices], [b[:s] for b in explicit.gt_boxes],
            )
        )  # fmt: skip
    protos.append(protocols.full_set_protocol(None))
    ds = PersonSearchDataset("toy", [], p["gallery"], p["queries"], protos, 0)
    inputs = dict(
        gallery_dets=p["dets"],
        gallery_feats=p["feats"],
        query_box_feats=p["qfeats"],
        query_context_dets=p["ctx_dets"],
        query_context_feats=p["ctx_feats"],
    )
    return ds, inputs


def test_evaluate_all_and_reports(tmp_path):
    ds, inputs = _dataset()
    res = evaluator.evaluate_all(ds, **inputs, cbgm_k1=10, cbgm_k2=3)
    assert set(res["detection"]) == {"all", "labeled_only"}
    assert [(r["protocol"], r["cbgm"]) for r in res["search"]] == [
        (n, c) for n in ("TestG5", "TestG8", "TestG-full") for c in (False, True)
    ]
    table = evaluator.format_table(res)
    assert "TestG8 + CBGM" in table and "all detection" in table
    summary = evaluator.scalar_summary(res)
    assert summary["search/TestG5_cbgm/mAP"] == res["search"][1]["mAP"]
    paths = evaluator.write_results(res, str(tmp_path))
    saved = json.load(open(paths["results"]))
    assert "per_query" not in saved["search"][0]
    assert saved["search"][0]["mAP"] == pytest.approx(res["search"][0]["mAP"])
    per_query = json.load(open(paths["per_query"]))
    assert set(per_query) == {
        "TestG5", "TestG5 + CBGM", "TestG8", "TestG8 + CBGM", "TestG-full", "TestG-full + CBGM"
    }  # fmt: skip
    assert len(per_query["TestG8"]) == len(ds.queries)
    if importlib.util.find_spec("matplotlib") is not None:
        assert paths["plot"] and os.path.getsize(paths["plot"]) > 1000


def test_evaluate_all_query_subset_and_single_size_plot(tmp_path, caplog):
    ds, inputs = _dataset(sizes=(8,))
    full = evaluator.evaluate_all(ds, **inputs, use_cbgm_variants=(False,))
    sub = evaluator.evaluate_all(
        ds,
        inputs["gallery_dets"],
        inputs["gallery_feats"],
        inputs["query_box_feats"][:3],
        use_cbgm_variants=(False, True),  # no context given: CBGM skipped with a warning
        queries=ds.queries[:3],
    )
    assert [r["cbgm"] for r in sub["search"]] == [False, False]
    for a, b in zip(full["search"], sub["search"], strict=True):
        assert a["per_query"][:3] == b["per_query"]
    with caplog.at_level(logging.WARNING):
        paths = evaluator.write_results(sub, str(tmp_path))
    assert paths["plot"] is None
    assert "plot skipped" in caplog.text


def test_evaluate_all_count_mismatch():
    ds, inputs = _dataset()
    inputs["gallery_dets"] = inputs["gallery_dets"][:-1]
    with pytest.raises(ValueError, match="images"):
        evaluator.evaluate_all(ds, **inputs)


def test_evaluate_all_takes_cbgm_k1_k2_from_the_dataset():
    ds, inputs = _dataset(sizes=(8,))
    ds.cbgm_k1, ds.cbgm_k2 = 4, 2
    default = evaluator.evaluate_all(ds, **inputs)
    given = evaluator.evaluate_all(ds, **inputs, cbgm_k1=4, cbgm_k2=2)
    assert json.dumps(default) == json.dumps(given)
    assert [(r["k1"], r["k2"]) for r in default["search"] if r["cbgm"]] == [(4, 2), (4, 2)]
    other = evaluator.evaluate_all(ds, **inputs, cbgm_k1=10, cbgm_k2=3)
    assert (other["TestG8", True]["k1"], other["TestG8", True]["k2"]) == (10, 3)
    # A dataset that sets nothing gets the reference's eval_search_cuhk defaults.
    plain = PersonSearchDataset("toy", [], ds.gallery, ds.queries, ds.protocols, 0)
    assert (plain.cbgm_k1, plain.cbgm_k2) == (10, 3)
    assert json.dumps(evaluator.evaluate_all(plain, **inputs)) == json.dumps(other)


def test_results_are_indexed_by_protocol_and_cbgm(tmp_path):
    ds, inputs = _dataset()
    res = evaluator.evaluate_all(ds, **inputs, cbgm_k1=10, cbgm_k2=3)
    assert isinstance(res, evaluator.EvaluationResults) and isinstance(res, dict)
    assert res.protocols == ds.protocol_names == ["TestG5", "TestG8", "TestG-full"]
    assert res.variants == [(n, c) for n in res.protocols for c in (False, True)]
    for i, (name, cbgm) in enumerate(res.variants):
        row = res[name, cbgm]
        assert row is res["search"][i] and (row["protocol"], row["cbgm"]) == (name, cbgm)
        assert res.search_result(name, cbgm=cbgm) is row
    assert res.search_result(ds.protocols[1], cbgm=True) is res["TestG8", True]
    assert ("TestG-full", True) in res and ("TestG9", False) not in res and "detection" in res
    assert res.get(("TestG9", False)) is None and res.get("dataset") == "toy"
    with pytest.raises(KeyError, match=r"'TestG9' without CBGM; there are \[\('TestG5', False\)"):
        res["TestG9", False]
    # Serialised exactly as the plain dict.
    saved = json.load(open(evaluator.write_results(res, str(tmp_path))["results"]))
    plain = dict(
        res, search=[{k: v for k, v in r.items() if k != "per_query"} for r in res["search"]]
    )
    assert saved == json.loads(json.dumps(plain))


def test_old_argument_name_query_feats_still_works_with_a_deprecation_warning():
    ds, inputs = _dataset(sizes=(8,))
    new = evaluator.evaluate_all(ds, **inputs, use_cbgm_variants=(False,))
    old_inputs = dict(inputs)
    old_inputs["query_feats"] = old_inputs.pop("query_box_feats")
    with pytest.warns(DeprecationWarning, match="'query_feats' is deprecated.*'query_box_feats'"):
        old = evaluator.evaluate_all(ds, **old_inputs, use_cbgm_variants=(False,))
    assert json.dumps(old) == json.dumps(new)
    with pytest.raises(TypeError, match="both 'query_feats'"):
        evaluator.evaluate_all(ds, **inputs, query_feats=inputs["query_box_feats"])

    proto, gallery, q, dets, feats, qf = _small()
    want = eval_search(proto, gallery, q, dets, feats, query_box_feats=qf)
    with pytest.warns(DeprecationWarning, match="eval_search.*'query_feats'"):
        assert eval_search(proto, gallery, q, dets, feats, query_feats=qf) == want
    with pytest.warns(DeprecationWarning, match="SearchEvaluator.__init__.*'query_feats'"):
        ev = SearchEvaluator(gallery, q, dets, feats, query_feats=qf)
    assert ev.evaluate([SearchConfig(proto)])[0] == want


def test_feature_cache_written_before_the_rename_still_loads(tmp_path):
    from seqnet_jax import evaluate as eval_lib

    path = str(tmp_path / "features.npz")
    qf = np.eye(2, 4, dtype=np.float32)
    dets = [np.zeros((1, 5), np.float32), np.zeros((0, 5), np.float32)]
    eval_lib._save_features(path, {"gallery_dets": dets, "query_feats": qf})  # the old key
    feats = eval_lib._load_features(path)
    np.testing.assert_array_equal(feats["query_box_feats"], qf)
    assert "query_feats" not in feats and [len(d) for d in feats["gallery_dets"]] == [1, 0]


def test_gt_detections():
    ds, _ = _dataset()
    dets = evaluator.gt_detections(ds.gallery)
    r = evaluator.eval_detection(ds.gallery, dets)
    assert r["recall"] == 1.0 and r["ap"] == 1.0


def test_evaluation_imports_no_jax_or_tensorflow():
    code = (
        "import sys, seqnet_jax.evaluation; "
        "bad = [m for m in ('jax', 'tensorflow', 'flax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
