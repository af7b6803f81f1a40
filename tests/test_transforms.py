"""Tests for seqnet_jax.data.transforms (reference §2.2)."""

import math

import numpy as np
import pytest

from seqnet_jax.data import transforms as T


def naive_bilinear(image, out_h, out_w):
    """torch 1.2 ``upsample_bilinear2d`` (align_corners=False) as a per-pixel float32 loop."""
    in_h, in_w, c = image.shape
    x = image.astype(np.float32)
    f32 = np.float32

    def taps(in_size, out_size, dst):
        scale = f32(in_size) / f32(out_size)
        src = f32(float(scale) * (dst + 0.5) - 0.5)
        src = max(src, f32(0.0))
        i0 = int(src)
        i1 = i0 + (1 if i0 < in_size - 1 else 0)
        l1 = f32(src - f32(i0))
        return i0, i1, f32(f32(1.0) - l1), l1

    out = np.zeros((out_h, out_w, c), np.float32)
    for oy in range(out_h):
        y0, y1, h0, h1 = taps(in_h, out_h, oy)
        for ox in range(out_w):
            x0, x1, w0, w1 = taps(in_w, out_w, ox)
            top = w0 * x[y0, x0] + w1 * x[y0, x1]
            bottom = w0 * x[y1, x0] + w1 * x[y1, x1]
            out[oy, ox] = h0 * top + h1 * bottom
    return out


@pytest.mark.parametrize(
    "in_hw,out_hw",
    [((7, 9), (3, 4)), ((5, 6), (13, 11)), ((10, 3), (7, 8)), ((4, 4), (4, 4)), ((1, 5), (3, 2))],
)
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resize_matches_naive_loop(in_hw, out_hw, dtype):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, in_hw + (3,)).astype(dtype)
    got = T.resize_image(image, *out_hw)
    assert got.dtype == np.float32 and got.shape == out_hw + (3,)
    np.testing.assert_allclose(got, naive_bilinear(image, *out_hw), rtol=0, atol=1e-4)


def test_resize_hand_computed():
    # Upscale 2 -> 4 columns: src = (d + .5) / 2 - .5 = -.25 (clamped to 0), .25, .75, 1.25.
    row = np.array([[[0.0], [10.0]]], np.float32)
    np.testing.assert_allclose(T.resize_image(row, 1, 4)[0, :, 0], [0.0, 2.5, 7.5, 10.0])
    # Downscale 4 -> 2: src = 0.5, 2.5 -> mean of neighbouring pairs (no antialiasing).
    row = np.array([[[0.0], [10.0], [20.0], [30.0]]], np.float32)
    np.testing.assert_allclose(T.resize_image(row, 1, 2)[0, :, 0], [5.0, 25.0])
    # Downscale 6 -> 2: src = 1, 4 -> exact samples, the other pixels are ignored.
    row = np.arange(6, dtype=np.float32).reshape(1, 6, 1) * 10
    np.testing.assert_allclose(T.resize_image(row, 1, 2)[0, :, 0], [10.0, 40.0])


def test_resize_flipped_view_and_out():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    want = T.resize_image(np.ascontiguousarray(image[:, ::-1]), 20, 31)
    np.testing.assert_array_equal(T.resize_image(image[:, ::-1], 20, 31), want)
    canvas = np.zeros((32, 32, 3), np.float32)
    T.resize_image(image[:, ::-1], 20, 31, out=canvas[:20, :31])
    np.testing.assert_array_equal(canvas[:20, :31], want)
    assert not canvas[20:].any() and not canvas[:, 31:].any()


@pytest.mark.parametrize(
    "hw,scale,out",
    [
        ((1080, 1920), 0.78125, (843, 1500)),
        ((1920, 1080), 0.78125, (1500, 843)),
        ((600, 800), 1.5, (900, 1200)),
        ((500, 500), 1.8, (900, 900)),
        ((300, 1000), 1.5, (450, 1500)),
        ((900, 1500), 1.0, (900, 1500)),
    ],
)
def test_resize_rule(hw, scale, out):
    s = T.resize_scale(*hw, min_size=900, max_size=1500)
    assert s == pytest.approx(scale, rel=1e-12)
    assert T.resized_size(*hw, s) == out


def test_resize_rule_floor():
    s = T.resize_scale(601, 803)  # 900 / 601 = 1.4975...; 803 * s = 1202.49 -> 1202
    assert T.resized_size(601, 803, s) == (math.floor(601 * s), math.floor(803 * s)) == (900, 1202)


