"""Exact torchvision NMS on the host, in numpy, about 10x faster than the plain greedy loop.

Semantics (torchvision ``nms``, CPU kernel): boxes are visited by descending score (ties: lower
index first, i.e. ``np.argsort(-scores, kind="stable")``); a visited box that is not suppressed is
kept and suppresses every later box ``j`` with ``IoU > iou_threshold``, where
``IoU = inter / (area_i + area_j - inter)`` is computed in the boxes' dtype (no +1) and compared
in float64 (the C++ kernel compares a float against a double). ``max_output`` stops after that
many keeps, which returns exactly the first ``max_output`` keeps of the full run.

:func:`nms_reference` is that loop, written plainly. :func:`nms` returns identical results:

* The visiting order is one sort of packed int64 keys (score bits, index), restricted to a prefix
  of the ranking when ``max_output`` is small (extended on demand).
* Boxes are visited in blocks of 128 not-yet-suppressed boxes. Inside a block the greedy decision
  uses the dense block IoU matrix; the block's kept boxes then suppress later boxes eagerly.
* The later boxes a kept box may suppress come from a spatial index instead of a scan of
  everything. ``IoU > t`` implies, with ``c = (1 - t) / t``: ``|Δcx| < c·min(w)/2``,
  ``|Δcy| < c·min(h)/2`` and width and height ratios below ``1/t`` (IoU is at most the IoU of the
  x intervals and of the y intervals). The index sorts boxes by (height class of ratio ``1/t``,
  band of ``cy`` scaled to the class, ``cx``); a query is 6 contiguous key ranges (3 height
  classes × 2 bands, each a ``cx`` window), then cheap ``|Δcy|`` and log width/height ratio
  filters, then the exact IoU on the surviving pairs. Every bound carries a relative and an
  absolute safety margin, so rounding cannot drop a pair.
* Degenerate boxes (width or height <= 0) have IoU 0 or NaN with everything, so they never
  suppress nor get suppressed and are never indexed. Non-finite boxes and thresholds outside
  (0, 1) use the reference loop.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Optional, Tuple

import numpy as np

__all__ = ["nms", "nms_reference", "batched_nms_padded", "process_pool"]

_BLOCK = 128  # boxes per greedy block
_DEAD = np.inf  # cy of a dead index entry: fails every |Δcy| < ry test
_nz = np.flatnonzero


def _clip(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """In-place clip of an int array (``numpy.clip`` has a large per-call overhead)."""
    np.maximum(x, lo, out=x)
    np.minimum(x, hi, out=x)
    return x


# ----------------------------------------------------------------------------------- helpers
def _prepare(boxes, scores) -> Tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"nms: boxes must be (N, 4) x1,y1,x2,y2, got shape {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"nms: scores must be ({boxes.shape[0]},), got shape {scores.shape}")
    if boxes.dtype not in (np.float32, np.float64):
        boxes = boxes.astype(np.float32)
    return boxes, scores


def _limit(n: int, max_output: Optional[int]) -> int:
    return n if max_output is None else max(0, min(n, int(max_output)))


def nms_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    max_output: Optional[int] = None,
) -> np.ndarray:
    """Plain greedy NMS loop (the definition :func:`nms` must reproduce exactly).

    ``boxes (N, 4)``, ``scores (N,)`` → kept indices ``(K,)`` int64 by descending score.
    """
    boxes, scores = _prepare(boxes, scores)
    limit = _limit(boxes.shape[0], max_output)
    thr = np.float64(iou_threshold)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    keep = []
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            ovr = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(ovr > thr)]
    return np.asarray(keep, dtype=np.int64)


def _packed_score_keys(scores: np.ndarray) -> Optional[Tuple[np.ndarray, int]]:
    """int64 keys whose ascending order is ``argsort(-scores, kind="stable")``, or None.

    Key = (descending-monotone image of the float32 score bits) << b | index.
    """
    n = scores.shape[0]
    if scores.dtype != np.float32 or n >= (1 << 31) or np.isnan(scores).any():
        return None
    s = scores + np.float32(0.0)  # -0.0 -> 0.0: they tie in the reference sort
    u = s.view(np.int32).astype(np.int64)
    mono = np.where(u < 0, ~u & 0x7FFFFFFF, u | 0x80000000)  # ascending with the score
    bits = max(1, (n - 1).bit_length())
    return ((0xFFFFFFFF - mono) << bits) | np.arange(n, dtype=np.int64), bits


class _Ranking:
    """Ranks (positions in the reference visiting order) → original indices, in prefixes."""

    def __init__(self, scores: np.ndarray):
        self.n = scores.shape[0]
        packed = _packed_score_keys(scores)
        if packed is None:
            self.keys, self.bits = None, 0
            self.full = np.argsort(-scores, kind="stable")
        else:
            self.keys, self.bits = packed
            self.full = None

    def ranks(self, start: int, stop: int) -> np.ndarray:
        """Original indices of ranks ``[start, stop)``."""
        if self.full is not None:
            return self.full[start:stop]
        if start == 0 and stop >= self.n:
            self.full = np.sort(self.keys) & ((1 << self.bits) - 1)
            return self.full[start:stop]
        keys = self.keys
        lo_hi = np.partition(keys, [start, stop - 1])
        sel = keys[(keys >= lo_hi[start]) & (keys <= lo_hi[stop - 1])]
        sel.sort()
        return sel & ((1 << self.bits) - 1)


def _block_keep(bx: np.ndarray, thr: np.float64) -> np.ndarray:
    """Greedy keep mask of ``bx (m, 4)`` (rows in visiting order) from the dense block IoU."""
    m = bx.shape[0]
    x1, y1, x2, y2 = (np.ascontiguousarray(bx[:, k]) for k in range(4))
    area = (x2 - x1) * (y2 - y1)
    w = np.minimum.outer(x2, x2)
    w -= np.maximum.outer(x1, x1)
    np.maximum(w, 0, out=w)
    h = np.minimum.outer(y2, y2)
    h -= np.maximum.outer(y1, y1)
    np.maximum(h, 0, out=h)
    w *= h
    union = np.add.outer(area, area)
    union -= w
    with np.errstate(invalid="ignore", divide="ignore"):
        w /= union
    flat = np.flatnonzero(w > thr)  # row-major: sources ascending (much faster than nonzero)
    ii, jj = np.divmod(flat, m)
    upper = jj > ii
    if not upper.any():
        return np.ones(m, dtype=bool)
    keep = [True] * m
    for i, j in zip(ii[upper].tolist(), jj[upper].tolist(), strict=True):
        if keep[i]:
            keep[j] = False
    return np.array(keep, dtype=bool)


# ------------------------------------------------------------------------------ fast path
class _FastNMS:
    """State of one exact blocked NMS run (see the module docstring)."""

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, thr: float, limit: int):
        self.boxes = boxes
        self.n = n = boxes.shape[0]
        self.thr = np.float64(thr)
        self.limit = limit
        self.ranking = _Ranking(scores)

        # Grid parameters from all boxes (valid for every later prefix).
        x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
        w = x2 - x1
        h = y2 - y1
        good = (w > 0) & (h > 0)
        self.any_good = bool(good.any())
        if not self.any_good:
            return
        t_lo = thr * (1.0 - 1e-5)
        self.c = (1.0 - t_lo) / t_lo * 1.01 + 1e-6
        self.lq = math.log(1.0 / t_lo) + 0.05  # class width (log units), > log(1/t)
        self.lr = math.log(1.0 / t_lo) + 1e-3  # bound on |log w ratio|, |log h ratio|
        maxabs = float(np.abs(boxes).max())
        self.eps = 1e-3 + 1e-6 * maxabs
        gw, gh = w[good], h[good]
        self.w0 = float(gw.min())
        self.h0 = float(gh.min())
        cxg = (x1[good].astype(np.float64) + x2[good]) * 0.5
        cyg = (y1[good].astype(np.float64) + y2[good]) * 0.5
        self.cx0 = float(cxg.min())
        self.cy0 = float(cyg.min())
        cx_range = float(cxg.max()) - self.cx0
        cy_range = float(cyg.max()) - self.cy0
        self.nhc = int(math.floor(math.log(float(gh.max()) / self.h0) / self.lq)) + 1  # 1..nhc
        k = np.arange(self.nhc + 2, dtype=np.float64)
        hup = self.h0 * np.exp(k * self.lq) * 1.001  # class k holds h < hup[k]
        self.hb = self.c * hup[np.minimum(k.astype(np.int64) + 1, self.nhc + 1)] + 2 * self.eps
        self.nband = int(cy_range / float(self.hb[1:].min())) + 2
        self.xs = min(16.0, float(1 << 22) / (cx_range + 1.0))  # cx quantisation (1/16 px)
        self.xmax = int(cx_range * self.xs) + 1
        self.xb = self.xmax.bit_length()
        ncell = (self.nhc + 2) * self.nband
        self.slot_bits = max(1, (n - 1).bit_length())
        self.slot_mask = (1 << self.slot_bits) - 1
        self.packed_sort = ncell.bit_length() + self.xb + self.slot_bits <= 62

        # Rank-indexed state, filled chunk by chunk.
        self.orig = np.empty(n, np.int64)
        self.rbox = np.empty((n, 4), boxes.dtype)
        self.rcol = [np.empty(n, boxes.dtype) for _ in range(4)]  # x1, y1, x2, y2 columns
        self.rarea = np.empty(n, boxes.dtype)
        self.rgood = np.empty(n, bool)
        self.rcx = np.empty(n, np.float64)
        self.rcy = np.empty(n, np.float64)
        self.rhc = np.empty(n, np.int64)
        self.rlw = np.empty(n, np.float64)  # log w
        self.rlh = np.empty(n, np.float64)  # log h
        self.rrx = np.empty(n, np.float64)
        self.rry = np.empty(n, np.float64)
        self.rkey = np.empty(n, np.int64)
        self.alive = np.ones(n, bool)
        self.slot = np.full(n, -1, np.int64)

    # -- per-rank quantities ----------------------------------------------------------------
    def _fill(self, r0: int, r1: int) -> None:
        oi = self.ranking.ranks(r0, r1)
        self.orig[r0:r1] = oi
        bx = self.boxes.take(oi, axis=0)
        self.rbox[r0:r1] = bx
        for k in range(4):
            self.rcol[k][r0:r1] = bx[:, k]
        x1, y1, x2, y2 = bx[:, 0], bx[:, 1], bx[:, 2], bx[:, 3]
        w = x2 - x1
        h = y2 - y1
        self.rarea[r0:r1] = w * h
        good = (w > 0) & (h > 0)
        self.rgood[r0:r1] = good
        if not self.any_good:
            return
        cx = (x1.astype(np.float64) + x2) * 0.5 - self.cx0
        cy = (y1.astype(np.float64) + y2) * 0.5 - self.cy0
        self.rcx[r0:r1] = cx
        self.rcy[r0:r1] = cy
        hg = np.maximum(np.where(good, h, self.h0), self.h0).astype(np.float64)
        wg = np.maximum(np.where(good, w, self.w0), self.w0).astype(np.float64)
        hc = _clip(np.floor(np.log(hg / self.h0) / self.lq).astype(np.int64) + 1, 1, self.nhc)
        self.rhc[r0:r1] = hc
        self.rlw[r0:r1] = np.log(wg)
        self.rlh[r0:r1] = np.log(hg)
        self.rrx[r0:r1] = (self.c * 0.5) * w + self.eps
        self.rry[r0:r1] = (self.c * 0.5) * h + self.eps
        band = _clip(np.floor(cy / self.hb.take(hc)).astype(np.int64), 0, self.nband - 1)
        xq = _clip(np.floor(cx * self.xs).astype(np.int64), 0, self.xmax)
        self.rkey[r0:r1] = ((hc * self.nband + band) << self.xb) | xq

    def _sorted_index(self, ranks: np.ndarray) -> "_Index":
        """Index over the ascending good ``ranks``, sorted by spatial key."""
        keys = self.rkey.take(ranks)
        if self.packed_sort:
            r0 = int(ranks[0]) if ranks.size else 0
            packed = (keys << self.slot_bits) | (ranks - r0)
            packed.sort()
            return _Index(self, packed >> self.slot_bits, (packed & self.slot_mask) + r0)
        o = np.argsort(keys, kind="stable")
        return _Index(self, keys.take(o), ranks.take(o))

    # -- suppression query ------------------------------------------------------------------
    def _suppressed(self, index: "_Index", q: np.ndarray) -> np.ndarray:
        """Slots of the alive ``index`` entries with ``IoU > thr`` against a good rank in ``q``."""
        none = np.empty(0, np.int64)
        if q.size == 0 or index.skey.size == 0:
            return none
        # Six key ranges per query: height classes hc-1..hc+1 × the (at most) two cy bands
        # touched by [cy - ry, cy + ry], each restricted to [cx - rx, cx + rx].
        cls = self.rhc.take(q) + np.array([[-1], [0], [1]])  # (3, k)
        cls_ok = (cls >= 1) & (cls <= self.nhc)
        hb = self.hb.take(cls)  # cls in [0, nhc + 1]
        cy = self.rcy.take(q)
        ry = self.rry.take(q)
        b0 = _clip(np.floor((cy - ry) / hb).astype(np.int64), 0, self.nband - 1)
        b1 = _clip(np.floor((cy + ry) / hb).astype(np.int64), 0, self.nband - 1)
        base = cls * self.nband
        cells = np.concatenate([base + b0, base + b1]) << self.xb  # (6, k)
        cx = self.rcx.take(q)
        rx = self.rrx.take(q)
        xlo = _clip(np.floor((cx - rx) * self.xs).astype(np.int64), 0, self.xmax)
        xhi = _clip(np.floor((cx + rx) * self.xs).astype(np.int64), 0, self.xmax)
        lo = np.searchsorted(index.skey, (cells | xlo).ravel(), "left")
        hi = np.searchsorted(index.skey, (cells | xhi).ravel(), "right")
        cnt = hi - lo
        cnt[np.concatenate([~cls_ok, ~cls_ok | (b1 == b0)]).ravel()] = 0
        cs = np.cumsum(cnt)
        tot = int(cs[-1])
        if tot == 0:
            return none
        ent = np.arange(tot, dtype=np.int64) + np.repeat(lo - (cs - cnt), cnt)
        rq = np.repeat(np.tile(q, 6), cnt)
        # Cheap necessary conditions: |Δcy| < ry (dead entries have cy = inf), then
        # |log w ratio| and |log h ratio| < log(1 / t).
        d = index.cy.take(ent)
        d -= self.rcy.take(rq)
        np.abs(d, out=d)
        sel = _nz(d < self.rry.take(rq))
        ent = ent.take(sel)
        rq = rq.take(sel)
        d = index.lw.take(ent)
        d -= self.rlw.take(rq)
        np.abs(d, out=d)
        ok = d < self.lr
        d = index.lh.take(ent)
        d -= self.rlh.take(rq)
        np.abs(d, out=d)
        ok &= d < self.lr
        sel = _nz(ok)
        if sel.size == 0:
            return none
        ent = ent.take(sel)
        rq = rq.take(sel)
        # Exact IoU, same formula and dtype as the reference loop.
        ic, rc = index.col, self.rcol
        w = np.minimum(ic[2].take(ent), rc[2].take(rq))
        w -= np.maximum(ic[0].take(ent), rc[0].take(rq))
        np.maximum(w, 0, out=w)
        h = np.minimum(ic[3].take(ent), rc[3].take(rq))
        h -= np.maximum(ic[1].take(ent), rc[1].take(rq))
        np.maximum(h, 0, out=h)
        inter = w * h
        union = self.rarea.take(rq) + index.area.take(ent)
        union -= inter
        inter /= union
        return ent.take(_nz(inter > self.thr))

    # -- main loop --------------------------------------------------------------------------
    def _next_prefix(self, p: int, nk: int) -> int:
        n, limit = self.n, self.limit
        if p == 0:
            guess = 4 * limit + 1024
            return n if 4 * guess >= 3 * n else guess
        rate = max(nk / p, 0.02)
        return min(n, p + max(1024, int(math.ceil((limit - nk) / rate * 1.25))))

    def _suppress(self, index: "_Index", q: np.ndarray) -> None:
        slots = self._suppressed(index, q)
        if slots.size:
            index.kill(slots)
            self.alive[index.rank.take(slots)] = False

    def run(self) -> np.ndarray:
        n, limit = self.n, self.limit
        if not self.any_good:  # nothing can suppress anything
            return self.ranking.ranks(0, limit).astype(np.int64)
        kept = []
        nk = 0
        p = 0  # next rank to visit
        end = 0  # ranks [0, end) are filled in
        index = None
        while nk < limit:
            if p >= end:
                if end >= n:
                    break
                new_end = self._next_prefix(end, nk)
                self._fill(end, new_end)
                # Ranks < end are all visited, so the old index is dead: index the new chunk and
                # let every earlier keep suppress in it.
                index = self._sorted_index(_nz(self.rgood[end:new_end]) + end)
                if kept:
                    ks = np.concatenate(kept)
                    self._suppress(index, ks.take(_nz(self.rgood.take(ks))))
                end = new_end
                continue
            stop = min(p + 4 * _BLOCK, end)
            idx = _nz(self.alive[p:stop])[:_BLOCK]
            if idx.size == 0:
                p = stop
                continue
            idx += p
            p = int(idx[-1]) + 1
            kidx = idx.take(_nz(_block_keep(self.rbox.take(idx, axis=0), self.thr)))
            if nk + kidx.size >= limit:
                kept.append(kidx[: limit - nk])
                nk = limit
                break
            kept.append(kidx)
            nk += kidx.size
            self.alive[idx] = False
            index.kill(self.slot.take(idx.take(_nz(self.rgood.take(idx)))))
            self._suppress(index, kidx.take(_nz(self.rgood.take(kidx))))
            if index.ndead > 0.25 * index.skey.size:
                index = index.compacted(self)
        if not kept:
            return np.empty(0, np.int64)
        return self.orig.take(np.concatenate(kept))


class _Index:
    """Alive boxes sorted by spatial key, with per-entry copies of what the query gathers."""

    __slots__ = ("skey", "rank", "col", "area", "lw", "lh", "cy", "ndead")

    def __init__(self, st: _FastNMS, skey: np.ndarray, rank: np.ndarray):
        self.skey = skey
        self.rank = rank
        self.col = [c.take(rank) for c in st.rcol]
        self.area = st.rarea.take(rank)
        self.lw = st.rlw.take(rank)
        self.lh = st.rlh.take(rank)
        self.cy = st.rcy.take(rank)
        self.ndead = 0
        st.slot[rank] = np.arange(rank.size)

    def kill(self, slots: np.ndarray) -> None:
        self.cy[slots] = _DEAD
        self.ndead += slots.size

    def compacted(self, st: _FastNMS) -> "_Index":
        live = _nz(self.cy != _DEAD)
        return _Index(st, self.skey.take(live), self.rank.take(live))


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    max_output: Optional[int] = None,
) -> np.ndarray:
    """Exact torchvision NMS (see module docstring), fast.

    Args:
      boxes: ``(N, 4)`` x1, y1, x2, y2 (float32 or float64; other dtypes become float32).
      scores: ``(N,)``.
      iou_threshold: suppress ``j`` when ``IoU(i, j) > iou_threshold``.
      max_output: stop after this many keeps (``None``: no limit).

    Returns:
      ``(K,)`` int64 kept indices into ``boxes``, by descending score; identical to
      :func:`nms_reference`.
    """
    boxes, scores = _prepare(boxes, scores)
    n = boxes.shape[0]
    limit = _limit(n, max_output)
    if n == 0 or limit == 0:
        return np.empty(0, np.int64)
    thr = float(iou_threshold)
    if not (0.0 < thr < 1.0) or not np.isfinite(boxes).all():
        return nms_reference(boxes, scores, iou_threshold, max_output)
    if n <= _BLOCK:
        ranking = _Ranking(scores)
        order = ranking.ranks(0, n)
        kmask = _block_keep(boxes.take(order, axis=0), np.float64(thr))
        return order.take(_nz(kmask)[:limit]).astype(np.int64)
    return _FastNMS(boxes, scores, thr, limit).run()


# ---------------------------------------------------------------------------------- batched
_pool_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None


def _default_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1))
        return _pool


def _nms_job(args) -> np.ndarray:
    """One image's :func:`nms` in a worker process (module level, so it pickles)."""
    return nms(*args)


