"""Host (numpy) stages of inference between the jitted calls (§2.9, §2.10)."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import List, Optional, Sequence, Tuple

import numpy as np

from seqnet_jax.host.nms import batched_nms_padded, nms
from seqnet_jax.ops.box_ops import remove_small_boxes_mask

RPN_MIN_SIZE = 1e-3
DET_MIN_SIZE = 1e-2


def rpn_proposals(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    post_nms_top_n: int,
    executor: Optional[Executor] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Top-k RPN boxes → proposals. ``boxes (B, K, 4)`` clipped, ``scores (B, K)`` sorted logits.

    Drops boxes with a side < 1e-3 and entries with a non-finite score (anchors outside the
    reference canvas, see ``SeqNet.rpn``), NMS at ``iou_threshold`` and keeps ``post_nms_top_n``.
    Returns ``proposals (B, P, 4)`` (zeros in padding) and ``valid (B, P)``. ``executor``: see
    :func:`~seqnet_jax.host.nms.batched_nms_padded`.
    """
    valid = remove_small_boxes_mask(boxes, RPN_MIN_SIZE) & np.isfinite(scores)
    keep, keep_valid = batched_nms_padded(
        boxes, scores, valid, iou_threshold, post_nms_top_n, executor=executor
    )
    idx = np.where(keep_valid, keep, 0)
    props = np.take_along_axis(boxes, idx[..., None], axis=1)
    props = np.where(keep_valid[..., None], props, 0.0).astype(np.float32)
    return props, keep_valid


def stage1_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    valid: np.ndarray,
    score_thresh: float,
    nms_thresh: float,
    max_dets: int,
) -> List[np.ndarray]:
    """First-stage post-processing per image: score > thresh, side ≥ 1e-2, NMS, top ``max_dets``.

    ``boxes (B, R, 4)``, ``scores (B, R)``, ``valid (B, R)`` → per image the kept indices into R
    (sorted by score, descending).
    """
    keep_mask = valid & (scores > score_thresh) & remove_small_boxes_mask(boxes, DET_MIN_SIZE)
    out = []
    for b in range(boxes.shape[0]):
        cand = np.flatnonzero(keep_mask[b])
        k = nms(boxes[b, cand], scores[b, cand], nms_thresh, max_dets)
        out.append(cand[k])
    return out


def pad_to_bucket(n: int, buckets: Sequence[int]) -> int:
    """Smallest bucket ≥ n (the last bucket if n is larger, callers cap n at it)."""
    for b in sorted(buckets):
        if n <= b:
            return b
    return max(buckets)


def stage2_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    embeddings: np.ndarray,
    nms_thresh: float,
    max_dets: int,
    cws: bool = True,
    forced_box: np.ndarray | None = None,
    forced_embedding: np.ndarray | None = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Second-stage post-processing of one image (§2.9 step 4, §2.10).

    ``boxes (N, 4)`` refined and clipped, ``scores (N,)`` first-stage (FCS) scores, ``embeddings
    (N, D)`` unit. CWS multiplies the embeddings by the scores. A ``forced_box`` (the query's GT box
    of a query-as-gallery pass) is added with score 1 before the NMS so it comes first.
    Returns (boxes (M,4), scores (M,), embeddings (M,D)).
    """
    if cws:
        embeddings = embeddings * scores[:, None]
    keep = remove_small_boxes_mask(boxes, DET_MIN_SIZE)
    boxes, scores, embeddings = boxes[keep], scores[keep], embeddings[keep]
    if forced_box is not None:
        # Prepended: the stable score sort keeps it first even against a score of exactly 1.
        boxes = np.concatenate([forced_box[None].astype(boxes.dtype), boxes], axis=0)
        scores = np.concatenate([np.ones((1,), scores.dtype), scores])
        embeddings = np.concatenate([forced_embedding[None].astype(embeddings.dtype), embeddings])
    k = nms(boxes, scores, nms_thresh, max_dets)
    return boxes[k], scores[k], embeddings[k]
