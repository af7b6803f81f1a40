"""RPN and RoI target sampling: counts, labels, order, padding, reproducibility."""

import numpy as np
import pytest

from seqnet_jax.host.sampling import (
    image_rng,
    match_anchors,
    sample_roi_targets,
    sample_roi_targets_batched,
    sample_rpn_targets,
    sample_rpn_targets_batched,
)
from seqnet_jax.ops.anchors import grid_anchors
from seqnet_jax.ops.box_ops import BoxCoder, box_iou
from seqnet_jax.ops.matcher import match_boxes

ANCHORS = grid_anchors(25, 40)  # 15 000 anchors of a 400 × 640 image


def _gt(rng, n, w=640, h=400):
    bh = rng.uniform(40, 300, n)
    bw = bh * rng.uniform(0.3, 0.6, n)
    x1 = rng.uniform(0, w - bw)
    y1 = rng.uniform(0, h - bh)
    return np.stack([x1, y1, x1 + bw, y1 + bh], 1).astype(np.float32)


def test_match_anchors_is_exact():
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):
        gt = _gt(rng, n)
        full = match_boxes(box_iou(gt, ANCHORS), None, 0.7, 0.3, True)
        np.testing.assert_array_equal(match_anchors(ANCHORS, gt), full)
    # a GT overlapping no anchor: its best IoU is 0 and torchvision's low-quality rule then
    # restores every anchor at IoU 0 — the full matrix handles it
    far = np.array([[5000, 5000, 5100, 5200]], np.float32)
    # a tiny GT whose best IoU is below 0.3, duplicated GTs (argmax ties)
    tiny = np.array([[101, 57, 106, 65]], np.float32)
    small = _gt(rng, 3)
    for gt in (np.concatenate([_gt(rng, 2), far]), np.concatenate([small, tiny, small[:1]])):
        np.testing.assert_array_equal(
            match_anchors(ANCHORS, gt), match_boxes(box_iou(gt, ANCHORS), None, 0.7, 0.3, True)
        )
    # anchors without grid structure
    xy = rng.uniform(0, 600, (700, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(5, 300, (700, 2))], 1).astype(np.float32)
    for gt in (_gt(rng, 5), np.concatenate([_gt(rng, 2), tiny])):
        np.testing.assert_array_equal(
            match_anchors(anchors, gt), match_boxes(box_iou(gt, anchors), None, 0.7, 0.3, True)
        )


def test_rpn_counts_labels_and_targets():
    rng = np.random.default_rng(1)
    gt = np.concatenate([_gt(rng, 4), np.zeros((3, 4), np.float32)])  # 3 padded rows
    gt_valid = np.array([True] * 4 + [False] * 3)
    out = sample_rpn_targets(ANCHORS, gt, gt_valid, image_rng(0, 0, 0))
    assert out["indices"].shape == (256,) and out["indices"].dtype == np.int32
    assert out["targets"].shape == (256, 4) and out["targets"].dtype == np.float32
    assert out["valid"].all()
    n_pos = int(out["labels"].sum())
    assert 0 < n_pos <= 128
    np.testing.assert_array_equal(out["labels"][:n_pos], 1)
    assert len(set(out["indices"].tolist())) == 256  # without replacement
    matched = match_boxes(box_iou(gt[:4], ANCHORS), None, 0.7, 0.3, True)
    pos, neg = out["indices"][:n_pos], out["indices"][n_pos:]
    assert (matched[pos] >= 0).all() and (matched[neg] == -1).all()
    assert (np.diff(pos) > 0).all() and (np.diff(neg) > 0).all()
    assert n_pos == min(int((matched >= 0).sum()), 128)
    np.testing.assert_allclose(
        out["targets"][:n_pos], BoxCoder().encode(gt[matched[pos]], ANCHORS[pos]), rtol=1e-6
    )
    np.testing.assert_array_equal(out["targets"][n_pos:], 0)


def test_rpn_caps_positives_and_no_gt():
    # one anchor shape on a stride-2 grid: more than 128 positive anchors available
    anchors = grid_anchors(100, 100, 2, np.array([[-64, -64, 64, 64]], np.float32))
    gt = np.array([[36, 36, 164, 164]], np.float32)
    assert (match_anchors(anchors, gt) >= 0).sum() > 128
    out = sample_rpn_targets(anchors, gt, None, np.random.default_rng(0))
    assert out["labels"].sum() == 128 and out["valid"].sum() == 256
    out = sample_rpn_targets(
        ANCHORS, np.zeros((2, 4), np.float32), np.zeros(2, bool), np.random.default_rng(0)
    )
    assert out["labels"].sum() == 0 and out["valid"].all()
    # fewer anchors than the batch: padded
    out = sample_rpn_targets(ANCHORS[:100], gt, None, np.random.default_rng(0))
    assert out["valid"].sum() == 100 and not out["valid"][100:].any()


def test_rpn_reproducible():
    rng = np.random.default_rng(2)
    gt = _gt(rng, 3)
    a = sample_rpn_targets(ANCHORS, gt, None, image_rng(5, 10, 1))
    b = sample_rpn_targets(ANCHORS, gt, None, image_rng(5, 10, 1))
    c = sample_rpn_targets(ANCHORS, gt, None, image_rng(5, 11, 1))
    np.testing.assert_array_equal(a["indices"], b["indices"])
    assert not np.array_equal(a["indices"], c["indices"])
    batch = sample_rpn_targets_batched(ANCHORS, np.stack([gt, gt]), None, seed=5, step=10)
    assert batch["indices"].shape == (2, 256)
    np.testing.assert_array_equal(batch["indices"][1], a["indices"])


