"""Box utilities (torchvision 0.4 semantics) that work on numpy and jax arrays alike.

Boxes are ``(..., 4)`` ``(x1, y1, x2, y2)`` in pixels; width = ``x2 - x1`` (no +1). Every function
picks its array namespace from its inputs: numpy in → numpy out (host stages never touch jax),
a ``jax.Array`` (or tracer) in → ``jax.numpy`` out (jit-able, vmap-able). Nothing loops in Python.
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np

DEFAULT_BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def array_namespace(*arrays):
    """``jax.numpy`` if any argument is a jax array (or tracer), else ``numpy``.

    jax is only looked at when it was already imported, so host code stays jax-free.
    """
    if "jax" in sys.modules:
        import jax

        for a in arrays:
            if isinstance(a, jax.Array):
                import jax.numpy as jnp

                return jnp
    return np


def _check_boxes(boxes, name: str = "boxes") -> None:
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) (x1, y1, x2, y2), got {boxes.shape}")


def box_area(boxes):
    """Area ``(x2 - x1) * (y2 - y1)`` of ``boxes (..., 4)`` → ``(...)``."""
    _check_boxes(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU (torchvision ``box_iou``, no +1).

    ``boxes1 (..., N, 4)``, ``boxes2 (..., M, 4)`` → ``(..., N, M)``. A pair whose union is
    zero (two degenerate boxes) gets IoU 0 instead of NaN.
    """
    xp = array_namespace(boxes1, boxes2)
    _check_boxes(boxes1, "boxes1")
    _check_boxes(boxes2, "boxes2")
    area1 = box_area(boxes1)
    area2 = box_area(boxes2)
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    lt = xp.maximum(a[..., :2], b[..., :2])
    rb = xp.minimum(a[..., 2:], b[..., 2:])
    wh = xp.maximum(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    pos = union > 0
    return xp.where(pos, inter / xp.where(pos, union, 1), 0)


def _size_for(size, boxes, xp):
    """Cast ``size`` to the boxes' dtype and shape it to broadcast against ``boxes[..., 0]``.

    Accepted: a scalar; an array of the leading batch dims ``boxes.shape[:-2]`` (e.g. ``(B,)``
    for ``(B, N, 4)`` boxes, a trailing axis is added); or anything already broadcastable to
    ``boxes.shape[:-1]`` (e.g. ``(B, 1)``).
    """
    size = xp.asarray(size).astype(boxes.dtype)
    if size.ndim and size.ndim == boxes.ndim - 2:
        size = size[..., None]
    return size


def clip_boxes(boxes, height, width):
    """Clamp x to ``[0, width]`` and y to ``[0, height]`` (torchvision ``clip_boxes_to_image``).

    ``boxes (..., N, 4)``; ``height``/``width`` scalars or per-image arrays of the leading dims
    (``(B,)`` for ``(B, N, 4)``) or already broadcastable to ``(..., N)``. Same shape out.
    """
    xp = array_namespace(boxes, height, width)
    _check_boxes(boxes)
    h = _size_for(height, boxes, xp)
    w = _size_for(width, boxes, xp)
    x1 = xp.minimum(xp.maximum(boxes[..., 0], 0), w)
    y1 = xp.minimum(xp.maximum(boxes[..., 1], 0), h)
    x2 = xp.minimum(xp.maximum(boxes[..., 2], 0), w)
    y2 = xp.minimum(xp.maximum(boxes[..., 3], 0), h)
    return xp.stack([x1, y1, x2, y2], axis=-1)


def remove_small_boxes_mask(boxes, min_size: float):
    """Keep mask ``(w >= min_size) & (h >= min_size)`` of ``boxes (..., 4)`` → bool ``(...)``."""
    _check_boxes(boxes)
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


class BoxCoder:
    """torchvision 0.4 ``det_utils.BoxCoder``: (dx, dy, dw, dh) regression deltas.

    ``encode(reference_boxes, proposals)`` gives the deltas that move ``proposals`` onto
    ``reference_boxes``; ``decode(deltas, boxes)`` applies deltas to ``boxes``. Widths are
    ``x2 - x1``, centres ``x1 + 0.5 * w``; ``dw``/``dh`` are clamped at ``bbox_xform_clip`` before
    the ``exp`` when decoding. Works on any leading batch dims and on numpy or jax arrays.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        bbox_xform_clip: float = DEFAULT_BBOX_XFORM_CLIP,
    ):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {weights}")
        self.weights = tuple(float(w) for w in weights)
        self.bbox_xform_clip = float(bbox_xform_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.6f})"

    def encode(self, reference_boxes, proposals):
        """Deltas ``(..., 4)`` taking ``proposals (..., 4)`` to ``reference_boxes (..., 4)``.

        Leading dims broadcast. Degenerate proposals (zero width/height) give inf/NaN, as in
        torchvision; callers only encode positive matches.
        """
        xp = array_namespace(reference_boxes, proposals)
        _check_boxes(reference_boxes, "reference_boxes")
        _check_boxes(proposals, "proposals")
        wx, wy, ww, wh = self.weights
        ex_widths = proposals[..., 2] - proposals[..., 0]
        ex_heights = proposals[..., 3] - proposals[..., 1]
        ex_ctr_x = proposals[..., 0] + 0.5 * ex_widths
        ex_ctr_y = proposals[..., 1] + 0.5 * ex_heights
        gt_widths = reference_boxes[..., 2] - reference_boxes[..., 0]
        gt_heights = reference_boxes[..., 3] - reference_boxes[..., 1]
        gt_ctr_x = reference_boxes[..., 0] + 0.5 * gt_widths
        gt_ctr_y = reference_boxes[..., 1] + 0.5 * gt_heights
        dx = wx * (gt_ctr_x - ex_ctr_x) / ex_widths
        dy = wy * (gt_ctr_y - ex_ctr_y) / ex_heights
        dw = ww * xp.log(gt_widths / ex_widths)
        dh = wh * xp.log(gt_heights / ex_heights)
        return xp.stack([dx, dy, dw, dh], axis=-1)

    def decode(self, deltas, boxes):
        """Apply ``deltas (..., 4*K)`` to ``boxes (..., 4)`` → ``(..., 4*K)`` boxes.

        ``K > 1`` decodes class-specific deltas (e.g. ``(R, 8)``) against the same box, like
        torchvision's ``decode_single``. ``boxes`` is cast to the deltas' dtype.
        """
        xp = array_namespace(deltas, boxes)
        _check_boxes(boxes)
        if deltas.ndim < 1 or deltas.shape[-1] % 4 != 0 or deltas.shape[-1] == 0:
            raise ValueError(f"deltas must have shape (..., 4*K), got {deltas.shape}")
        wx, wy, ww, wh = self.weights
        boxes = boxes.astype(deltas.dtype)
        widths = (boxes[..., 2] - boxes[..., 0])[..., None]
        heights = (boxes[..., 3] - boxes[..., 1])[..., None]
        ctr_x = boxes[..., 0][..., None] + 0.5 * widths
        ctr_y = boxes[..., 1][..., None] + 0.5 * heights
        d = deltas.reshape(deltas.shape[:-1] + (deltas.shape[-1] // 4, 4))
        dx = d[..., 0] / wx
        dy = d[..., 1] / wy
        dw = xp.minimum(d[..., 2] / ww, self.bbox_xform_clip)
        dh = xp.minimum(d[..., 3] / wh, self.bbox_xform_clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = xp.exp(dw) * widths
        pred_h = xp.exp(dh) * heights
        out = xp.stack(
            [
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ],
            axis=-1,
        )
        return out.reshape(deltas.shape)
