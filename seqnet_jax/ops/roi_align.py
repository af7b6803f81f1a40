"""Legacy (``aligned=False``) RoIAlign of torchvision 0.4 in pure ``jax.numpy`` (§2.5).

Per RoI: ``start = x1 * scale``, ``roi_w = max((x2 - x1) * scale, 1)`` (same for y), the RoI is
cut into ``S × S`` bins, and each bin averages ``sr × sr`` bilinear samples at
``start + p * bin + (i + 0.5) * bin / sr``. A sample with ``y < -1``, ``y > H``, ``x < -1`` or
``x > W`` contributes 0; negative coordinates are clamped to 0; a sample whose ``floor`` reaches
the last row/column reads that row/column only.

``extent`` (optional, ``(h, w)`` per image) is the size of the feature map the reference has: its
padded canvas at the feature stride, which can be smaller than the array (our fixed padding
buckets). Bounds and the last-row/column clamping then use it, so the array beyond it is never
read and the result equals the reference's on its smaller map.

The bilinear weights are separable, so the op is a handful of gathers of ``(R, S, S, C)`` slices
of the feature map (one per sample offset and corner) summed with per-sample weights: no dense
``(R, S*S, H*W)`` interpolation matrix. Gradients flow to ``features`` (scatter-add); the boxes
are treated as constants (torchvision has no box gradient either).
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Tuple, Union

import jax
import jax.numpy as jnp

Size = Union[int, Tuple[int, int]]


def _pair(output_size: Size) -> Tuple[int, int]:
    if isinstance(output_size, int):
        return output_size, output_size
    sh, sw = output_size
    return int(sh), int(sw)


def _axis_samples(start, bin_size, n_bins: int, sr: int, size):
    """Sample positions along one axis and their bilinear indices/weights.

    ``start``/``bin_size`` ``(R,)``, ``size`` the map's extent along the axis (an int, or
    ``(R,)``) → ``low, high`` int32 and ``w_low, w_high`` float32, each ``(R, n_bins, sr)``;
    invalid samples get zero weights.
    """
    size = jnp.asarray(size, jnp.int32)
    if size.ndim == 1:
        size = size[:, None, None]
    p = jnp.arange(n_bins, dtype=jnp.float32)[None, :, None]
    i = (jnp.arange(sr, dtype=jnp.float32) + 0.5)[None, None, :]
    start = start[:, None, None]
    bin_size = bin_size[:, None, None]
    coord = start + p * bin_size + i * bin_size / sr
    invalid = (coord < -1.0) | (coord > size.astype(jnp.float32))
    coord = jnp.maximum(coord, 0.0)
    low = jnp.floor(coord).astype(jnp.int32)
    at_end = low >= size - 1
    low = jnp.where(at_end, size - 1, low)
    high = jnp.where(at_end, size - 1, low + 1)
    coord = jnp.where(at_end, low.astype(jnp.float32), coord)
    frac = coord - low.astype(jnp.float32)
    w_low = jnp.where(invalid, 0.0, 1.0 - frac)
    w_high = jnp.where(invalid, 0.0, frac)
    return low, high, w_low, w_high


def roi_align(
    features: jax.Array,
    boxes: jax.Array,
    output_size: Size = 14,
    spatial_scale: float = 1.0 / 16,
    sampling_ratio: int = 2,
    extent: Optional[jax.Array] = None,
) -> jax.Array:
    """Legacy RoIAlign of one image.

    Args:
      features: ``(H, W, C)`` feature map.
      boxes: ``(R, 4)`` ``x1, y1, x2, y2`` in input-image pixels.
      output_size: ``S`` or ``(S_h, S_w)`` bins.
      spatial_scale: feature pixels per image pixel (1/16 for res4).
      sampling_ratio: samples per bin along each axis (must be > 0; the adaptive
        ``sampling_ratio <= 0`` mode of torchvision has data-dependent shapes).
      extent: optional ``(2,)`` int ``(h, w) <= (H, W)``: the map's size as the reference has it
        (see the module docstring); default ``(H, W)``.

    Returns:
      ``(R, S_h, S_w, C)`` in ``features.dtype`` (accumulated in float32).
    """
    if features.ndim != 3:
        raise ValueError(f"roi_align: features must be (H, W, C), got shape {features.shape}")
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"roi_align: boxes must be (R, 4) x1,y1,x2,y2, got shape {boxes.shape}")
    sr = int(sampling_ratio)
    if sr <= 0:
        raise ValueError(f"roi_align: sampling_ratio must be > 0, got {sampling_ratio}")
    sh, sw = _pair(output_size)
    height, width, _ = features.shape
    if extent is not None:
        height, width = extent[0], extent[1]

    boxes = jax.lax.stop_gradient(boxes).astype(jnp.float32)
    scale = jnp.float32(spatial_scale)
    x1 = boxes[:, 0] * scale
    y1 = boxes[:, 1] * scale
    roi_w = jnp.maximum(boxes[:, 2] * scale - x1, 1.0)
    roi_h = jnp.maximum(boxes[:, 3] * scale - y1, 1.0)
    yl, yh, wyl, wyh = _axis_samples(y1, roi_h / sh, sh, sr, height)
    xl, xh, wxl, wxh = _axis_samples(x1, roi_w / sw, sw, sr, width)

    out = None
    for iy in range(sr):
        ylo = yl[:, :, iy][:, :, None]  # (R, S_h, 1)
        yhi = yh[:, :, iy][:, :, None]
        ly = wyh[:, :, iy][:, :, None, None]  # weight of the high row
        hy = wyl[:, :, iy][:, :, None, None]
        for ix in range(sr):
            xlo = xl[:, :, ix][:, None, :]  # (R, 1, S_w)
            xhi = xh[:, :, ix][:, None, :]
            lx = wxh[:, :, ix][:, None, :, None]
            hx = wxl[:, :, ix][:, None, :, None]
            val = (
                (hy * hx) * features[ylo, xlo]
                + (hy * lx) * features[ylo, xhi]
                + (ly * hx) * features[yhi, xlo]
                + (ly * lx) * features[yhi, xhi]
            )
            out = val if out is None else out + val
    out = out / float(sr * sr)
    return out.astype(features.dtype)


def _extents(extents, features: jax.Array) -> jax.Array:
    """``(B, 2)`` int32 extents, capped at the array's ``(H, W)``."""
    e = jnp.asarray(extents, jnp.int32)
    if e.shape != (features.shape[0], 2):
        raise ValueError(f"extents must be (B, 2) = ({features.shape[0]}, 2), got {e.shape}")
    return jnp.minimum(e, jnp.asarray(features.shape[1:3], jnp.int32))


