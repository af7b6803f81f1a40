"""Box utilities: hand-computed values, numpy/jax parity, BoxCoder round trip and clamp."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqnet_jax.ops.box_ops import (
    DEFAULT_BBOX_XFORM_CLIP,
    BoxCoder,
    array_namespace,
    box_area,
    box_iou,
    clip_boxes,
    remove_small_boxes_mask,
)


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_namespace_follows_input():
    assert array_namespace(np.zeros(3)) is np
    assert array_namespace(np.zeros(3), jnp.zeros(3)) is jnp
    out = jax.jit(lambda b: box_area(b))(jnp.ones((2, 4)))
    assert isinstance(out, jax.Array)


def test_box_area():
    b = np.array([[0, 0, 10, 20], [5, 5, 6, 5]], np.float32)
    np.testing.assert_array_equal(box_area(b), [200.0, 0.0])


def test_box_iou_hand_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (3, 4) and iou.dtype == np.float32
    expected = np.array(
        [[25 / 175, 1, 0, 0], [25 / 175, 1, 0, 0], [0, 0, 0, 0]], np.float32
    )  # the degenerate pair has zero union → 0, not NaN
    np.testing.assert_allclose(iou, expected, rtol=1e-6)
    assert not np.isnan(iou).any()
    np.testing.assert_allclose(np.asarray(box_iou(jnp.asarray(a), jnp.asarray(b))), expected, 1e-6)


def test_box_iou_no_plus_one_and_batched():
    # width is x2 - x1: [0,0,1,1] and [0,0,2,1] overlap by 1 of 2.
    np.testing.assert_allclose(
        box_iou(np.array([[0, 0, 1, 1.0]]), np.array([[0, 0, 2, 1.0]])), [[0.5]]
    )
    rng = np.random.default_rng(0)
    a = np.stack([_random_boxes(rng, 5) for _ in range(3)])
    b = np.stack([_random_boxes(rng, 7) for _ in range(3)])
    out = box_iou(a, b)
    assert out.shape == (3, 5, 7)
    for i in range(3):
        np.testing.assert_allclose(out[i], box_iou(a[i], b[i]), rtol=1e-6)


def test_clip_boxes_numpy_and_batched():
    b = np.array([[-5, -5, 50, 50], [10, 20, 30, 200]], np.float32)
    np.testing.assert_array_equal(clip_boxes(b, 100, 40), [[0, 0, 40, 50], [10, 20, 30, 100]])
    bb = np.stack([b, b])
    hs, ws = np.array([100, 30]), np.array([40, 20])
    out = clip_boxes(bb, hs, ws)  # (B, N, 4) with (B,) sizes
    assert out.shape == (2, 2, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], clip_boxes(b, 100, 40))
    np.testing.assert_array_equal(out[1], clip_boxes(b, 30, 20))
    out2 = clip_boxes(jnp.asarray(bb), jnp.asarray(hs)[:, None], jnp.asarray(ws)[:, None])
    np.testing.assert_array_equal(np.asarray(out2), out)  # (B, 1) sizes, jax


def test_remove_small_boxes_mask_torchvision_semantics():
    b = np.array([[0, 0, 1e-3, 5], [0, 0, 5e-4, 5], [0, 0, 5, 5], [3, 3, 2, 5]], np.float32)
    np.testing.assert_array_equal(
        remove_small_boxes_mask(b, np.float32(1e-3)), [True, False, True, False]
    )


def test_box_coder_hand_values():
    props = np.array([[0, 0, 10, 20]], np.float32)
    gt = np.array([[5, 5, 15, 25]], np.float32)
    np.testing.assert_allclose(BoxCoder().encode(gt, props), [[0.5, 0.25, 0, 0]])
    np.testing.assert_allclose(BoxCoder((10, 10, 5, 5)).encode(gt, props), [[5, 2.5, 0, 0]])
    d = np.array([[0.5, 0.25, math.log(2), 0.0]], np.float32)
    # centre (10, 15), w 20, h 20 → x1 = ctr - w/2 etc. (no -1 as in old detectron)
    np.testing.assert_allclose(BoxCoder().decode(d, props), [[0, 5, 20, 25]], rtol=1e-6)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_round_trip(weights):
    rng = np.random.default_rng(1)
    props = _random_boxes(rng, 50)
    gts = props + rng.normal(0, 3, props.shape).astype(np.float32)
    gts[:, 2:] = np.maximum(gts[:, 2:], gts[:, :2] + 1)
    coder = BoxCoder(weights)
    deltas = coder.encode(gts, props)
    assert deltas.shape == (50, 4) and deltas.dtype == np.float32
    np.testing.assert_allclose(coder.decode(deltas, props), gts, rtol=1e-5, atol=1e-3)
    # jax, jitted, leading batch dims
    dj = jax.jit(coder.decode)(
        jnp.asarray(deltas.reshape(5, 10, 4)), jnp.asarray(props.reshape(5, 10, 4))
    )
    np.testing.assert_allclose(np.asarray(dj).reshape(50, 4), gts, rtol=1e-5, atol=1e-3)


def test_box_coder_clamp():
    box = np.array([[0, 0, 10, 10]], np.float32)
    d = np.array([[0, 0, 10.0, -1.0]], np.float32)  # dw clamped at log(1000/16), dh not
    out = BoxCoder().decode(d, box)
    w = 10 * math.exp(DEFAULT_BBOX_XFORM_CLIP)  # 625
    h = 10 * math.exp(-1.0)
    np.testing.assert_allclose(out, [[5 - w / 2, 5 - h / 2, 5 + w / 2, 5 + h / 2]], rtol=1e-5)
    # with (10,10,5,5) the clamp applies after dividing by ww=5
    out = BoxCoder((10, 10, 5, 5)).decode(np.array([[0, 0, 50.0, 5.0]], np.float32), box)
    np.testing.assert_allclose(out[0, 2] - out[0, 0], w, rtol=1e-5)
    np.testing.assert_allclose(out[0, 3] - out[0, 1], 10 * math.e, rtol=1e-5)


def test_box_coder_class_specific_deltas():
    rng = np.random.default_rng(2)
    props = _random_boxes(rng, 6)
    deltas = rng.normal(0, 0.5, (6, 8)).astype(np.float32)
    coder = BoxCoder((10, 10, 5, 5))
    out = coder.decode(deltas, props)
    assert out.shape == (6, 8)
    np.testing.assert_allclose(out[:, 4:], coder.decode(deltas[:, 4:], props), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\*K\)"):
        coder.decode(np.zeros((6, 5), np.float32), props)