def _proposals(rng, gt, n_near=150, n_far=300):
    k = rng.integers(0, len(gt), n_near)
    g = gt[k]
    wh = g[:, 2:] - g[:, :2]
    jit = rng.normal(0, 0.12, (n_near, 4)) * np.concatenate([wh, wh], 1)
    near = g + jit
    xy = rng.uniform(0, 600, (n_far, 2))
    far = np.concatenate([xy, xy + rng.uniform(10, 200, (n_far, 2))], 1)
    props = np.concatenate([near, far]).astype(np.float32)
    props[:, 2:] = np.maximum(props[:, 2:], props[:, :2] + 1)
    return props[rng.permutation(len(props))]


def test_roi_counts_order_and_labels():
    rng = np.random.default_rng(3)
    gt = np.concatenate([_gt(rng, 5), np.zeros((2, 4), np.float32)])
    pids = np.array([3, -1, 7, 1, -1, 0, 0], np.int32)  # two unlabeled people (-1)
    gt_valid = np.array([True] * 5 + [False] * 2)
    props = _proposals(rng, gt[:5])
    pvalid = rng.uniform(size=len(props)) < 0.9
    out = sample_roi_targets(props, pvalid, gt, pids, gt_valid, image_rng(0, 0, 0))
    assert set(out) == {"boxes", "pids", "targets", "gt_index", "valid"}
    assert out["valid"].all() and out["pids"].dtype == np.int32
    n_pos = int((out["pids"] != 0).sum())
    assert 0 < n_pos <= 64
    assert (out["pids"] == -1).any()  # unlabeled people are positives too

    cand = np.concatenate([props[pvalid], gt[:5]])
    iou = box_iou(gt[:5], cand)
    matched = match_boxes(iou, None, 0.5, 0.5, False)
    # sampled rows are candidates in ascending candidate order
    idx = np.array([np.flatnonzero((cand == b).all(1))[0] for b in out["boxes"]])
    assert (np.diff(idx) > 0).all()
    lab = np.where(matched[idx] >= 0, pids[:5][np.maximum(matched[idx], 0)], 0)
    np.testing.assert_array_equal(out["pids"], lab)
    np.testing.assert_array_equal(out["gt_index"], np.where(matched[idx] >= 0, matched[idx], -1))
    assert n_pos == min(int((matched >= 0).sum()), 64)
    np.testing.assert_allclose(
        out["targets"],
        BoxCoder((10, 10, 5, 5)).encode(gt[:5][np.maximum(matched[idx], 0)], cand[idx]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_roi_gt_appended_and_padding():
    gt = np.array([[10, 10, 50, 110], [200, 50, 260, 200]], np.float32)
    pids = np.array([4, -1], np.int32)
    props = np.array([[12, 12, 50, 108], [400, 300, 450, 380], [0, 0, 5, 5]], np.float32)
    pvalid = np.array([True, True, False])
    out = sample_roi_targets(props, pvalid, gt, pids, None, np.random.default_rng(0))
    # candidates: prop0 (matches gt0), prop1 (background), gt0, gt1 → 4 valid rows, in order
    assert out["valid"].sum() == 4 and not out["valid"][4:].any()
    np.testing.assert_array_equal(out["boxes"][:4], np.concatenate([props[:2], gt]))
    np.testing.assert_array_equal(out["pids"][:4], [4, 0, 4, -1])
    np.testing.assert_array_equal(out["gt_index"][:4], [0, -1, 0, 1])
    np.testing.assert_array_equal(out["targets"][2:4], 0)  # GT against itself
    np.testing.assert_array_equal(out["boxes"][4:], 0)
    np.testing.assert_array_equal(out["pids"][4:], 0)
    assert (out["gt_index"][4:] == -1).all()


def test_roi_caps_and_no_gt():
    rng = np.random.default_rng(4)
    gt = _gt(rng, 6)
    props = _proposals(rng, gt, n_near=600, n_far=50)
    out = sample_roi_targets(props, None, gt, np.arange(1, 7), None, np.random.default_rng(1))
    assert (out["pids"] != 0).sum() == 64 and out["valid"].sum() == 128
    out = sample_roi_targets(
        props, None, gt, np.arange(1, 7), np.zeros(6, bool), np.random.default_rng(1)
    )
    assert (out["pids"] == 0).all() and out["valid"].sum() == 128
    np.testing.assert_array_equal(out["targets"], 0)


def test_roi_batched_reproducible_and_streams():
    rng = np.random.default_rng(5)
    gts = np.stack([_gt(rng, 4) for _ in range(3)])
    props = np.stack([_proposals(rng, g) for g in gts])
    pids = np.tile(np.arange(1, 5, dtype=np.int32), (3, 1))
    kw = dict(seed=1, step=2)
    a = sample_roi_targets_batched(props, None, gts, pids, None, stream=1, **kw)
    b = sample_roi_targets_batched(props, None, gts, pids, None, stream=1, num_threads=3, **kw)
    c = sample_roi_targets_batched(props, None, gts, pids, None, stream=2, **kw)
    assert a["boxes"].shape == (3, 128, 4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["boxes"], c["boxes"])
    one = sample_roi_targets(props[2], None, gts[2], pids[2], None, image_rng(1, 2, 2, 1))
    np.testing.assert_array_equal(a["boxes"][2], one["boxes"])


def test_shape_errors():
    with pytest.raises(ValueError, match="gt_boxes"):
        sample_rpn_targets(ANCHORS, np.zeros((3, 5)), None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="gt_pids"):
        sample_roi_targets(
            np.zeros((3, 4)), None, np.zeros((2, 4)), np.zeros(3), None, np.random.default_rng(0)
        )
