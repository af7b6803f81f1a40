"""The reference's padded canvas, and masks that make a larger bucket compute exactly the same.

torchvision's ``GeneralizedRCNNTransform`` (``size_divisible=32``, §2.2 item 4) pads a batch with
zeros to its largest resized image, each side rounded up to a multiple of 32: in training the
canvas of the whole batch, at test time (batch 1) each image's own. We pad into a few fixed
buckets instead (one compilation per bucket), which are at least as large. Zero padding is zero
only at the input: after the stem's BatchNorm + ReLU the padded positions are not zero any more,
so without care every convolution near the reference canvas's edge would see other values than
the reference's zero padding, and train-mode BatchNorm would average over other positions.

This module gives the canvas of a batch and the masks at each stride; the model uses them so that
inside the canvas every value equals the reference's (proof in ``modeling/backbone.py``):

* the input of every layer that mixes neighbouring positions (the 3×3 / 7×7 convolutions, the
  max pool, the RPN's 3×3 convolution) is zero outside the canvas, what zero padding gives;
* train-mode BatchNorm statistics cover the canvas region only;
* RoIAlign samples a feature map whose size is the canvas's (its edge clamping, §2.5);
* anchors outside the canvas grid do not exist (no proposals, never sampled as training anchors).

Works on numpy and jax arrays (``xp``); shapes: ``image_sizes (B, 2)`` int ``(h, w)``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

SIZE_DIVISIBLE = 32  # torchvision GeneralizedRCNNTransform(size_divisible=32)


def round_up(x, multiple: int = SIZE_DIVISIBLE):
    """``x`` rounded up to a multiple of ``multiple`` (integers, elementwise)."""
    return ((x + multiple - 1) // multiple) * multiple


def canvas_sizes(image_sizes, per_image: bool, xp: Any = jnp):
    """The reference's canvas ``(h, w)`` for each image of a batch: ``(B, 2)`` int32.

    ``per_image=True``: each image's own size rounded up to 32 (the reference's test-time
    batches of one image). ``per_image=False``: the batch's largest height and largest width,
    rounded up to 32, for every image (training batches).
    """
    s = xp.asarray(image_sizes).astype(xp.int32)
    if s.ndim != 2 or s.shape[-1] != 2:
        raise ValueError(f"image_sizes must be (B, 2) (h, w), got shape {tuple(s.shape)}")
    if not per_image:
        s = xp.broadcast_to(xp.max(s, axis=0, keepdims=True), s.shape)
    return round_up(s).astype(xp.int32)


def region_mask(canvas, height: int, width: int, stride: int, xp: Any = jnp):
    """``(B, height, width)`` bool: the positions of a stride-``stride`` map inside the canvas.

    ``canvas (B, 2)`` in input pixels (multiples of 32, so ``canvas / stride`` is exact for the
    strides 1..32 of the network).
    """
    c = xp.asarray(canvas)
    rows = xp.arange(height)[None, :, None] < (c[:, 0] // stride)[:, None, None]
    cols = xp.arange(width)[None, None, :] < (c[:, 1] // stride)[:, None, None]
    return rows & cols


def anchor_index_to_grid(index, canvas_feat_w: int, grid_w: int, num_anchors: int):
    """Anchor indices of a ``(hc, canvas_feat_w)`` grid → indices into a wider ``grid_w`` grid.

    Both are flattened in (y, x, anchor) order; the canvas grid is the top-left corner of the
    bucket's. numpy or jax integer arrays.
    """
    a = num_anchors
    y = index // (canvas_feat_w * a)
    rem = index % (canvas_feat_w * a)
    return y * (grid_w * a) + rem


def anchors_inside(canvas, feat_h: int, feat_w: int, num_anchors: int, stride: int = 16):
    """``(B, feat_h * feat_w * num_anchors)`` bool: the anchors of the reference's (canvas) grid
    among those of a ``feat_h × feat_w`` bucket grid, in (y, x, anchor) order (jax)."""
    m = region_mask(canvas, feat_h, feat_w, stride)
    return jnp.repeat(m.reshape(m.shape[0], -1), num_anchors, axis=1)


__all__ = [
    "SIZE_DIVISIBLE",
    "anchor_index_to_grid",
    "anchors_inside",
    "canvas_sizes",
    "region_mask",
    "round_up",
]
