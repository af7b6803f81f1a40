"""Shared numpy building blocks of the evaluation: average precision, IoU, ranking.

Everything here is plain numpy (no jax, no scikit-learn); the tests check the average precision
against ``sklearn.metrics.average_precision_score``.
"""

from __future__ import annotations

import numpy as np


def average_precision(y_true, y_score) -> float:
    """Average precision exactly as ``sklearn.metrics.average_precision_score`` (binary case).

    ``AP = sum_t (R_t - R_{t-1}) * P_t`` over the *distinct* score thresholds ``t`` in decreasing
    order (tied scores form one step), with no interpolation. Returns 0.0 when ``y_true`` has no
    positive (scikit-learn warns and also returns 0 there).

    Args:
      y_true: ``(N,)`` bool / {0, 1}.
      y_score: ``(N,)`` float scores, higher = more confident.
    """
    y_true = np.asarray(y_true).astype(bool).ravel()
    y_score = np.asarray(y_score, dtype=np.float64).ravel()
    if y_true.shape != y_score.shape:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} differ in shape")
    num_pos = int(np.count_nonzero(y_true))
    if num_pos == 0:
        return 0.0
    order = np.argsort(-y_score, kind="stable")
    s = y_score[order]
    tps = np.cumsum(y_true[order])
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of every tie group
    tp = tps[last]
    precision = tp / (last + 1.0)
    recall_step = np.diff(np.r_[0, tp]) / num_pos
    return float(np.sum(recall_step * precision))


def average_precision_from_positives(pos_scores, all_scores) -> float:
    """scikit-learn's average precision, computed from the positives' scores without sorting.

    ``pos_scores`` must be the scores of the positive entries of ``all_scores`` (a sub-multiset).
    Only thresholds at a positive's score add recall, so
    ``AP = (1/P) * sum_k tps(s_k) / #{i : all_scores_i >= s_k}`` over the positives ``k``, where
    ``tps(s) = #{positives with score >= s}``; ties are grouped exactly like scikit-learn.
    Cost: ``O(N log P)`` instead of a sort of all ``N`` scores.

    Args:
      pos_scores: ``(P,)`` scores of the positives, ``P >= 1``.
      all_scores: ``(N,)`` scores of all ranked entries (positives included).
    """
    sp = np.sort(np.asarray(pos_scores).ravel())
    p = sp.shape[0]
    if p == 0:
        return 0.0
    # Only entries at or above the lowest positive score matter (usually very few).
    above = all_scores[all_scores >= sp[0]]
    if p == 1:
        return 1.0 / float(above.shape[0])
    # c_i = number of positive scores <= above[i]; above[i] >= sp[k] <=> c_i >= k + 1.
    c = np.searchsorted(sp, above, side="right")
    hist = np.bincount(c, minlength=p + 1)
    n_ge = np.cumsum(hist[::-1])[::-1][1:]
    tps = p - np.searchsorted(sp, sp, side="left")
    return float(np.mean(tps / n_ge.astype(np.float64)))


def at_least(scores: np.ndarray, thresh: float) -> np.ndarray:
    """``scores >= thresh`` compared in the scores' own float dtype, as the reference's numpy did.

    For float32 scores the threshold is rounded to float32 first (so a score stored as
    ``float32(0.01)`` passes ``0.01``), which is what ``float32_array >= 0.01`` does in numpy.
    """
    scores = np.asarray(scores)
    if np.issubdtype(scores.dtype, np.floating):
        return scores >= scores.dtype.type(thresh)
    return scores >= thresh


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of two aligned box arrays, as the reference (no +1; 0 for empty unions).

    Args:
      a, b: ``(..., 4)`` boxes ``x1, y1, x2, y2`` (broadcastable).

    Returns:
      ``(...)`` float64 IoU.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.maximum(0.0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]))
    ih = np.maximum(0.0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]))
    inter = iw * ih
    union = (
        (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
        + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        - inter
    )
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def size_dependent_iou_threshold(gt_boxes: np.ndarray) -> np.ndarray:
    """CUHK-SYSU's search IoU threshold ``min(0.5, w*h / ((w+10)*(h+10)))`` per GT box.

    Args:
      gt_boxes: ``(G, 4)`` ``x1, y1, x2, y2``.

    Returns:
      ``(G,)`` float64 thresholds.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
    w = gt_boxes[:, 2] - gt_boxes[:, 0]
    h = gt_boxes[:, 3] - gt_boxes[:, 1]
    return np.minimum(0.5, (w * h) / ((w + 10.0) * (h + 10.0)))


def top_k_positions(scores: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """Positions of the ``k`` best entries: by score descending, ties by position ascending.

    Linear time: a threshold that the ``k``-th best score is known to reach (the ``k``-th largest
    of the maxima of blocks of ``block`` entries: those ``k`` maxima are ``k`` distinct entries)
    selects a few candidates, which are then sorted.

    Args:
      scores: ``(N,)`` scores.
      k: how many to return (fewer when ``N < k``).
      block: block length of the threshold pass.

    Returns:
      ``(min(k, N),)`` int64 positions, best first.
    """
    n = scores.shape[0]
    if n == 0 or k <= 0:
        return np.zeros((0,), dtype=np.int64)
    if n <= k:
        cand = np.arange(n)
    else:
        nb = n // block
        if nb >= k:
            block_max = scores[: nb * block].reshape(nb, block).max(axis=1)
            thr = np.partition(block_max, nb - k)[nb - k]
        else:
            thr = np.partition(scores, n - k)[n - k]
        cand = np.flatnonzero(scores >= thr)
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]]
