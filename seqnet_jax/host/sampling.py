"""Training targets on the host (numpy only): RPN anchor sampling and RoI sampling (§2.4, §2.8).

Both follow torchvision 0.4: ``Matcher`` + ``BalancedPositiveNegativeSampler`` (a uniformly random
subset of at most ``batch_size * positive_fraction`` positives, negatives fill the rest). Outputs
have a fixed size ``batch_size`` with a ``valid`` mask, so the next jitted call sees static shapes.
Every function takes its own ``np.random.Generator``; :func:`image_rng` derives one per
(seed, step, image, stream) so a resumed run samples exactly like an uninterrupted one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional, Sequence

import numpy as np

from seqnet_jax.ops.box_ops import BoxCoder, box_iou
from seqnet_jax.ops.matcher import BETWEEN_THRESHOLDS, match_boxes

RPN_BOX_CODER = BoxCoder((1.0, 1.0, 1.0, 1.0))
ROI_WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def image_rng(seed: int, step: int, image_index: int, stream: int = 0) -> np.random.Generator:
    """The sampling generator of one image at one step (``stream`` separates sampling stages)."""
    return np.random.default_rng([int(seed), int(stream), int(step), int(image_index)])


def _sample(
    rng: np.random.Generator,
    pos: np.ndarray,
    neg: np.ndarray,
    batch_size: int,
    positive_fraction: float,
):
    """torchvision ``BalancedPositiveNegativeSampler`` on index arrays → (pos, neg) subsets."""
    num_pos = min(pos.size, int(batch_size * positive_fraction))
    num_neg = min(neg.size, batch_size - num_pos)
    pos = rng.choice(pos, size=num_pos, replace=False) if num_pos < pos.size else pos
    neg = rng.choice(neg, size=num_neg, replace=False) if num_neg < neg.size else neg
    return np.sort(pos), np.sort(neg)


def _as_boxes(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) x1,y1,x2,y2, got shape {x.shape}")
    return x


def _as_mask(x, n: int, name: str) -> np.ndarray:
    if x is None:
        return np.ones(n, bool)
    x = np.asarray(x, dtype=bool)
    if x.shape != (n,):
        raise ValueError(f"{name} must be ({n},), got shape {x.shape}")
    return x


def _unique_pairs(lo: np.ndarray, hi: np.ndarray):
    """Distinct float32 (lo, hi) pairs ``(U, 2)`` and the inverse index, via one int64 key."""
    pairs = np.ascontiguousarray(np.stack([lo, hi], 1), dtype=np.float32)
    keys, inv = np.unique(pairs.view(np.int64).reshape(-1), return_inverse=True)
    return keys.view(np.float32).reshape(-1, 2), inv.reshape(-1)


class _AnchorTable:
    """Anchors factored into distinct x intervals × distinct y intervals (a grid has a few
    hundred of each): ``table[ix, iy]`` is the anchor with those intervals, or -1."""

    def __init__(self, anchors: np.ndarray):
        self.anchors = anchors.copy()
        self.ux, inv_x = _unique_pairs(anchors[:, 0], anchors[:, 2])
        self.uy, inv_y = _unique_pairs(anchors[:, 1], anchors[:, 3])
        self.ok = self.ux.shape[0] * self.uy.shape[0] <= 4_000_000
        if self.ok:
            self.table = np.full((self.ux.shape[0], self.uy.shape[0]), -1, np.int64)
            self.table[inv_x, inv_y] = np.arange(anchors.shape[0])
            self.ok = int((self.table >= 0).sum()) == anchors.shape[0]  # no duplicate anchors
        self.uw = self.ux[:, 1] - self.ux[:, 0]  # float32, as box_iou computes them
        self.uh = self.uy[:, 1] - self.uy[:, 0]


_tables: list = []
_tables_lock = threading.Lock()


def _anchor_table(anchors: np.ndarray) -> _AnchorTable:
    """Cached per anchor set (compared by value, so any equal array hits the cache)."""
    with _tables_lock:
        for t in _tables:
            if t.anchors.shape == anchors.shape and np.array_equal(t.anchors, anchors):
                return t
        t = _AnchorTable(anchors)
        _tables.insert(0, t)
        del _tables[4:]
        return t


def _overlap(lo, hi, ulo, uhi):
    """Intersection length of ``[lo, hi]`` with each ``[ulo, uhi]`` (as box_iou computes it)."""
    return np.maximum(np.minimum(hi, uhi) - np.maximum(lo, ulo), 0)


def match_anchors(
    anchors: np.ndarray, gt_boxes: np.ndarray, high: float = 0.7, low: float = 0.3
) -> np.ndarray:
    """RPN ``Matcher(high, low, allow_low_quality_matches=True)`` of ``anchors (A, 4)`` against
    the valid ``gt_boxes (G, 4)`` → ``(A,)`` int32 GT index / -1 / -2, as from the full matrix.

    Without the full ``(G, A)`` IoU matrix: IoU <= IoU of the x intervals and of the y
    intervals, so per GT only the distinct anchor x and y intervals reaching ``low`` are
    combined, and the exact IoU (same float32 operations as :func:`box_iou`) is evaluated on
    those combinations only. Pairs below ``low`` never decide a match value or argmax; the
    exceptions are the best anchors of a GT whose best IoU is below ``low``: that GT gets its
    full row and those anchors their full columns. Falls back to the full matrix when this
    does not apply (a GT overlapping no anchor, ``low <= 0``, anchors without grid structure).
    """
    a = anchors.shape[0]
    g = gt_boxes.shape[0]
    if g == 0 or a == 0:
        return np.full(a, -1, np.int32)

    def full():
        return match_boxes(box_iou(gt_boxes, anchors), None, high, low, allow_low_quality=True)

    if low <= 0:
        return full()
    tab = _anchor_table(anchors)
    if not tab.ok:
        return full()
    gx1, gy1, gx2, gy2 = (gt_boxes[:, k : k + 1] for k in range(4))
    g_area = (gx2 - gx1) * (gy2 - gy1)
    ox = _overlap(gx1, gx2, tab.ux[:, 0], tab.ux[:, 1])  # (G, Ux)
    oy = _overlap(gy1, gy2, tab.uy[:, 0], tab.uy[:, 1])  # (G, Uy)
    t = low * (1 - 1e-5)  # 1-D necessary condition, with margin for rounding
    with np.errstate(invalid="ignore", divide="ignore"):
        ok_x = ox / ((gx2 - gx1) + tab.uw - ox) >= t
        ok_y = oy / ((gy2 - gy1) + tab.uh - oy) >= t

    def block(k, px, py):
        """Anchor ids and exact IoUs of GT ``k`` with the interval combinations px × py."""
        ids = tab.table[np.ix_(px, py)]
        inter = ox[k, px][:, None] * oy[k, py][None, :]
        union = g_area[k] + tab.uw[px][:, None] * tab.uh[py][None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return ids, inter / union

    rows, cols, vals = [], [], []
    for k in range(g):
        ids, iou = block(k, np.flatnonzero(ok_x[k]), np.flatnonzero(ok_y[k]))
        sel = (ids >= 0) & (iou >= low)
        cols.append(ids[sel])
        vals.append(iou[sel])
        rows.append(np.full(cols[-1].size, k))
    rows, cols, vals = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    cand, pos = np.unique(cols, return_inverse=True)
    m = np.full((g, cand.size), -1.0, np.float32)  # -1: IoU below `low`, value unneeded
    m[rows, pos] = vals
    matched = np.full(a, -1, np.int32)
    if cand.size:
        v = m.max(axis=0)
        arg = m.argmax(axis=0).astype(np.int32)
        mc = np.where(v < high, BETWEEN_THRESHOLDS, arg)  # every known value is >= low
        best = m.max(axis=1)
        is_best = (m == best[:, None]) & (best[:, None] >= low)
        mc = np.where(is_best.any(axis=0), arg, mc)
        matched[cand] = mc
    small = np.flatnonzero(~((m >= low).any(axis=1))) if cand.size else np.arange(g)
    for k in small:  # best IoU < low: its best anchors need their argmax over all GTs
        ids, iou = block(k, np.flatnonzero(ox[k] > 0), np.flatnonzero(oy[k] > 0))
        ids, iou = ids[ids >= 0], iou[ids >= 0]  # all anchors with IoU > 0 with GT k
        if not (iou.size and iou.max() > 0):
            return full()
        winners = ids[iou == iou.max()]
        matched[winners] = box_iou(gt_boxes, anchors[winners]).argmax(axis=0)
    return matched


def sample_rpn_targets(
    anchors: np.ndarray,
    gt_boxes: np.ndarray,
    gt_valid: Optional[np.ndarray],
    rng: np.random.Generator,
    batch_size: int = 256,
    positive_fraction: float = 0.5,
    high: float = 0.7,
    low: float = 0.3,
) -> Dict[str, np.ndarray]:
    """Sample the RPN training anchors of one image.

    Args:
      anchors: ``(A, 4)`` all anchors, (y, x, anchor) order.
      gt_boxes: ``(G, 4)`` padded GT boxes; gt_valid: ``(G,)`` bool (``None``: all valid).
      rng: this image's generator.
      batch_size, positive_fraction: sampler (256 anchors, at most half positive).
      high, low: matcher thresholds (IoU >= 0.7 positive, < 0.3 negative, low-quality matches on).

    Returns:
      dict of ``indices (S,)`` int32 anchor indices (positives then negatives, each ascending),
      ``labels (S,)`` float32 1/0, ``targets (S, 4)`` float32 ``BoxCoder((1,1,1,1))`` deltas from
      the anchor to its GT (0 for negatives), ``valid (S,)`` bool; ``S = batch_size``, padded rows
      have index 0 and ``valid=False``. Without valid GT every sampled anchor is a negative.
    """
    anchors = _as_boxes(anchors, "anchors")
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
    gt_valid = _as_mask(gt_valid, gt_boxes.shape[0], "gt_valid")
    gts = gt_boxes[gt_valid]
    matched = match_anchors(anchors, gts, high, low)
    pos, neg = _sample(
        rng,
        np.flatnonzero(matched >= 0),
        np.flatnonzero(matched == -1),
        batch_size,
        positive_fraction,
    )
    n_pos, n = pos.size, pos.size + neg.size
    indices = np.zeros(batch_size, np.int32)
    labels = np.zeros(batch_size, np.float32)
    targets = np.zeros((batch_size, 4), np.float32)
    valid = np.zeros(batch_size, bool)
    indices[:n_pos] = pos
    indices[n_pos:n] = neg
    labels[:n_pos] = 1.0
    valid[:n] = True
    if n_pos:
        targets[:n_pos] = RPN_BOX_CODER.encode(gts[matched[pos]], anchors[pos])
    return {"indices": indices, "labels": labels, "targets": targets, "valid": valid}


def sample_roi_targets(
    proposals: np.ndarray,
    proposals_valid: Optional[np.ndarray],
    gt_boxes: np.ndarray,
    gt_pids: np.ndarray,
    gt_valid: Optional[np.ndarray],
    rng: np.random.Generator,
    batch_size: int = 128,
    positive_fraction: float = 0.5,
    fg_iou: float = 0.5,
    bg_iou: float = 0.5,
    weights: Sequence[float] = ROI_WEIGHTS,
) -> Dict[str, np.ndarray]:
    """torchvision 0.4 ``RoIHeads.select_training_samples`` of one image, with pids as labels.

    The valid GT boxes are appended to the valid proposals; ``Matcher(fg_iou, bg_iou)`` without
    low-quality matches assigns each candidate the pid of its GT (IoU >= fg_iou) or 0 (below
    bg_iou); candidates in between (only when ``bg_iou < fg_iou``) are never sampled. Positives
    are candidates with a non-zero label — labeled (>= 1) and unlabeled (-1) people alike; at most
    ``batch_size * positive_fraction`` of them are drawn at random, negatives fill the rest.

    Args:
      proposals: ``(P, 4)``; proposals_valid: ``(P,)`` bool (``None``: all valid).
      gt_boxes: ``(G, 4)``; gt_pids: ``(G,)`` int; gt_valid: ``(G,)`` bool (``None``: all valid).
      rng: this image's generator.
      batch_size, positive_fraction, fg_iou, bg_iou: as torchvision (128, 0.5, 0.5, 0.5).
      weights: box coder weights of the regression targets.

    Returns:
      dict of ``boxes (S, 4)`` float32 sampled candidates in ascending index order of
      (valid proposals ++ valid GT) (the reference's ``nonzero(pos | neg)``), ``pids (S,)`` int32
      labels, ``targets (S, 4)`` float32 deltas from the box to its matched GT (negatives are
      encoded against GT 0 like torchvision; 0 without GT), ``gt_index (S,)`` int32 index of the
      matched GT in ``gt_boxes`` (-1 for background) and ``valid (S,)`` bool; ``S = batch_size``,
      padded rows are zeros with pid 0, ``gt_index`` -1 and ``valid=False``.
    """
    proposals = _as_boxes(proposals, "proposals")
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
    gt_pids = np.asarray(gt_pids)
    if gt_pids.shape != (gt_boxes.shape[0],):
        raise ValueError(f"gt_pids must be ({gt_boxes.shape[0]},), got shape {gt_pids.shape}")
    proposals_valid = _as_mask(proposals_valid, proposals.shape[0], "proposals_valid")
    gt_valid = _as_mask(gt_valid, gt_boxes.shape[0], "gt_valid")
    gt_rows = np.flatnonzero(gt_valid)
    gts = gt_boxes[gt_rows]
    cand = np.concatenate([proposals[proposals_valid], gts], axis=0)
    if gts.shape[0]:
        matched = match_boxes(box_iou(gts, cand), None, fg_iou, bg_iou, allow_low_quality=False)
        labels = np.where(matched >= 0, gt_pids[gt_rows][np.maximum(matched, 0)], 0)
    else:
        matched = np.full(cand.shape[0], -1, np.int32)
        labels = np.zeros(cand.shape[0], np.int32)
    labels = labels.astype(np.int32)
    usable = matched != BETWEEN_THRESHOLDS
    pos, neg = _sample(
        rng,
        np.flatnonzero(usable & (labels != 0)),
        np.flatnonzero(usable & (labels == 0)),
        batch_size,
        positive_fraction,
    )
    sel = np.sort(np.concatenate([pos, neg]))
    n = sel.size
    boxes = np.zeros((batch_size, 4), np.float32)
    pids = np.zeros(batch_size, np.int32)
    targets = np.zeros((batch_size, 4), np.float32)
    gt_index = np.full(batch_size, -1, np.int32)
    valid = np.zeros(batch_size, bool)
    boxes[:n] = cand[sel]
    pids[:n] = labels[sel]
    valid[:n] = True
    m = matched[sel]
    if gts.shape[0] and n:
        gt_index[:n] = np.where(m >= 0, gt_rows[np.maximum(m, 0)], -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            targets[:n] = BoxCoder(weights).encode(gts[np.maximum(m, 0)], cand[sel])
    return {"boxes": boxes, "pids": pids, "targets": targets, "gt_index": gt_index, "valid": valid}


# ---------------------------------------------------------------------------------- batched
def _map(fn, n: int, num_threads: Optional[int]):
    if num_threads and num_threads > 1 and n > 1:
        with ThreadPoolExecutor(max_workers=num_threads) as ex:
            return list(ex.map(fn, range(n)))
    return [fn(i) for i in range(n)]


def _stack(dicts) -> Dict[str, np.ndarray]:
    return {k: np.stack([d[k] for d in dicts]) for k in dicts[0]}


def sample_rpn_targets_batched(
    anchors: np.ndarray,
    gt_boxes: np.ndarray,
    gt_valid: Optional[np.ndarray],
    seed: int,
    step: int,
    stream: int = 0,
    num_threads: Optional[int] = None,
    **kwargs,
) -> Dict[str, np.ndarray]:
    """:func:`sample_rpn_targets` per image of ``gt_boxes (B, G, 4)`` / ``gt_valid (B, G)`` with
    ``image_rng(seed, step, b, stream)``; every output gets a leading ``B`` axis."""
    gt_boxes = np.asarray(gt_boxes)
    b = gt_boxes.shape[0]
    gv = np.ones(gt_boxes.shape[:2], bool) if gt_valid is None else np.asarray(gt_valid)

    def one(i):
        return sample_rpn_targets(
            anchors, gt_boxes[i], gv[i], image_rng(seed, step, i, stream), **kwargs
        )

    return _stack(_map(one, b, num_threads))


def sample_roi_targets_batched(
    proposals: np.ndarray,
    proposals_valid: Optional[np.ndarray],
    gt_boxes: np.ndarray,
    gt_pids: np.ndarray,
    gt_valid: Optional[np.ndarray],
    seed: int,
    step: int,
    stream: int = 0,
    num_threads: Optional[int] = None,
    **kwargs,
) -> Dict[str, np.ndarray]:
    """:func:`sample_roi_targets` per image of ``proposals (B, P, 4)``, ``gt_boxes (B, G, 4)``, …
    with ``image_rng(seed, step, b, stream)`` (use a different ``stream`` for each of the two
    sampling stages); every output gets a leading ``B`` axis."""
    proposals = np.asarray(proposals)
    gt_boxes = np.asarray(gt_boxes)
    b = proposals.shape[0]
    pv = np.ones(proposals.shape[:2], bool) if proposals_valid is None else proposals_valid
    gv = np.ones(gt_boxes.shape[:2], bool) if gt_valid is None else gt_valid

    def one(i):
        return sample_roi_targets(
            proposals[i],
            pv[i],
            gt_boxes[i],
            gt_pids[i],
            gv[i],
            image_rng(seed, step, i, stream),
            **kwargs,
        )

    return _stack(_map(one, b, num_threads))