def process_pool(num_workers: int) -> ProcessPoolExecutor:
    """Worker processes for ``batched_nms_padded(..., executor=pool)``.

    The fast NMS is a long series of small numpy calls that hold the GIL, so threads barely run
    images in parallel; processes do. The workers are started with ``spawn`` (never ``fork``: the
    parent runs JAX's threads), import only numpy and this module, and are started here so the
    first batch does not pay for it. Shut the pool down with ``pool.shutdown()``.
    """
    if num_workers < 1:
        raise ValueError(f"process_pool: num_workers must be >= 1, got {num_workers}")
    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"))
    warm = (np.zeros((1, 4), np.float32), np.zeros(1, np.float32), 0.5, 1)
    # Each submit to a pool without an idle worker spawns one, so all workers start here. Hide
    # the parent's main script from them meanwhile: ``spawn`` would re-run it in every worker
    # (slow, and impossible for stdin or notebook mains); they need nothing from it.
    main = sys.modules.get("__main__")
    main_file = main.__dict__.pop("__file__", None) if main is not None else None
    try:
        list(pool.map(_nms_job, [warm] * num_workers))
    finally:
        if main_file is not None:
            main.__file__ = main_file
    return pool


def batched_nms_padded(
    boxes: np.ndarray,
    scores: np.ndarray,
    valid: Optional[np.ndarray],
    iou_threshold: float,
    max_output: int,
    num_threads: Optional[int] = None,
    executor: Optional[Executor] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-image :func:`nms` with fixed-size padded outputs.

    Args:
      boxes: ``(B, N, 4)``; scores: ``(B, N)``; valid: ``(B, N)`` bool (``None``: all valid).
        Invalid entries take no part.
      iou_threshold, max_output: as :func:`nms`.
      num_threads: images run in parallel threads when ``B > 1``; ``None`` uses a shared pool,
        ``1`` runs sequentially. Ignored when ``executor`` is given.
      executor: runs the images on it instead, e.g. a :func:`process_pool` (the only way to run
        large NMS problems truly in parallel: the per-image work mostly holds the GIL).

    Returns:
      ``keep_idx (B, max_output)`` int32 indices into ``N`` by descending score, -1 padded, and
      ``keep_valid (B, max_output)`` bool.
    """
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms_padded: boxes must be (B, N, 4), got shape {boxes.shape}")
    if scores.shape != boxes.shape[:2]:
        raise ValueError(
            f"batched_nms_padded: scores must be {boxes.shape[:2]}, got shape {scores.shape}"
        )
    if valid is None:
        valid = np.ones(boxes.shape[:2], bool)
    valid = np.asarray(valid, bool)
    if valid.shape != boxes.shape[:2]:
        raise ValueError(
            f"batched_nms_padded: valid must be {boxes.shape[:2]}, got shape {valid.shape}"
        )
    b = boxes.shape[0]
    max_output = int(max_output)

    vis = [_nz(valid[i]) for i in range(b)]
    jobs = [
        (boxes[i].take(vi, axis=0), scores[i].take(vi), iou_threshold, max_output)
        for i, vi in enumerate(vis)
    ]
    if b == 1 or (executor is None and num_threads == 1):
        keeps = [_nms_job(j) for j in jobs]
    elif executor is not None:
        keeps = list(executor.map(_nms_job, jobs))
    elif num_threads is None:
        keeps = list(_default_pool().map(_nms_job, jobs))
    else:
        with ThreadPoolExecutor(max_workers=num_threads) as ex:
            keeps = list(ex.map(_nms_job, jobs))
    results = [vi.take(k) for vi, k in zip(vis, keeps, strict=True)]
    keep_idx = np.full((b, max_output), -1, np.int32)
    keep_valid = np.zeros((b, max_output), bool)
    for i, r in enumerate(results):
        keep_idx[i, : r.size] = r
        keep_valid[i, : r.size] = True
    return keep_idx, keep_valid
