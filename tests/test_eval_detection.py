"""Detection recall / AP (§6.1) and the average-precision building blocks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from seqnet_jax.data.types import UNLABELED_PID, ImageAnnotation
from seqnet_jax.evaluation.detection import eval_detection
from seqnet_jax.evaluation.metrics import (
    average_precision,
    average_precision_from_positives,
    pairwise_iou,
    size_dependent_iou_threshold,
    top_k_positions,
)


def _img(name, boxes, pids=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if pids is None:
        pids = np.arange(1, boxes.shape[0] + 1)
    return ImageAnnotation(name, boxes, np.asarray(pids, np.int32))


def _dets(rows):
    return np.asarray(rows, np.float32).reshape(-1, 5)


# --------------------------------------------------------------------------- average precision
def test_average_precision_hand_computed_with_ties():
    # Scores 0.9 (neg), 0.5 (pos) tied with 0.5 (neg), 0.2 (pos): sklearn groups the tie.
    # t=0.9: P=0; t=0.5: tp=1 of 3 -> P=1/3, R=1/2; t=0.2: tp=2 of 4 -> P=1/2, R=1.
    ap = average_precision([0, 1, 0, 1], [0.9, 0.5, 0.5, 0.2])
    assert ap == pytest.approx(0.5 * (1 / 3) + 0.5 * 0.5)
    assert average_precision([0, 0], [0.3, 0.1]) == 0.0  # no positive


@pytest.mark.parametrize("seed", range(30))
def test_average_precision_equals_sklearn_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    y = rng.random(n) < rng.uniform(0.05, 0.6)
    if not y.any():
        y[rng.integers(n)] = True
    # Coarse scores: plenty of ties.
    s = np.round(rng.random(n), int(rng.integers(1, 4)))
    want = average_precision_score(y, s)
    assert average_precision(y, s) == pytest.approx(want, abs=1e-12)
    assert average_precision_from_positives(s[y], s) == pytest.approx(want, abs=1e-12)
    s32 = s.astype(np.float32)
    assert average_precision_from_positives(s32[y], s32) == pytest.approx(
        average_precision_score(y, s32), abs=1e-12
    )


def test_top_k_positions_order_and_ties():
    s = np.array([0.1, 0.9, 0.5, 0.9, 0.3, 0.5], np.float32)
    # Descending score, equal scores by position.
    np.testing.assert_array_equal(top_k_positions(s, 4), [1, 3, 2, 5])
    np.testing.assert_array_equal(top_k_positions(s, 10), [1, 3, 2, 5, 4, 0])
    assert top_k_positions(s[:0], 3).shape == (0,)
    rng = np.random.default_rng(0)
    for n in (5, 100, 5000):
        x = np.round(rng.random(n), 2).astype(np.float32)  # ties, and the block path for 5000
        want = np.lexsort((np.arange(n), -x))[:20]
        np.testing.assert_array_equal(top_k_positions(x, 20), want)


def test_iou_and_size_dependent_threshold():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[5, 0, 15, 10]], np.float32)
    assert pairwise_iou(a, b)[0] == pytest.approx(50 / 150)
    assert pairwise_iou(a, a[:, [0, 1, 0, 1]])[0] == 0.0  # empty box: no division by zero
    thr = size_dependent_iou_threshold(np.array([[0, 0, 10, 20], [0, 0, 100, 200]]))
    assert thr[0] == pytest.approx(200 / (20 * 30))
    assert thr[1] == 0.5


# --------------------------------------------------------------------------- eval_detection
def test_hand_computed_duplicates_and_thresholds():
    gallery = [
        _img("a", [[0, 0, 100, 100], [300, 300, 400, 400]]),
        _img("b", [[0, 0, 50, 50]]),  # no detections at all: its GT still counts
    ]
    dets = [
        _dets(
            [
                [0, 0, 100, 90, 0.9],  # IoU 0.9 with GT0 -> TP
                [0, 0, 100, 70, 0.95],  # IoU 0.7 with GT0, not GT0's best -> FP
                [500, 500, 600, 600, 0.3],  # no overlap -> FP
                [300, 300, 400, 400, 0.005],  # below det_thresh 0.01: ignored
            ]
        ),
        np.zeros((0, 5), np.float32),
    ]
    r = eval_detection(gallery, dets)
    assert (r["num_gt"], r["num_tp"], r["num_dets"]) == (3, 1, 3)
    assert r["recall"] == pytest.approx(1 / 3)
    # Ranked 0.95 (FP), 0.9 (TP), 0.3 (FP): AP = 1/2; times recall.
    assert r["ap"] == pytest.approx(0.5 / 3)
    # With a det threshold of 0.001 the perfect box of GT1 counts too.
    r = eval_detection(gallery, dets, det_thresh=0.001)
    assert (r["num_tp"], r["num_dets"]) == (2, 4)


def test_reference_argmax_quirk():
    # D overlaps GT0 (0.8) and GT1 (~0.6); E overlaps GT1 (~0.55). GT1's best det is D, but D
    # belongs to GT0, so (GT1, D) is dropped -- and so is (GT1, E), because E is not GT1's best.
    gt = [[0, 0, 100, 100], [20, 0, 120, 100]]
    d = [[0, 0, 100, 100], [45, 0, 145, 100]]
    ious = pairwise_iou(np.array(gt)[:, None], np.array(d)[None])
    assert ious[1, 0] > ious[1, 1] >= 0.5
    gallery = [_img("a", gt)]
    r = eval_detection(gallery, [_dets([d[0] + [0.9], d[1] + [0.8]])])
    assert (r["num_gt"], r["num_tp"]) == (2, 1)
    assert r["ap"] == pytest.approx(1.0 * 0.5)


def test_float32_threshold_compare_as_reference():
    # float32(0.01) < 0.01 in float64, but numpy compared the reference's float32 array in
    # float32, where they are equal: the detection takes part.
    gallery = [_img("a", [[0, 0, 100, 100]])]
    r = eval_detection(gallery, [_dets([[0, 0, 100, 100, 0.01]])], det_thresh=0.01)
    assert r["num_dets"] == 1 and r["recall"] == 1.0


def test_score_ties():
    gallery = [_img("a", [[0, 0, 100, 100]]), _img("b", [[0, 0, 100, 100]])]
    dets = [_dets([[0, 0, 100, 100, 0.7]]), _dets([[200, 200, 300, 300, 0.7]])]
    r = eval_detection(gallery, dets)
    # One tie group of 2 with one TP: AP = 1/2, recall 1/2.
    assert r["recall"] == pytest.approx(0.5)
    assert r["ap"] == pytest.approx(0.25)


def test_labeled_only():
    gallery = [
        _img("a", [[0, 0, 100, 100], [200, 0, 300, 100]], [3, UNLABELED_PID]),
        _img("b", [[0, 0, 100, 100]], [UNLABELED_PID]),  # skipped, with its detections
    ]
    dets = [
        _dets([[0, 0, 100, 100, 0.9], [200, 0, 300, 100, 0.8]]),
        _dets([[0, 0, 100, 100, 0.99]]),
    ]
    r = eval_detection(gallery, dets, labeled_only=True)
    assert (r["num_gt"], r["num_tp"], r["num_dets"]) == (1, 1, 2)
    assert r["ap"] == pytest.approx(1.0)
    r = eval_detection(gallery, dets)
    assert (r["num_gt"], r["num_tp"]) == (3, 3)


def _reference_detection(gallery, dets, det_thresh=0.01, iou_thresh=0.5, labeled_only=False):
    """Loop port of the reference eval_detection (plus: dets of GT-less images are FPs)."""
    y_true, y_score, count_gt, count_tp = [], [], 0, 0
    for anno, det in zip(gallery, dets, strict=True):
        gt_boxes = anno.boxes
        if labeled_only:
            gt_boxes = gt_boxes[anno.pids != UNLABELED_PID]
            if len(gt_boxes) == 0:
                continue
        num_gt = gt_boxes.shape[0]
        det = det[det[:, 4] >= det_thresh] if len(det) else det
        if len(det) == 0:
            count_gt += num_gt
            continue
        if num_gt == 0:
            y_true += [False] * len(det)
            y_score += list(det[:, 4])
            continue
        ious = np.zeros((num_gt, len(det)), np.float32)
        for i in range(num_gt):
            for j in range(len(det)):
                ious[i, j] = pairwise_iou(gt_boxes[i], det[j, :4])
        tfmat = ious >= iou_thresh
        for j in range(len(det)):
            k = np.argmax(ious[:, j])
            for i in range(num_gt):
                if i != k:
                    tfmat[i, j] = False
        for i in range(num_gt):
            k = np.argmax(ious[i, :])
            for j in range(len(det)):
                if j != k:
                    tfmat[i, j] = False
        for j in range(len(det)):
            y_score.append(det[j, -1])
            y_true.append(tfmat[:, j].any())
        count_tp += tfmat.sum()
        count_gt += num_gt
    rate = count_tp / count_gt
    return rate, average_precision_score(y_true, y_score) * rate


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("labeled_only", [False, True])
def test_matches_reference_loop_on_random_galleries(seed, labeled_only):
    rng = np.random.default_rng(seed)
    gallery, dets = [], []
    for g in range(40):
        n = int(rng.integers(0, 5)) if g else 2
        xy = rng.uniform(0, 300, (n, 2))
        wh = rng.uniform(10, 80, (n, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], 1))
        pids = np.where(rng.random(n) < 0.5, rng.integers(1, 9, n), UNLABELED_PID)
        gallery.append(_img(f"{g}.jpg", boxes, pids))
        m = int(rng.integers(0, 7))
        src = boxes[rng.integers(0, n, m)] if n else rng.uniform(0, 300, (m, 4))
        jitter = rng.normal(0, rng.choice([2.0, 15.0]), (m, 4))
        db = np.sort((src + jitter).reshape(m, 2, 2), axis=1).reshape(m, 4)
        score = np.round(rng.random(m), 2)  # ties
        dets.append(_dets(np.concatenate([db, score[:, None]], 1)))
    r = eval_detection(gallery, dets, labeled_only=labeled_only)
    rate, ap = _reference_detection(gallery, dets, labeled_only=labeled_only)
    assert r["recall"] == pytest.approx(rate, abs=1e-12)
    assert r["ap"] == pytest.approx(ap, abs=1e-12)


def test_bad_inputs():
    gallery = [_img("a", [[0, 0, 10, 10]])]
    with pytest.raises(ValueError, match="empty"):
        eval_detection([], [])
    with pytest.raises(ValueError, match="1 images"):
        eval_detection(gallery, [])
    with pytest.raises(ValueError, match="NaN"):
        eval_detection(gallery, [_dets([[0, 0, 10, 10, np.nan]])])
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        eval_detection(gallery, [np.zeros((2, 4))])
    with pytest.raises(ValueError, match="missing"):
        eval_detection(gallery, [None])
