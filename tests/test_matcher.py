"""Matcher: thresholds, low-quality matches with ties, padded GT, numpy/jax parity."""

import jax
import jax.numpy as jnp
import numpy as np

from seqnet_jax.ops.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_boxes

IOU = np.array(
    [
        # p0    p1    p2    p3    p4    p5
        [0.80, 0.50, 0.10, 0.00, 0.40, 0.00],  # gt0: best 0.80 (p0)
        [0.75, 0.20, 0.25, 0.05, 0.40, 0.00],  # gt1: best 0.75 (p0 only, but p0 → gt0)
        [0.00, 0.00, 0.29, 0.29, 0.10, 0.00],  # gt2: best 0.29, tie p2/p3
    ],
    np.float32,
)


def test_thresholds_without_low_quality():
    m = match_boxes(IOU, None, 0.7, 0.3, allow_low_quality=False)
    assert m.dtype == np.int32
    np.testing.assert_array_equal(m, [0, BETWEEN_THRESHOLDS, -1, -1, BETWEEN_THRESHOLDS, -1])


def test_low_quality_matches_with_ties():
    m = match_boxes(IOU, None, 0.7, 0.3, allow_low_quality=True)
    # p2 and p3 both reach gt2's max (tie) and get their own argmax: p2 → gt2 (0.29 > 0.25),
    # p3 → gt2. gt1's best column p0 keeps its own argmax gt0.
    np.testing.assert_array_equal(m, [0, BETWEEN_THRESHOLDS, 2, 2, BETWEEN_THRESHOLDS, -1])


def test_low_quality_restores_own_argmax_not_the_gt():
    iou = np.array([[0.2, 0.0], [0.3, 0.1]], np.float32)
    # gt0's best column is p0, whose own argmax is gt1 → p0 gets gt1 (not gt0); p1 is no
    # GT's best and stays below the low threshold.
    np.testing.assert_array_equal(match_boxes(iou, None, 0.7, 0.3, True), [1, -1])


def test_equal_thresholds_have_no_between():
    iou = np.array([[0.5, 0.49, 0.9]], np.float32)
    np.testing.assert_array_equal(match_boxes(iou, None, 0.5, 0.5, False), [0, -1, 0])


def test_padded_gt_rows_are_ignored():
    iou = np.concatenate([IOU, np.full((2, 6), 0.95, np.float32)])
    valid = np.array([True, True, True, False, False])
    for lq in (False, True):
        np.testing.assert_array_equal(
            match_boxes(iou, valid, 0.7, 0.3, lq), match_boxes(IOU, None, 0.7, 0.3, lq)
        )


def test_no_valid_gt():
    iou = np.full((3, 4), 0.9, np.float32)
    np.testing.assert_array_equal(match_boxes(iou, np.zeros(3, bool), 0.7, 0.3, True), [-1] * 4)
    np.testing.assert_array_equal(
        match_boxes(np.zeros((0, 4), np.float32), None), [BELOW_LOW_THRESHOLD] * 4
    )
    assert match_boxes(np.zeros((2, 0), np.float32), None).shape == (0,)


def test_jax_matches_numpy():
    rng = np.random.default_rng(0)
    fns = {lq: jax.jit(lambda i, v, lq=lq: match_boxes(i, v, 0.7, 0.3, lq)) for lq in (False, True)}
    for _ in range(20):
        iou = np.round(rng.uniform(0, 1, (5, 30)), 1).astype(np.float32)  # many ties
        iou[:, rng.uniform(size=30) < 0.3] = 0.0
        valid = rng.uniform(size=5) < 0.7
        for lq, fn in fns.items():
            out = fn(jnp.asarray(iou), jnp.asarray(valid))
            assert isinstance(out, jax.Array) and out.dtype == jnp.int32
            np.testing.assert_array_equal(np.asarray(out), match_boxes(iou, valid, 0.7, 0.3, lq))
