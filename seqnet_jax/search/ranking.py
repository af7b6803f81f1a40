"""Ranking: every gallery detection's similarity to the query, optionally CBGM re-ranked.

Owns :class:`GalleryTable` (the readable files' frames and detections concatenated) and
:func:`rank_detections` (the reference's similarity: CWS-scaled gallery embedding · unit query
embedding; CBGM over the frames of the ``k1`` best detections with the query image's other people
as context).
"""

from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np

from seqnet_jax.search.index import FileRecord


@dataclasses.dataclass
class GalleryTable:
    """All detections of the (ok) gallery files, concatenated in file order."""

    keys: List[str]  # per record
    kinds: List[str]
    frame_rec: np.ndarray  # (F,) record of each frame
    frame_index: np.ndarray
    frame_pts: np.ndarray
    frame_time: np.ndarray
    frame_hw: np.ndarray
    det_frame: np.ndarray  # (M,) global frame row
    boxes: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray


def gallery_table(records: Sequence[FileRecord], dim: int) -> GalleryTable:
    """Concatenates the readable records' frames and detections into one table."""
    recs = [r for r in records if r.error is None]
    nf = np.asarray([len(r.frame_index) for r in recs], np.int64)
    offs = np.concatenate([[0], np.cumsum(nf)[:-1]]).astype(np.int64)

    def cat(name, empty):
        parts = [getattr(r, name) for r in recs]
        return np.concatenate(parts, 0) if parts else empty

    det_frame = (
        np.concatenate([r.det_frame.astype(np.int64) + o for r, o in zip(recs, offs, strict=True)])
        if recs
        else np.zeros((0,), np.int64)
    )
    return GalleryTable(
        keys=[r.key for r in recs],
        kinds=[r.kind for r in recs],
        frame_rec=np.repeat(np.arange(len(recs)), nf),
        frame_index=cat("frame_index", np.zeros((0,), np.int64)),
        frame_pts=cat("frame_pts", np.zeros((0,), np.int64)),
        frame_time=cat("frame_time", np.zeros((0,), np.float64)),
        frame_hw=cat("frame_hw", np.zeros((0, 2), np.int32)),
        det_frame=det_frame,
        boxes=cat("boxes", np.zeros((0, 4), np.float32)),
        scores=cat("scores", np.zeros((0,), np.float32)),
        embeddings=cat("embeddings", np.zeros((0, dim), np.float32)),
    )


def rank_detections(
    table: GalleryTable,
    query_feat: np.ndarray,
    context_feats: Optional[np.ndarray] = None,
    k1: int = 10,
    k2: int = 3,
) -> np.ndarray:
    """Similarity of every gallery detection to the query (reference: CWS gallery feature · unit
    query feature), with CBGM (§6.4) over the frames of the ``k1`` best detections when
    ``context_feats`` (query-as-gallery pass, row 0 = the query box) is given."""
    sims = table.embeddings @ np.asarray(query_feat, np.float32)
    if context_feats is None or not len(sims):
        return sims
    from seqnet_jax.evaluation.cbgm import cbgm_rescore  # scipy: imported only when used

    top = np.argsort(-sims, kind="stable")[:k1]
    out = sims.copy()
    for fr in dict.fromkeys(table.det_frame[top].tolist()):
        rows = np.flatnonzero(table.det_frame == fr)
        out[rows] = cbgm_rescore(sims[rows], context_feats, table.embeddings[rows], k2)
    return out
