"""Detection recall and average precision over the gallery (reference ``eval_detection``, §6.1).

Per gallery image the reference keeps the detections with score >= ``det_thresh``, builds the
GT x detection IoU matrix (float32, no +1), marks pairs with IoU >= ``iou_thresh``, keeps for
each detection only its first-argmax GT and for each GT only its first-argmax detection (over all
kept detections, matched or not), and counts the surviving pairs as true positives. Every GT box
counts, also in images without detections (and, in the labeled-only variant, only boxes with a
labeled identity; images without any are skipped together with their detections).
``recall = tp / gt`` and ``ap = average_precision(y_true, y_score) * recall`` with scikit-learn's
AP definition. Here all images are processed at once: the IoU pairs of all images are one flat
array and the arg-maxima are segment reductions.

Scores are compared with ``det_thresh`` in their own float dtype, as numpy did for the reference's
float32 arrays (a float32 score of 0.01 passes 0.01).

Differences from the reference, all where the reference crashes: detections in an image without
any GT box count as false positives (the reference's ``argmax`` of an empty column raises), and
``len(det) != 0`` replaces the reference's ``det != []``.
"""

from __future__ import annotations

import logging

import numpy as np

from seqnet_jax.data.types import UNLABELED_PID, ImageAnnotation
from seqnet_jax.evaluation.metrics import at_least, average_precision, pairwise_iou

logger = logging.getLogger(__name__)


def _as_dets(det, where: str) -> np.ndarray:
    """``det`` as a float ``(N, 5)`` array in its own float dtype; ValueError naming ``where``."""
    if det is None:
        raise ValueError(f"{where}: detections missing (None)")
    det = np.asarray(det)
    if not np.issubdtype(det.dtype, np.floating):
        det = det.astype(np.float64)
    if det.size == 0:
        return np.zeros((0, 5), dtype=np.float64)
    if det.ndim != 2 or det.shape[1] != 5:
        raise ValueError(f"{where}: detections must be (N, 5) x1,y1,x2,y2,score, got {det.shape}")
    if not np.isfinite(det).all():
        raise ValueError(f"{where}: detections contain NaN or inf (boxes or scores)")
    return det


def _segment_first_argmax(values, ids, seg_starts, num_segments_ids, other_ids, big):
    """For contiguous segments of ``values``: the smallest ``other_ids`` attaining the maximum.

    Returns an array indexed by ``ids`` (the segment owner of each element) with that winner.
    """
    seg_max = np.maximum.reduceat(values, seg_starts)
    seg_len = np.diff(np.r_[seg_starts, values.shape[0]])
    at_max = values == np.repeat(seg_max, seg_len)
    winner = np.minimum.reduceat(np.where(at_max, other_ids, big), seg_starts)
    out = np.full((num_segments_ids,), -1, dtype=np.int64)
    out[ids[seg_starts]] = winner
    return out


def eval_detection(
    gallery: list[ImageAnnotation],
    dets: list,
    det_thresh: float = 0.01,
    iou_thresh: float = 0.5,
    labeled_only: bool = False,
) -> dict:
    """Detection recall and AP of the gallery detections, as the reference (§6.1).

    Args:
      gallery: gallery annotations (one per image).
      dets: one ``(N_i, 5)`` array ``x1, y1, x2, y2, score`` per gallery image (``N_i`` may be 0).
      det_thresh: detections with score below this are ignored.
      iou_thresh: IoU needed for a true positive.
      labeled_only: count only GT boxes with a labeled identity (pid != ``UNLABELED_PID``);
        images without any are skipped (their detections too), as the reference.

    Returns:
      ``{"recall", "ap", "num_gt", "num_tp", "num_dets"}``.

    Raises:
      ValueError: on an empty gallery, a detection list of the wrong length, badly shaped
        detections, or NaN/inf values.
    """
    if len(gallery) == 0:
        raise ValueError("eval_detection: the gallery is empty")
    if len(dets) != len(gallery):
        raise ValueError(
            f"eval_detection: got detections for {len(dets)} images but the gallery has "
            f"{len(gallery)} images"
        )
    gt_list, det_list = [], []
    for i, (anno, det) in enumerate(zip(gallery, dets, strict=True)):
        det = _as_dets(det, f"gallery image {i} ({anno.name})")
        gt = np.asarray(anno.boxes, dtype=np.float64).reshape(-1, 4)
        if labeled_only:
            gt = gt[np.asarray(anno.pids).ravel() != UNLABELED_PID]
            if gt.shape[0] == 0:
                continue
        gt_list.append(gt)
        det_list.append(det[at_least(det[:, 4], det_thresh)].astype(np.float64))

    n_gt = np.array([g.shape[0] for g in gt_list], dtype=np.int64)
    n_det = np.array([d.shape[0] for d in det_list], dtype=np.int64)
    count_gt = int(n_gt.sum())
    all_gt = np.concatenate(gt_list) if gt_list else np.zeros((0, 4))
    all_det = np.concatenate(det_list) if det_list else np.zeros((0, 5))
    num_dets = all_det.shape[0]
    gt_off = np.r_[0, np.cumsum(n_gt)[:-1]]
    det_off = np.r_[0, np.cumsum(n_det)[:-1]]

    # All (gt, det) pairs of every image, row-major per image: pairs of one GT are contiguous.
    n_pair = n_gt * n_det
    total = int(n_pair.sum())
    y_true = np.zeros((num_dets,), dtype=bool)
    count_tp = 0
    if total > 0:
        nd_rep = np.repeat(n_det, n_pair)
        r = np.arange(total) - np.repeat(np.cumsum(n_pair) - n_pair, n_pair)
        gt_id = np.repeat(gt_off, n_pair) + r // nd_rep
        det_id = np.repeat(det_off, n_pair) + r % nd_rep
        # The reference stores IoUs in a float32 matrix before comparing and arg-maxing.
        iou = pairwise_iou(all_gt[gt_id], all_det[det_id, :4]).astype(np.float32)
        big = np.int64(np.iinfo(np.int64).max)
        # Per GT: first det (lowest index) with the largest IoU.
        row_starts = np.flatnonzero(np.r_[True, gt_id[1:] != gt_id[:-1]])
        best_det_of_gt = _segment_first_argmax(iou, gt_id, row_starts, all_gt.shape[0], det_id, big)
        # Per det: first GT (lowest index) with the largest IoU.
        order = np.argsort(det_id, kind="stable")
        iou_c, det_c, gt_c = iou[order], det_id[order], gt_id[order]
        col_starts = np.flatnonzero(np.r_[True, det_c[1:] != det_c[:-1]])
        best_gt_of_det = _segment_first_argmax(iou_c, det_c, col_starts, num_dets, gt_c, big)
        survive = (
            (iou >= iou_thresh)
            & (best_gt_of_det[det_id] == gt_id)
            & (best_det_of_gt[gt_id] == det_id)
        )
        count_tp = int(np.count_nonzero(survive))
        y_true[det_id[survive]] = True

    if count_gt == 0:
        logger.warning("eval_detection: no ground-truth boxes (labeled_only=%s)", labeled_only)
        recall = 0.0
    else:
        recall = count_tp / count_gt
    ap = average_precision(y_true, all_det[:, 4]) * recall if num_dets else 0.0
    return {
        "recall": float(recall),
        "ap": float(ap),
        "num_gt": count_gt,
        "num_tp": count_tp,
        "num_dets": int(num_dets),
    }