def _check_batched(features: jax.Array, boxes: jax.Array, name: str) -> None:
    if features.ndim != 4:
        raise ValueError(f"{name}: features must be (B, H, W, C), got shape {features.shape}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or boxes.shape[0] != features.shape[0]:
        raise ValueError(
            f"{name}: boxes must be (B, R, 4) with B = {features.shape[0]}, got shape {boxes.shape}"
        )


def roi_align_batched(
    features: jax.Array,
    boxes: jax.Array,
    output_size: Size = 14,
    spatial_scale: float = 1.0 / 16,
    sampling_ratio: int = 2,
    extents: Optional[jax.Array] = None,
) -> jax.Array:
    """:func:`roi_align` over a batch: ``features (B, H, W, C)``, ``boxes (B, R, 4)`` →
    ``(B, R, S_h, S_w, C)``. Image ``b``'s boxes only read image ``b``'s features, within
    ``extents[b]`` (``(B, 2)`` int, optional)."""
    _check_batched(features, boxes, "roi_align_batched")
    fn = partial(
        roi_align,
        output_size=output_size,
        spatial_scale=spatial_scale,
        sampling_ratio=sampling_ratio,
    )
    if extents is None:
        return jax.vmap(fn)(features, boxes)
    return jax.vmap(lambda f, b, e: fn(f, b, extent=e))(
        features, boxes, _extents(extents, features)
    )


def _axis_weights(start, bin_size, n_bins: int, sr: int, size: int, extent=None) -> jax.Array:
    """Interpolation matrix of one axis: ``(R, n_bins, size)``, the average over the ``sr``
    samples of each bin of their two-tap bilinear weights (zero for invalid samples);
    ``extent (R,)``: the map's extent per RoI (default ``size``)."""
    ext = size if extent is None else extent
    low, high, w_low, w_high = _axis_samples(start, bin_size, n_bins, sr, ext)
    onehot = lambda idx: jax.nn.one_hot(idx, size, dtype=jnp.float32)  # noqa: E731
    m = onehot(low) * w_low[..., None] + onehot(high) * w_high[..., None]  # (R, n, sr, size)
    return jnp.sum(m, axis=2) / float(sr)


def roi_align_matmul(
    features: jax.Array,
    boxes: jax.Array,
    output_size: Size = 14,
    spatial_scale: float = 1.0 / 16,
    sampling_ratio: int = 2,
    extents: Optional[jax.Array] = None,
) -> jax.Array:
    """Same values as :func:`roi_align_batched`, computed as two matrix products.

    Bilinear sampling and the per-bin average are separable, so per RoI the output is
    ``A_y · F · A_xᵀ`` with ``A_y (S_h, H)`` and ``A_x (S_w, W)`` interpolation matrices. Dense
    matmuls (and their transposes in the backward pass) replace gathers and scatter-adds, which is
    much faster on CPUs and lets GPUs use their matrix units.

    ``features (B, H, W, C)``, ``boxes (B, R, 4)`` → ``(B, R, S_h, S_w, C)``.
    """
    _check_batched(features, boxes, "roi_align_matmul")
    sr = int(sampling_ratio)
    if sr <= 0:
        raise ValueError(f"roi_align: sampling_ratio must be > 0, got {sampling_ratio}")
    sh, sw = _pair(output_size)
    b, height, width, c = features.shape
    r = boxes.shape[1]
    bx = jax.lax.stop_gradient(boxes).astype(jnp.float32).reshape(-1, 4)
    scale = jnp.float32(spatial_scale)
    x1, y1 = bx[:, 0] * scale, bx[:, 1] * scale
    roi_w = jnp.maximum(bx[:, 2] * scale - x1, 1.0)
    roi_h = jnp.maximum(bx[:, 3] * scale - y1, 1.0)
    ey = ex = None
    if extents is not None:
        e = jnp.repeat(_extents(extents, features), r, axis=0)  # (B*R, 2)
        ey, ex = e[:, 0], e[:, 1]
    ay = _axis_weights(y1, roi_h / sh, sh, sr, height, ey).reshape(b, r, sh, height)
    ax = _axis_weights(x1, roi_w / sw, sw, sr, width, ex).reshape(b, r, sw, width)
    dt = features.dtype
    t = jnp.einsum("brjw,bhwc->brhjc", ax.astype(dt), features, preferred_element_type=jnp.float32)
    out = jnp.einsum("brih,brhjc->brijc", ay.astype(jnp.float32), t)
    return out.astype(dt)
