"""Host-side image transforms of the reference input pipeline (numpy only).

Reference: ``seqnet_reference.md`` §2.2 (torchvision 0.4 ``GeneralizedRCNNTransform`` on torch 1.2).

* Resize rule: ``s = min_size / min(H, W)``; if ``max(H, W) * s > max_size`` then
  ``s = max_size / max(H, W)``; output size ``(floor(H * s), floor(W * s))`` (python doubles).
* Interpolation: bilinear, ``align_corners=False``, no antialiasing, with the sampling ratio
  recomputed from the integer sizes (``in / out``), exactly torch's ``upsample_bilinear2d``.
* Boxes ``(x1, y1, x2, y2)`` scale per axis by the integer size ratios ``out / in``.
* Horizontal flip (training, in original coordinates): ``x1' = W - x2``, ``x2' = W - x1``.
* Batching pads bottom/right with zeros; here into a small fixed set of size buckets
  (``design.md`` §1) instead of the per-batch maximum rounded up to 32.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def resize_scale(h: int, w: int, min_size: int = 900, max_size: int = 1500) -> float:
    """The reference scale factor for an ``h × w`` image (python double, as torchvision 0.4).

    ``s = min_size / min(h, w)``; if ``max(h, w) * s > max_size``: ``s = max_size / max(h, w)``.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    short, long = float(min(h, w)), float(max(h, w))
    s = min_size / short
    if long * s > max_size:
        s = max_size / long
    return s


def resized_size(h: int, w: int, s: float) -> tuple[int, int]:
    """Output size of torch 1.2 ``F.interpolate(scale_factor=s)``: ``(floor(h*s), floor(w*s))``."""
    return int(math.floor(float(h) * s)), int(math.floor(float(w) * s))


def _linear_taps(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's ``upsample_bilinear2d`` (align_corners=False).

    Mirrors the float32 kernel: ``scale = float32(in) / out``;
    ``src = float32(scale * (dst + 0.5) - 0.5)`` clamped below at 0; ``i0 = int(src)``;
    ``i1 = i0 + (i0 < in - 1)``; ``l1 = src - i0``; ``l0 = 1 - l1`` (all float32).

    Returns:
      ``i0, i1``: ``(out_size,)`` int64 neighbour indices; ``l0, l1``: ``(out_size,)`` float32.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float64)
    # The C++ expression ``scale * (dst_index + 0.5) - 0.5`` promotes to double, then stores float.
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = src.astype(np.int64)  # truncation == floor for src >= 0
    i1 = i0 + (i0 < in_size - 1)
    l1 = (src - i0.astype(np.float32)).astype(np.float32)
    l0 = (np.float32(1.0) - l1).astype(np.float32)
    return i0, i1, l0, l1


