"""RPN anchors exactly as torchvision 0.4 ``AnchorGenerator`` with one feature level (§2.4)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

DEFAULT_SIZES = (32, 64, 128, 256, 512)
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def cell_anchors(
    sizes: Sequence[float] = DEFAULT_SIZES,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
) -> np.ndarray:
    """Base anchors centred on the origin, ``(len(ratios) * len(sizes), 4)`` float32.

    Ratio-major order (index = ratio_idx * len(sizes) + size_idx). For ratio ``r`` (= h / w) and
    size ``s``: ``h = sqrt(r) * s``, ``w = s / sqrt(r)``, box ``round([-w, -h, w, h] / 2)`` with
    round half to even, all in float32 as torchvision computes it.
    """
    scales = np.asarray(sizes, dtype=np.float32)
    ratios = np.asarray(aspect_ratios, dtype=np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    return np.round(base).astype(np.float32)


def grid_anchors(
    feat_h: int,
    feat_w: int,
    stride: float = 16,
    cell: Optional[np.ndarray] = None,
) -> np.ndarray:
    """All anchors of a ``feat_h × feat_w`` map: ``(feat_h * feat_w * A, 4)`` float32.

    Flattening order is (y, x, anchor); the cell anchors are shifted by ``(x * stride,
    y * stride)``, i.e. centred on the top-left corner of each cell (no ``+ stride / 2``).
    ``cell`` defaults to :func:`cell_anchors` with the default sizes and ratios.
    """
    if cell is None:
        cell = cell_anchors()
    cell = np.asarray(cell, dtype=np.float32)
    if cell.ndim != 2 or cell.shape[1] != 4:
        raise ValueError(f"cell anchors must have shape (A, 4), got {cell.shape}")
    shifts_x = np.arange(int(feat_w), dtype=np.float32) * np.float32(stride)
    shifts_y = np.arange(int(feat_h), dtype=np.float32) * np.float32(stride)
    sy, sx = np.meshgrid(shifts_y, shifts_x, indexing="ij")
    sx = sx.reshape(-1)
    sy = sy.reshape(-1)
    shifts = np.stack([sx, sy, sx, sy], axis=1)
    return (shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4)