def test_scale_boxes_per_axis():
    boxes = np.array([[10, 20, 30, 60]], np.float32)
    got = T.scale_boxes(boxes, (0.5, 2.0))
    np.testing.assert_allclose(got, [[20, 10, 60, 30]])
    assert got.dtype == np.float32
    assert T.scale_boxes(np.zeros((0, 4)), (1.0, 1.0)).shape == (0, 4)


def test_hflip_boxes_and_twice_identity():
    image = np.arange(2 * 5 * 3).reshape(2, 5, 3)
    boxes = np.array([[0, 0, 2, 1], [1.5, 0, 5, 2]], np.float32)
    fimage, fboxes = T.hflip(image, boxes)
    np.testing.assert_array_equal(fimage, image[:, ::-1])
    np.testing.assert_allclose(fboxes, [[3, 0, 5, 1], [0, 0, 3.5, 2]])
    image2, boxes2 = T.hflip(fimage, fboxes)
    np.testing.assert_array_equal(image2, image)
    np.testing.assert_array_equal(boxes2, boxes)


def white_box_image(h, w, box):
    x1, y1, x2, y2 = box
    image = np.zeros((h, w, 3), np.uint8)
    image[y1:y2, x1:x2] = 255
    return image


def assert_box_covers_white(image, box, margin=1.0):
    """Pixels whose centre is > margin inside the box are white, > margin outside are black."""
    h, w = image.shape[:2]
    cy, cx = np.mgrid[0:h, 0:w] + 0.5
    x1, y1, x2, y2 = box
    inside = (cx > x1 + margin) & (cx < x2 - margin) & (cy > y1 + margin) & (cy < y2 - margin)
    outside = (cx < x1 - margin) | (cx > x2 + margin) | (cy < y1 - margin) | (cy > y2 + margin)
    lum = image.mean(axis=-1)
    assert inside.any() and outside.any()
    assert (lum[inside] > 254.0).all()
    assert (lum[outside] < 1.0).all()


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("min_size,max_size", [(100, 160), (37, 60), (900, 1500)])
def test_box_follows_pixels_through_flip_and_resize(flip, min_size, max_size):
    h, w, box = 60, 80, (20, 10, 50, 30)
    image = white_box_image(h, w, box)
    boxes = np.array([box], np.float32)
    if flip:
        image, boxes = T.hflip(image, boxes)
        np.testing.assert_array_equal(boxes, [[30, 10, 60, 30]])
        assert_box_covers_white(image, boxes[0], margin=0.0)
    s = T.resize_scale(h, w, min_size, max_size)
    oh, ow = T.resized_size(h, w, s)
    resized = T.resize_image(image, oh, ow)
    rboxes = T.scale_boxes(boxes, (oh / h, ow / w))
    # Bilinear blends the two source pixels around a sample: the edge band is half a source pixel
    # (0.5 * s output pixels) wide on each side when upscaling, under one output pixel otherwise.
    assert_box_covers_white(resized, rboxes[0], margin=max(1.0, 0.5 * s + 0.01))


def test_default_buckets():
    assert T.default_buckets(900, 1500) == [(928, 1504), (1504, 928), (1504, 1504)]
    assert T.default_buckets(64, 96) == [(64, 96), (96, 64), (96, 96)]


def test_choose_bucket():
    buckets = T.default_buckets(900, 1500)
    assert T.choose_bucket([(843, 1500)], buckets) == (928, 1504)
    assert T.choose_bucket([(1500, 843), (1200, 900)], buckets) == (1504, 928)
    assert T.choose_bucket([(843, 1500), (1500, 843)], buckets) == (1504, 1504)
    # Smallest area wins regardless of list order.
    assert T.choose_bucket([(10, 10)], [(64, 64), (32, 48), (48, 32)]) == (32, 48)


def test_choose_bucket_errors():
    with pytest.raises(ValueError, match=r"1600x900.*\(928, 1504\)"):
        T.choose_bucket([(1600, 900)], T.default_buckets(900, 1500))
    with pytest.raises(ValueError, match="30x50"):
        T.choose_bucket([(30, 10), (10, 50)], [(32, 16), (16, 64)])
    with pytest.raises(ValueError):
        T.choose_bucket([], [(32, 32)])


@pytest.mark.parametrize("chunk_rows", [1, 2, 5, 32])
def test_resize_blocking_does_not_change_result(chunk_rows):
    rng = np.random.default_rng(2)
    for in_hw, out_hw in [((60, 17), (7, 5)), ((9, 12), (40, 30)), ((33, 33), (20, 25))]:
        image = rng.integers(0, 256, in_hw + (3,)).astype(np.uint8)
        got = T.resize_image(image, *out_hw, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(got, naive_bilinear(image, *out_hw))