def resize_image(
    image: np.ndarray,
    out_h: int,
    out_w: int,
    out: Optional[np.ndarray] = None,
    chunk_rows: int = 32,
) -> np.ndarray:
    """Bilinear resize, ``align_corners=False``, no antialiasing (torch ``upsample_bilinear2d``).

    Computes, per output pixel,
    ``l0_y * (l0_x * x00 + l1_x * x01) + l1_y * (l0_x * x10 + l1_x * x11)`` in float32 with the
    taps of :func:`_linear_taps`: the expression and operation order of torch 1.2's CPU/CUDA
    kernels (width first, then height). Bit-identical to a per-pixel loop of that kernel; within
    ~2 ulp of torch 2.x's vectorised CPU kernel (measured on 1080x1920 -> 843x1500).

    Args:
      image: ``(H, W, C)`` uint8 or float array (any strides, e.g. a flipped view).
      out_h, out_w: output size (>= 1).
      out: optional ``(out_h, out_w, C)`` float32 array (may be a view into a padded canvas) that
        receives the result.
      chunk_rows: output rows per block (speed only; the result does not depend on it).

    Returns:
      ``(out_h, out_w, C)`` float32 (``out`` when given), same value scale as the input.
    """
    if image.ndim != 3:
        raise ValueError(f"resize_image expects (H, W, C), got shape {image.shape}")
    in_h, in_w, c = image.shape
    if out_h < 1 or out_w < 1 or in_h < 1 or in_w < 1:
        raise ValueError(f"cannot resize {in_h}x{in_w} to {out_h}x{out_w}")
    if out is None:
        out = np.empty((out_h, out_w, c), np.float32)
    elif out.shape != (out_h, out_w, c) or out.dtype != np.float32:
        raise ValueError(f"out must be float32 {(out_h, out_w, c)}, got {out.dtype} {out.shape}")
    if image.dtype != np.uint8 and image.dtype != np.float32:
        image = image.astype(np.float32)

    x0, x1, wx0, wx1 = _linear_taps(in_w, out_w)
    if image.strides[1] < 0:
        # A flipped view: gather from the positive-stride base with mirrored indices (same values,
        # ~2x faster than gathering through the negative stride).
        image = image[:, ::-1]
        x0, x1 = in_w - 1 - x0, in_w - 1 - x1
    y0, y1, wy0, wy1 = _linear_taps(in_h, out_h)

    # Blocks of output rows keep the temporaries in cache (the whole-image version is memory
    # bound and twice as slow). Per block: width pass on the source rows the block reads, then
    # the height pass straight into ``out``.
    chunk = max(1, int(chunk_rows))
    max_rows = min(in_h, 2 * chunk + 2)
    tmp = np.empty((max_rows, out_w, c), image.dtype)
    cols = np.empty((max_rows, out_w, c), np.float32)
    buf = np.empty((max(max_rows, chunk), out_w, c), np.float32)
    # Weights expanded over the channels: contiguous operands keep numpy on its fast inner loops
    # (a (1, out_w, 1) broadcast runs a 3-element inner loop and is ~7x slower).
    wx0 = np.ascontiguousarray(np.broadcast_to(wx0[None, :, None], (1, out_w, c)))
    wx1 = np.ascontiguousarray(np.broadcast_to(wx1[None, :, None], (1, out_w, c)))
    conv = image.dtype != np.float32
    for r0 in range(0, out_h, chunk):
        r1 = min(r0 + chunk, out_h)
        ya, yb = y0[r0:r1], y1[r0:r1]
        lo, hi = int(ya[0]), int(yb[-1])  # both index arrays are non-decreasing
        if hi - lo + 1 <= max_rows:
            src = image[lo : hi + 1]
            ia, ib = ya - lo, yb - lo
        else:  # strong downscale: gather only the rows the block reads
            need = np.unique(np.concatenate([ya, yb]))
            src = image[need]
            ia, ib = np.searchsorted(need, ya), np.searchsorted(need, yb)
        n = src.shape[0]
        # Width pass: cols = wx0 * x[:, x0] + wx1 * x[:, x1]   (n, out_w, C) float32.
        t, cl, bf = tmp[:n], cols[:n], buf[:n]
        np.take(src, x0, axis=1, out=t, mode="clip")
        if conv:
            np.copyto(cl, t, casting="unsafe")
            cl *= wx0
        else:
            np.multiply(t, wx0, out=cl)
        np.take(src, x1, axis=1, out=t, mode="clip")
        if conv:
            np.copyto(bf, t, casting="unsafe")
            bf *= wx1
        else:
            np.multiply(t, wx1, out=bf)
        cl += bf
        # Height pass: out = wy0 * cols[y0] + wy1 * cols[y1].
        o, bf = out[r0:r1], buf[: r1 - r0]
        np.multiply(cl[ia], wy0[r0:r1, None, None], out=o)
        np.multiply(cl[ib], wy1[r0:r1, None, None], out=bf)
        o += bf
    return out


