"""Person-search ranking metrics (mAP, top-1/5/10) for every protocol, with optional CBGM.

Definitions (reference ``eval_search_cuhk`` / ``eval_search_prw``, §6.2-§6.4), per query:

* Gallery detections with score >= ``det_thresh`` (0.5) take part; similarity = dot product of
  the (confidence-weighted) gallery feature and the unit query feature.
* ``count_gt`` = number of gallery entries holding the query person (also those where nothing was
  detected). In each gallery image with the person, the detections are visited by similarity
  (descending) and the first with ``IoU >= min(0.5, w*h/((w+10)*(h+10)))`` (``w, h`` of the GT
  box) is the one positive; ``count_tp`` counts them.
* ``AP = average_precision(y_true, sims) * count_tp / count_gt`` with scikit-learn's AP over all
  detections of the query's gallery; ``AP = 0`` when ``count_tp == 0`` (including a query with no
  gallery detection at all, and a query whose person is nowhere in its gallery: the reference
  divides by zero there, it is counted as 0 here and reported in ``num_queries_without_gt``).
* ``top-k`` = 1 if a positive is among the ``k`` most similar detections of the whole gallery.
* CBGM (optional) rescores the gallery images owning the ``k1`` most similar detections before
  the labelling (see :mod:`seqnet_jax.evaluation.cbgm`).

Ties: equal similarities are ranked in gallery order (protocol order of the images, then detection
order). This fixes which of two equally similar detections is the positive and which comes first
in the top-k; the AP does not depend on it (tied scores form one step). The reference uses a
non-stable ``argsort`` and is not deterministic there.

Implementation: all gallery detections are concatenated once (``M`` rows with an image index); the
similarities of a chunk of queries to all of them are one matrix product; per query and protocol
the gallery is a gather of detection indices, the AP is computed from the positives' ranks
(:func:`~seqnet_jax.evaluation.metrics.average_precision_from_positives`, no sort of all ``M``
scores) and the top-10 by partition. Rule-based protocols (PRW, full set) are never expanded into
per-query lists. CBGM matchings depend only on (query, image) and are shared between protocols.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import numpy as np

from seqnet_jax import progress
from seqnet_jax.data.types import ImageAnnotation, Query, SearchProtocol
from seqnet_jax.evaluation.cbgm import cbgm_match
from seqnet_jax.evaluation.deprecation import renamed_arguments
from seqnet_jax.evaluation.metrics import (
    at_least,
    average_precision_from_positives,
    pairwise_iou,
    size_dependent_iou_threshold,
    top_k_positions,
)
from seqnet_jax.evaluation.protocols import RULES

logger = logging.getLogger(__name__)

TOP_K = (1, 5, 10)
NUM_RECORDED = 10  # ranked detections recorded per query


@dataclasses.dataclass
class SearchConfig:
    """One search evaluation: a protocol, with or without CBGM (``k1``/``k2`` as §6.4)."""

    protocol: SearchProtocol
    cbgm: bool = False
    k1: int = 10
    k2: int = 3


@dataclasses.dataclass
class _Resolved:
    """One query's gallery under one protocol.

    didx: ``(n,)`` global detection indices of the gallery, in gallery order.
    cand_pos, owner: positions (in ``didx``) of the detections of the GT images that overlap their
      GT enough (IoU >= threshold), and the index of their GT image; the positive of each GT image
      is its most similar candidate.
    count_gt: number of ground truths (denominator of the recall rate).
    imgs, offs: for an explicit gallery, its (de-duplicated) images in order and the position of
      each image's first detection in ``didx``; ``None`` when ``didx`` is sorted ascending.
    """

    didx: np.ndarray
    cand_pos: np.ndarray
    owner: np.ndarray
    count_gt: int
    imgs: Optional[np.ndarray] = None
    offs: Optional[np.ndarray] = None
    rank_ready: bool = False


def _as_2d(x, cols: int, dtype, where: str, what: str) -> np.ndarray:
    """``x`` as a ``(N, cols)`` array (empty -> ``(0, cols)``), else a ValueError.

    ``dtype=None`` keeps a float input's own dtype (others become float64).
    """
    if x is None:
        raise ValueError(f"{where}: {what} missing (None)")
    arr = np.asarray(x, dtype=dtype)
    if dtype is None and not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.size == 0:
        return np.zeros((0, cols), dtype=arr.dtype)
    if arr.ndim != 2 or arr.shape[1] != cols:
        raise ValueError(f"{where}: {what} must have shape (N, {cols}), got {arr.shape}")
    return arr


class _Gallery:
    """All gallery detections (score >= det_thresh) concatenated, with per-image segments."""

    def __init__(self, gallery, gallery_dets, gallery_feats, dim: int, det_thresh: float):
        g = len(gallery)
        if g == 0:
            raise ValueError("search evaluation: the gallery is empty")
        if len(gallery_dets) != g:
            raise ValueError(
                f"gallery_dets has {len(gallery_dets)} entries but the gallery has {g} images"
            )
        if len(gallery_feats) != g:
            raise ValueError(
                f"gallery_feats has {len(gallery_feats)} entries but the gallery has {g} images"
            )
        dets, feats, counts = [], [], np.zeros((g,), dtype=np.int64)
        for i, (anno, d, f) in enumerate(zip(gallery, gallery_dets, gallery_feats, strict=True)):
            where = f"gallery image {i} ({anno.name})"
            d = _as_2d(d, 5, None, where, "detections")
            f = _as_2d(f, dim, np.float32, where, f"features (query feature dim {dim})")
            if d.shape[0] != f.shape[0]:
                raise ValueError(f"{where}: {d.shape[0]} detections but {f.shape[0]} feature rows")
            dets.append(d)
            feats.append(f)
            counts[i] = d.shape[0]
        # Empty inputs (often float64) must not promote float32 detections.
        dt = np.result_type(*[d.dtype for d in dets if d.size]) if counts.any() else None
        all_dets = np.concatenate(dets, dtype=dt)
        all_feats = np.concatenate(feats)
        img = np.repeat(np.arange(g), counts)
        for arr, what in ((all_dets, "detections (boxes or scores)"), (all_feats, "features")):
            bad = ~np.isfinite(arr).all(axis=1)
            if bad.any():
                i = int(img[np.flatnonzero(bad)[0]])
                raise ValueError(
                    f"gallery image {i} ({gallery[i].name}): {what} contain NaN or inf"
                )
        keep = at_least(all_dets[:, 4], det_thresh)  # compared in the detections' dtype
        all_dets = all_dets.astype(np.float64)
        self.boxes = all_dets[keep, :4]
        self.scores = all_dets[keep, 4]
        self.feats = np.ascontiguousarray(all_feats[keep])
        self.img_of_det = img[keep]
        self.counts = np.bincount(self.img_of_det, minlength=g)
        self.start = np.r_[0, np.cumsum(self.counts)]
        self.num_images = g
        self.num_dets = int(self.boxes.shape[0])
        self.names = [a.name for a in gallery]
        self.name_to_index = {n: i for i, n in enumerate(self.names)}
        if len(self.name_to_index) != g:
            raise ValueError("gallery image names are not unique")
        self.cams = np.array([a.cam_id for a in gallery], dtype=np.int64)
        self._annotations = gallery
        self._pid_index = None
        self._camera_dets = {}
        self._all = np.arange(self.num_dets)

    def det_indices(self, imgs: np.ndarray) -> np.ndarray:
        """Global detection indices of images ``imgs`` (in that order)."""
        n = self.counts[imgs]
        total = int(n.sum())
        offsets = np.repeat(self.start[imgs] - (np.cumsum(n) - n), n)
        return offsets + np.arange(total)

    def dets_except(self, base: Optional[np.ndarray], img: int) -> np.ndarray:
        """Sorted det indices ``base`` (``None`` = all) without the dets of image ``img``."""
        base = self._all if base is None else base
        if img < 0 or self.counts[img] == 0:
            return base
        lo, hi = np.searchsorted(base, self.start[img : img + 2])
        if lo == hi:
            return base
        return np.concatenate((base[:lo], base[hi:]))

    def camera_dets(self, cam: int) -> np.ndarray:
        """Sorted global indices of the detections in images from cameras other than ``cam``."""
        if cam not in self._camera_dets:
            self._camera_dets[cam] = np.flatnonzero(self.cams[self.img_of_det] != cam)
        return self._camera_dets[cam]

    def pid_occurrences(self, pid: int) -> tuple[np.ndarray, np.ndarray]:
        """Images (sorted) containing ``pid`` and the first box of ``pid`` in each."""
        if self._pid_index is None:
            pids, imgs, boxes = [], [], []
            for i, a in enumerate(self._annotations):
                p = np.asarray(a.pids).ravel()
                b = np.asarray(a.boxes, dtype=np.float64).reshape(-1, 4)
                if p.shape[0] != b.shape[0]:
                    raise ValueError(
                        f"gallery image {i} ({a.name}): {b.shape[0]} boxes, {p.shape[0]} pids"
                    )
                pids.append(p)
                imgs.append(np.full(p.shape, i, dtype=np.int64))
                boxes.append(b)
            pids, imgs, boxes = np.concatenate(pids), np.concatenate(imgs), np.concatenate(boxes)
            self._pid_index = {}
            if pids.shape[0] == 0:
                return np.zeros((0,), dtype=np.int64), np.zeros((0, 4))
            order = np.lexsort((np.arange(pids.shape[0]), imgs, pids))
            pids, imgs, boxes = pids[order], imgs[order], boxes[order]
            first = np.r_[True, (pids[1:] != pids[:-1]) | (imgs[1:] != imgs[:-1])]
            pids, imgs, boxes = pids[first], imgs[first], boxes[first]
            starts = np.flatnonzero(np.r_[True, pids[1:] != pids[:-1]])
            ends = np.r_[starts[1:], pids.shape[0]]
            self._pid_index = {
                int(pids[s]): (imgs[s:e], boxes[s:e]) for s, e in zip(starts, ends, strict=True)
            }
        empty = (np.zeros((0,), dtype=np.int64), np.zeros((0, 4)))
        return self._pid_index.get(int(pid), empty)


class SearchEvaluator:
    """Evaluates many search protocols / CBGM variants over one set of features, sharing work.

    Args:
      gallery: gallery annotations.
      queries: queries (their order matches ``query_box_feats`` and the protocols' per-query
        lists).
      gallery_dets: per gallery image an ``(N_i, 5)`` array ``x1, y1, x2, y2, score``.
      gallery_feats: per gallery image an ``(N_i, D)`` array (confidence-weighted embeddings).
      query_box_feats: ``(Q, D)`` unit embeddings of the query boxes (the reference's
        ``query_box_feats``; the old name ``query_feats`` still works, deprecated).
      det_thresh: gallery detections with a lower score are dropped (0.5 in the reference).
      query_context_dets: for CBGM, per query the ``(K_i, 5)`` detections of the query image from
        the query-as-gallery pass, row 0 = the query box (the reference's ``query_dets``).
      query_context_feats: for CBGM, per query the ``(K_i, D)`` features of those detections
        (the reference's ``query_feats``, which is why ours has another name).
      chunk_size: queries per similarity matrix product.

    Raises:
      ValueError: empty gallery or queries, count mismatches between detections, features,
        gallery and queries, bad shapes, NaN/inf values.
    """

    @renamed_arguments(query_feats="query_box_feats")
    def __init__(
        self,
        gallery: list[ImageAnnotation],
        queries: list[Query],
        gallery_dets: Sequence,
        gallery_feats: Sequence,
        query_box_feats,
        det_thresh: float = 0.5,
        query_context_dets: Optional[Sequence] = None,
        query_context_feats: Optional[Sequence] = None,
        chunk_size: int = 128,
    ):
        if len(queries) == 0:
            raise ValueError("search evaluation: there are no queries")
        qf = np.asarray(query_box_feats, dtype=np.float32)
        if qf.ndim != 2 or qf.shape[0] != len(queries):
            raise ValueError(
                f"query_box_feats must be (num_queries={len(queries)}, D), got shape {qf.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(qf).all(axis=1))
        if bad.size:
            raise ValueError(
                f"query_box_feats of query {bad[0]} ({queries[bad[0]].name}) contain NaN"
            )
        self.queries = queries
        self.query_box_feats = qf
        self.dim = qf.shape[1]
        self.gal = _Gallery(gallery, gallery_dets, gallery_feats, self.dim, det_thresh)
        self.chunk_size = int(chunk_size)
        self._ctx_dets = query_context_dets
        self._ctx_feats_raw = query_context_feats
        self._ctx_feats = None
        self._rank = np.zeros((self.gal.num_images,), dtype=np.int64)  # scratch: image -> rank

    # ----------------------------------------------------------------------------- CBGM inputs
    def _context(self) -> list:
        """Validated CBGM context features (one ``(K_i, D)`` float32 array per query)."""
        if self._ctx_feats is not None:
            return self._ctx_feats
        if self._ctx_dets is None or self._ctx_feats_raw is None:
            raise ValueError("CBGM needs query_context_dets and query_context_feats")
        nq = len(self.queries)
        if len(self._ctx_dets) != nq or len(self._ctx_feats_raw) != nq:
            raise ValueError(
                f"query context: {len(self._ctx_dets)} detection and {len(self._ctx_feats_raw)} "
                f"feature entries for {nq} queries"
            )
        out = []
        for i, (q, d, f) in enumerate(
            zip(self.queries, self._ctx_dets, self._ctx_feats_raw, strict=True)
        ):
            where = f"query {i} ({q.name}) context"
            d = _as_2d(d, 5, np.float64, where, "detections")
            f = _as_2d(f, self.dim, np.float32, where, "features")
            if d.shape[0] == 0:
                raise ValueError(f"{where}: no detections (row 0 must be the query box)")
            if d.shape[0] != f.shape[0]:
                raise ValueError(f"{where}: {d.shape[0]} detections but {f.shape[0]} features")
            if not (np.isfinite(d).all() and np.isfinite(f).all()):
                raise ValueError(f"{where}: NaN or inf in detections or features")
            if np.abs(d[0, :4] - np.asarray(q.box, dtype=np.float64)).max() > 0.5:
                raise ValueError(f"{where}: row 0 {d[0, :4]} is not the query box {q.box}")
            out.append(f)
        self._ctx_feats = out
        return out

    # ----------------------------------------------------------------------------- protocols
    def _iou_ok(self, cand_global: np.ndarray, owner: np.ndarray, gt_boxes: np.ndarray):
        """Which candidate detections pass their GT's size-dependent IoU threshold."""
        iou = pairwise_iou(self.gal.boxes[cand_global], gt_boxes[owner])
        return iou >= size_dependent_iou_threshold(gt_boxes)[owner]

    def _explicit_lists(self, protocol: SearchProtocol, qi: int, exclude: int = -1):
        """De-duplicated gallery images, their GT boxes (NaN rows) and ``count_gt`` of a query."""
        idx = np.asarray(protocol.gallery_indices[qi], dtype=np.int64).ravel()
        gt = np.asarray(protocol.gt_boxes[qi], dtype=np.float64).reshape(-1, 4)
        if idx.shape[0] != gt.shape[0]:
            raise ValueError(
                f"{protocol.name}: query {qi} has {idx.shape[0]} gallery entries but "
                f"{gt.shape[0]} GT boxes"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= self.gal.num_images):
            raise ValueError(
                f"{protocol.name}: query {qi} has gallery indices outside "
                f"[0, {self.gal.num_images})"
            )
        if exclude >= 0:
            keep = idx != exclude
            idx, gt = idx[keep], gt[keep]
        has = ~np.isnan(gt).any(axis=1)
        count_gt = int(np.count_nonzero(has))  # every entry with a box, duplicates included
        # Duplicate check without a sort: after the scatter every entry reads back its own
        # position unless its image occurs twice.
        n = idx.shape[0]
        self._rank[idx] = np.arange(n)
        if n and (self._rank[idx] != np.arange(n)).any():
            _, first = np.unique(idx, return_index=True)
            first = np.sort(first)  # a duplicated image is searched once, with its first entry
            idx, gt, has = idx[first], gt[first], has[first]
        return idx, gt, has, count_gt

    def _resolver(self, protocol: SearchProtocol):
        """A function ``qi -> _Resolved`` for ``protocol``."""
        gal, queries = self.gal, self.queries
        rule = protocol.rule
        if rule not in RULES:
            raise ValueError(f"{protocol.name}: unknown protocol rule {rule!r}")
        if rule in ("explicit", "full_set"):
            for what in ("gallery_indices", "gt_boxes"):
                lists = getattr(protocol, what)
                if lists is None or len(lists) != len(queries):
                    n = None if lists is None else len(lists)
                    raise ValueError(
                        f"{protocol.name}: {what} has {n} entries for {len(queries)} queries"
                    )
        if rule == "other_cameras":
            if (gal.cams < 0).any() or any(q.cam_id < 0 for q in queries):
                raise ValueError(f"{protocol.name}: other_cameras needs camera ids everywhere")

        def resolve_explicit(qi: int) -> _Resolved:
            idx, gt, has, count_gt = self._explicit_lists(protocol, qi)
            n = gal.counts[idx]
            offs = np.cumsum(n) - n
            didx = np.repeat(gal.start[idx] - offs, n) + np.arange(int(n.sum()))
            gk = np.flatnonzero(has)
            ng = n[gk]
            cand_pos = np.repeat(offs[gk] - (np.cumsum(ng) - ng), ng) + np.arange(int(ng.sum()))
            owner = np.repeat(np.arange(gk.shape[0]), ng)
            ok = self._iou_ok(didx[cand_pos], owner, gt[gk])
            return _Resolved(didx, cand_pos[ok], owner[ok], count_gt, imgs=idx, offs=offs)

        def resolve_rule(qi: int) -> _Resolved:
            q = queries[qi]
            qimg = gal.name_to_index.get(q.name, -1)
            base = None
            if rule == "full_set":
                idx, gt, has, count_gt = self._explicit_lists(protocol, qi, qimg)
                gt_imgs, gt_boxes = idx[has], gt[has]
            else:
                gt_imgs, gt_boxes = gal.pid_occurrences(q.pid)
                keep = gt_imgs != qimg
                if rule == "other_cameras":
                    keep &= gal.cams[gt_imgs] != q.cam_id
                    base = gal.camera_dets(q.cam_id)
                gt_imgs, gt_boxes = gt_imgs[keep], gt_boxes[keep]
                count_gt = int(gt_imgs.shape[0])
            didx = gal.dets_except(base, qimg)
            cand = gal.det_indices(gt_imgs)
            owner = np.repeat(np.arange(gt_imgs.shape[0]), gal.counts[gt_imgs])
            ok = self._iou_ok(cand, owner, gt_boxes)
            cand, owner = cand[ok], owner[ok]
            return _Resolved(didx, np.searchsorted(didx, cand), owner, count_gt)

        return resolve_explicit if rule == "explicit" else resolve_rule

    def _positions(self, res: _Resolved, dets: np.ndarray) -> np.ndarray:
        """Positions in ``res.didx`` of global detection indices ``dets`` (all in the gallery)."""
        if res.imgs is None:
            return np.searchsorted(res.didx, dets)
        if not res.rank_ready:
            self._rank[res.imgs] = np.arange(res.imgs.shape[0])
            res.rank_ready = True
        img = self.gal.img_of_det[dets]
        return res.offs[self._rank[img]] + (dets - self.gal.start[img])

    # ----------------------------------------------------------------------------- scoring
    def _cbgm_changes(self, qi: int, res: _Resolved, top: np.ndarray, k2: int, cache: dict):
        """CBGM on the images owning the detections at positions ``top``.

        Returns the positions (in ``res.didx``) whose similarity changes and the new values.
        The matching of a (query, image) pair does not depend on the protocol: ``cache`` keeps it.
        """
        gal = self.gal
        ctx = None
        js, vals = [], []
        for g in np.unique(gal.img_of_det[res.didx[top]]).tolist():
            key = (k2, g)
            hit = cache.get(key)
            if hit is None:
                if ctx is None:
                    ctx = self._context()[qi][:k2]
                a, b = gal.start[g], gal.start[g + 1]
                j, val = cbgm_match(ctx @ gal.feats[a:b].T)
                hit = cache[key] = (a + j if j >= 0 else -1, val)
            if hit[0] >= 0:
                js.append(hit[0])
                vals.append(hit[1])
        pos = self._positions(res, np.asarray(js, dtype=np.int64))
        return pos, np.asarray(vals, dtype=np.float32)

    def _score(self, qi: int, res: _Resolved, s: np.ndarray, top: np.ndarray, record: bool):
        """AP, top-k hits and (optionally) the record of one query.

        ``s`` are the similarities of ``res.didx`` (after CBGM), ``top`` the positions of the
        ``NUM_RECORDED`` best, best first.
        """
        if res.cand_pos.size:
            order = np.lexsort((res.cand_pos, -s[res.cand_pos], res.owner))
            o = res.owner[order]
            first = np.ones(o.shape, dtype=bool)
            first[1:] = o[1:] != o[:-1]
            pos = res.cand_pos[order[first]]
        else:
            pos = res.cand_pos
        count_tp = int(pos.shape[0])
        if count_tp == 0 or res.count_gt == 0:
            ap = 0.0
        else:
            ap = average_precision_from_positives(s[pos], s) * count_tp / res.count_gt
        correct = (top[:, None] == pos[None, :]).any(axis=1)
        hits = [bool(correct[:k].any()) for k in TOP_K]
        entry = None
        if record:
            q = self.queries[qi]
            gal = self.gal
            top_g = res.didx[top]
            names = [gal.names[g] for g in gal.img_of_det[top_g].tolist()]
            entry = {
                "query_index": qi,
                "query_image": q.name,
                "query_box": np.asarray(q.box, dtype=np.float64).tolist(),
                "query_pid": int(q.pid),
                "ap": float(ap),
                "count_gt": int(res.count_gt),
                "count_tp": count_tp,
                "top10": [
                    {"image": n, "box": b, "score": sc, "correct": int(c)}
                    for n, b, sc, c in zip(
                        names,
                        np.round(gal.boxes[top_g], 2).tolist(),
                        np.round(s[top].astype(np.float64), 6).tolist(),
                        correct.tolist(),
                        strict=True,
                    )
                ],
            }
        return ap, hits, entry

    def evaluate(self, configs: Sequence[SearchConfig], record_per_query: bool = True) -> list:
        """Runs every config; returns one result dict per config (see :func:`eval_search`)."""
        configs = list(configs)
        if any(c.cbgm for c in configs):
            self._context()
        groups: dict = {}
        for ci, c in enumerate(configs):
            groups.setdefault(id(c.protocol), (c.protocol, []))[1].append(ci)
        plan = []
        for p, cis in groups.values():
            # Enough of the ranking to pick CBGM's top-k1 and to re-rank after CBGM: the new
            # top-10 lies in the old top-(10 + #changed) plus the changed detections.
            k1s = [configs[ci].k1 for ci in cis if configs[ci].cbgm]
            plan.append((self._resolver(p), cis, NUM_RECORDED + max(k1s, default=0)))
        nq = len(self.queries)
        aps = np.zeros((len(configs), nq))
        hits = np.zeros((len(configs), nq, len(TOP_K)), dtype=bool)
        no_gt = np.zeros((len(configs),), dtype=np.int64)
        per_query = [[] for _ in configs]
        feats_t = self.gal.feats.T
        bar = progress.progress(desc="search metrics", total=nq, unit="query")
        for c0 in range(0, nq, self.chunk_size):
            c1 = min(nq, c0 + self.chunk_size)
            sims_chunk = self.query_box_feats[c0:c1] @ feats_t  # (B, M)
            for qi in range(c0, c1):
                sims = sims_chunk[qi - c0]
                cache: dict = {}
                for resolve, cis, k_top in plan:
                    res = resolve(qi)
                    s0 = sims[res.didx]
                    top0 = top_k_positions(s0, k_top)
                    for ci in cis:
                        cfg = configs[ci]
                        if cfg.cbgm:
                            pos, vals = self._cbgm_changes(qi, res, top0[: cfg.k1], cfg.k2, cache)
                            s = s0.copy()
                            s[pos] = vals
                            cand = np.union1d(top0, pos)
                            top = cand[np.lexsort((cand, -s[cand]))[:NUM_RECORDED]]
                        else:
                            s, top = s0, top0[:NUM_RECORDED]
                        ap, h, entry = self._score(qi, res, s, top, record_per_query)
                        aps[ci, qi] = ap
                        hits[ci, qi] = h
                        no_gt[ci] += res.count_gt == 0
                        if record_per_query:
                            per_query[ci].append(entry)
                bar.update(1)
        bar.close()
        results = []
        for ci, cfg in enumerate(configs):
            if no_gt[ci]:
                logger.warning(
                    "%s%s: %d queries have no ground truth in their gallery (AP 0)",
                    cfg.protocol.name,
                    " + CBGM" if cfg.cbgm else "",
                    no_gt[ci],
                )
            acc = hits[ci].mean(axis=0)
            out = {
                "protocol": cfg.protocol.name,
                "gallery_size": int(cfg.protocol.gallery_size),
                "rule": cfg.protocol.rule,
                "cbgm": bool(cfg.cbgm),
                "k1": int(cfg.k1) if cfg.cbgm else None,
                "k2": int(cfg.k2) if cfg.cbgm else None,
                "mAP": float(aps[ci].mean()),
                **{f"top{k}": float(a) for k, a in zip(TOP_K, acc, strict=True)},
                "num_queries": nq,
                "num_queries_without_gt": int(no_gt[ci]),
            }
            if record_per_query:
                out["per_query"] = per_query[ci]
            results.append(out)
        return results


@renamed_arguments(query_feats="query_box_feats")
def eval_search(
    protocol: SearchProtocol,
    gallery: list[ImageAnnotation],
    queries: list[Query],
    gallery_dets: Sequence,
    gallery_feats: Sequence,
    query_box_feats,
    det_thresh: float = 0.5,
    cbgm: bool = False,
    k1: int = 10,
    k2: int = 3,
    query_context_dets: Optional[Sequence] = None,
    query_context_feats: Optional[Sequence] = None,
) -> dict:
    """Search mAP and top-1/5/10 of one protocol (§6.2-§6.4).

    Args:
      protocol: the search protocol (explicit, PRW rule, or full set).
      gallery, queries: the dataset's gallery annotations and queries.
      gallery_dets: per gallery image ``(N_i, 5)`` ``x1, y1, x2, y2, score``.
      gallery_feats: per gallery image ``(N_i, D)`` (confidence-weighted) embeddings.
      query_box_feats: ``(Q, D)`` unit embeddings of the query boxes (old name ``query_feats``,
        deprecated).
      det_thresh: minimum gallery detection score (0.5).
      cbgm: apply Context Bipartite Graph Matching.
      k1, k2: CBGM's number of top gallery detections and of query-side nodes
        (10/3 for CUHK-SYSU, 30/4 for PRW).
      query_context_dets, query_context_feats: the query-as-gallery pass, needed for CBGM (the
        reference's ``query_dets`` / ``query_feats``).

    Returns:
      ``{"protocol", "gallery_size", "rule", "cbgm", "k1", "k2", "mAP", "top1", "top5", "top10",
      "num_queries", "num_queries_without_gt", "per_query"}``; ``per_query`` holds per query
      ``{"query_index", "query_image", "query_box", "query_pid", "ap", "count_gt", "count_tp",
      "top10": [{"image", "box", "score", "correct"}, ...]}`` (the 10 most similar gallery
      detections after CBGM, best first; ``score`` is the similarity).
    """
    evaluator = SearchEvaluator(
        gallery,
        queries,
        gallery_dets,
        gallery_feats,
        query_box_feats,
        det_thresh=det_thresh,
        query_context_dets=query_context_dets,
        query_context_feats=query_context_feats,
    )
    return evaluator.evaluate([SearchConfig(protocol, cbgm=cbgm, k1=k1, k2=k2)])[0]
