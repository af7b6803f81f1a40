"""Legacy RoIAlign: hand-computed values on an ``arange`` map, a literal port of the torchvision
0.4 CPU kernel as reference, jit/vmap/grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqnet_jax.ops.roi_align import roi_align as roi_align_eager
from seqnet_jax.ops.roi_align import roi_align_batched

# Jitted: eager mode would compile every primitive separately (seconds per new shape).
roi_align = jax.jit(roi_align_eager, static_argnums=(2, 3, 4))


def _bilinear(f, y, x):
    """torchvision 0.4 ``bilinear_interpolate`` (legacy), f (H, W, C)."""
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= h - 1:
        y_high = y_low = h - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= w - 1:
        x_high = x_low = w - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * f[y_low, x_low]
        + hy * lx * f[y_low, x_high]
        + ly * hx * f[y_high, x_low]
        + ly * lx * f[y_high, x_high]
    )


def _roi_align_ref(f, boxes, s, scale, sr):
    out = np.zeros((len(boxes), s, s, f.shape[2]))
    for r, (x1, y1, x2, y2) in enumerate(boxes):
        sx, sy = x1 * scale, y1 * scale
        rw, rh = max(x2 * scale - sx, 1.0), max(y2 * scale - sy, 1.0)
        bw, bh = rw / s, rh / s
        for ph in range(s):
            for pw in range(s):
                acc = 0.0
                for iy in range(sr):
                    yy = sy + ph * bh + (iy + 0.5) * bh / sr
                    for ix in range(sr):
                        xx = sx + pw * bw + (ix + 0.5) * bw / sr
                        acc = acc + _bilinear(f, yy, xx)
                out[r, ph, pw] = acc / (sr * sr)
    return out


def _arange_map(h=5, w=5, c=1):
    # F[y, x, k] = y * w + x + 100 k: bilinear interpolation of a linear map is exact.
    y, x, k = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return (y * w + x + 100 * k).astype(np.float32)


def test_inside_box_is_the_map_at_the_mean_sample():
    f = jnp.asarray(_arange_map())
    out = roi_align(f, jnp.array([[0.0, 0.0, 4.0, 4.0]]), 2, 1.0, 2)
    # bin (0,0) samples at 0.5 and 1.5 on each axis → F(1, 1) = 6
    np.testing.assert_allclose(np.asarray(out[0, :, :, 0]), [[6, 8], [16, 18]])


def test_box_crossing_the_border():
    f = jnp.asarray(_arange_map())  # 5 × 5
    out = np.asarray(roi_align(f, jnp.array([[3.0, 3.0, 7.0, 7.0]]), 2, 1.0, 2))[0, :, :, 0]
    # samples 3.5, 4.5 (floor 4 = H-1 → reads row/col 4 only), 5.5, 6.5 (> 5 → 0)
    expected_00 = np.mean([3.5 * 5 + 3.5, 3.5 * 5 + 4, 4 * 5 + 3.5, 4 * 5 + 4])  # 22.5
    np.testing.assert_allclose(out, [[expected_00, 0], [0, 0]])


def test_box_fully_outside_is_zero():
    f = jnp.asarray(_arange_map(c=3)) + 1.0
    boxes = jnp.array([[10.0, 10.0, 20.0, 20.0], [-30.0, -30.0, -10.0, -10.0]])
    out = roi_align(f, boxes, 3, 1.0, 2)
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_negative_coordinates_clamp_and_drop():
    f = jnp.asarray(_arange_map())
    out = np.asarray(roi_align(f, jnp.array([[-2.0, -2.0, 2.0, 2.0]]), 2, 1.0, 2))[0, :, :, 0]
    # samples -1.5 (< -1 → 0), -0.5 (→ clamped to 0), 0.5, 1.5
    v = lambda y, x: y * 5 + x  # noqa: E731
    b00 = (v(0, 0)) / 4  # only (-0.5, -0.5) → (0, 0) is valid
    b01 = (v(0, 0.5) + v(0, 1.5)) / 4
    b11 = (v(0.5, 0.5) + v(0.5, 1.5) + v(1.5, 0.5) + v(1.5, 1.5)) / 4
    np.testing.assert_allclose(out, [[b00, b01], [(v(0.5, 0) + v(1.5, 0)) / 4, b11]], rtol=1e-6)


def test_tiny_box_uses_unit_roi_and_scale():
    f = jnp.asarray(_arange_map(7, 9, 2))
    # roi smaller than one feature pixel → roi size 1; scale 1/16 maps image px to feature px
    out = np.asarray(roi_align(f, jnp.array([[16.0, 32.0, 17.0, 33.0]]), 1, 1.0 / 16, 2))
    np.testing.assert_allclose(out[0, 0, 0], [2.5 * 9 + 1.5, 2.5 * 9 + 1.5 + 100], rtol=1e-6)


def test_matches_kernel_port_on_random_boxes():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 8, 3)).astype(np.float32)
    xy = rng.uniform(-40, 140, (12, 2))
    wh = rng.uniform(0, 90, (12, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    out = np.asarray(roi_align(jnp.asarray(f), jnp.asarray(boxes), 4, 1.0 / 16, 2))
    ref = _roi_align_ref(f.astype(np.float64), boxes.astype(np.float64), 4, 1.0 / 16, 2)
    assert out.shape == (12, 4, 4, 3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_output_size_tuple_and_dtype():
    f = jnp.asarray(_arange_map(5, 5, 2)).astype(jnp.bfloat16)
    out = roi_align(f, jnp.array([[0.0, 0.0, 4.0, 4.0]]), (2, 4), 1.0, 2)
    assert out.shape == (1, 2, 4, 2) and out.dtype == jnp.bfloat16


def test_jit_vmap_and_grad():
    rng = np.random.default_rng(1)
    feats = jnp.asarray(rng.normal(size=(2, 6, 7, 4)).astype(np.float32))
    boxes = jnp.asarray(rng.uniform(0, 100, (2, 5, 4)).astype(np.float32))
    boxes = jnp.concatenate([boxes[..., :2], boxes[..., :2] + boxes[..., 2:] / 2], -1)
    fn = jax.jit(lambda f, b: roi_align_batched(f, b, 3, 1.0 / 16, 2))
    out = fn(feats, boxes)
    assert out.shape == (2, 5, 3, 3, 4)
    for i in range(2):
        np.testing.assert_allclose(
            np.asarray(out[i]),
            np.asarray(roi_align(feats[i], boxes[i], 3, 1.0 / 16, 2)),
            rtol=1e-5,
            atol=1e-6,
        )
    # RoIAlign is linear in the features: <A f, g> = <f, A^T g> with A^T g = grad.
    g = jnp.asarray(rng.normal(size=out.shape).astype(np.float32))
    grad = jax.grad(lambda f: jnp.sum(fn(f, boxes) * g))(feats)
    assert grad.shape == feats.shape and bool(jnp.any(grad != 0))
    np.testing.assert_allclose(float(jnp.sum(out * g)), float(jnp.sum(feats * grad)), rtol=1e-4)


def test_loud_shape_errors():
    f = jnp.zeros((4, 4, 2))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        roi_align(jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"\(R, 4\)"):
        roi_align(f, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(f, jnp.zeros((3, 4)), sampling_ratio=0)
    with pytest.raises(ValueError, match=r"\(B, R, 4\)"):
        roi_align_batched(jnp.zeros((2, 4, 4, 2)), jnp.zeros((3, 5, 4)))


def test_extent_equals_the_cropped_map():
    """With ``extents`` (the reference canvas at the feature stride), a map larger than the canvas
    gives exactly what the canvas-sized map gives: boxes at the canvas edge use its last row and
    column (the reference's clamping), never the array beyond. Gather and matmul forms, values and
    feature gradients."""
    from seqnet_jax.ops.roi_align import roi_align_matmul

    rng = np.random.default_rng(3)
    feat = jnp.asarray(rng.normal(size=(2, 9, 11, 3)), jnp.float32)
    ext = np.asarray([[6, 7], [9, 8]], np.int32)
    # boxes reaching the canvas's right/bottom edge (x up to 16 * 7, y up to 16 * 6 for image 0)
    boxes = jnp.asarray(
        [
            [[60, 40, 112, 96], [90, 70, 111.5, 95.5], [0, 0, 30, 30]],
            [[100, 100, 128, 144], [10, 120, 127, 144], [5, 5, 20, 50]],
        ],
        jnp.float32,
    )
    for plain in (roi_align_batched, roi_align_matmul):
        fn = jax.jit(plain, static_argnums=(2, 3, 4))  # op by op it took ~15 s on 2 cores
        got = fn(feat, boxes, 4, 1.0 / 16, 2, ext)
        for b in range(2):
            crop = feat[b : b + 1, : ext[b, 0], : ext[b, 1]]
            want = fn(crop, boxes[b : b + 1], 4, 1.0 / 16, 2)
            np.testing.assert_allclose(got[b], want[0], rtol=1e-6, atol=1e-6)
        # without the extent the edge boxes read the rows beyond the canvas: different values
        assert not np.allclose(fn(feat, boxes, 4, 1.0 / 16, 2)[0, :2], got[0, :2], atol=1e-3)
        cot = jnp.asarray(rng.normal(size=got.shape), jnp.float32)
        g = jax.jit(jax.grad(lambda f, fn=fn, c=cot: jnp.sum(fn(f, boxes, 4, 1 / 16, 2, ext) * c)))(
            feat
        )
        assert float(jnp.abs(g[0, 6:]).max()) == 0.0 and float(jnp.abs(g[0, :, 7:]).max()) == 0.0


def test_extent_shape_error():
    with pytest.raises(ValueError, match=r"extents must be \(B, 2\)"):
        roi_align_batched(
            jnp.zeros((2, 4, 4, 2)), jnp.zeros((2, 1, 4)), 2, 1.0, 2, jnp.ones((3, 2))
        )