def scale_boxes(boxes: np.ndarray, scales: Sequence[float]) -> np.ndarray:
    """Scale ``(N, 4)`` ``x1, y1, x2, y2`` boxes per axis; ``scales = (sy, sx)``.

    ``sy = out_h / in_h`` and ``sx = out_w / in_w`` are ratios of integer image sizes (torchvision
    0.4 ``resize_boxes``). Returns ``(N, 4)`` float32 (the ratios are applied as float32 scalars).
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    sy, sx = np.float32(scales[0]), np.float32(scales[1])
    return boxes * np.array([sx, sy, sx, sy], np.float32)


def hflip(image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of an ``(H, W, C)`` image and its ``(N, 4)`` boxes.

    Returns ``(image[:, ::-1], boxes')`` with ``x1' = W - x2``, ``x2' = W - x1`` (no -1, as the
    reference). The image is a view (negative stride); boxes are a new float32 array.
    """
    width = image.shape[1]
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return image[:, ::-1], flipped


def _ceil_to(x: int, multiple: int) -> int:
    return int(-(-int(x) // multiple) * multiple)


def default_buckets(
    min_size: int = 900, max_size: int = 1500, multiple: int = 32
) -> list[tuple[int, int]]:
    """Landscape, portrait and square canvases ``(H, W)`` that hold any resized image.

    ``[(ceil(min), ceil(max)), (ceil(max), ceil(min)), (ceil(max), ceil(max))]`` with ``ceil``
    rounding up to ``multiple``; e.g. 900/1500 -> ``[(928, 1504), (1504, 928), (1504, 1504)]``.
    """
    lo, hi = _ceil_to(min_size, multiple), _ceil_to(max_size, multiple)
    return [(lo, hi), (hi, lo), (hi, hi)]


def check_buckets(buckets: Sequence[tuple[int, int]], name: str = "data.buckets"):
    """``buckets`` as a list of int ``(H, W)``; each side a positive multiple of 32 (the
    reference pads every batch to a multiple of 32, so such a bucket holds the reference's
    canvas of every image it holds), else ``ValueError`` naming the bucket."""
    out = []
    for b in buckets:
        if len(b) != 2:
            raise ValueError(f"{name}: each bucket must be (H, W), got {tuple(b)}")
        h, w = int(b[0]), int(b[1])
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ValueError(
                f"{name}: bucket {h}x{w} (H x W) must have both sides positive multiples of 32 "
                f"(the reference pads every batch to a multiple of 32), e.g. "
                f"{_ceil_to(max(h, 1), 32)}x{_ceil_to(max(w, 1), 32)}"
            )
        out.append((h, w))
    if not out:
        raise ValueError(f"{name}: at least one bucket is needed")
    return out


def choose_bucket(
    sizes: Sequence[tuple[int, int]], buckets: Sequence[tuple[int, int]]
) -> tuple[int, int]:
    """The smallest-area bucket ``(H, W)`` holding every ``(h, w)`` in ``sizes``.

    Ties keep the order of ``buckets``. Raises ``ValueError`` naming the offending image size and
    the buckets when no bucket holds all images.
    """
    sizes = [(int(h), int(w)) for h, w in sizes]
    if not sizes:
        raise ValueError("choose_bucket needs at least one image size")
    max_h = max(h for h, _ in sizes)
    max_w = max(w for _, w in sizes)
    best = None
    for bh, bw in buckets:
        if bh >= max_h and bw >= max_w and (best is None or bh * bw < best[0] * best[1]):
            best = (int(bh), int(bw))
    if best is None:
        # Name an image that no bucket holds on its own if there is one, else the combination.
        for h, w in sizes:
            if not any(bh >= h and bw >= w for bh, bw in buckets):
                raise ValueError(
                    f"image of resized size {h}x{w} (h x w) fits none of the buckets "
                    f"{list(buckets)}; add a larger bucket"
                )
        raise ValueError(
            f"images of resized sizes {sizes} (h x w) need a {max_h}x{max_w} canvas, which none "
            f"of the buckets {list(buckets)} holds; add a bucket at least that large"
        )
    return best
