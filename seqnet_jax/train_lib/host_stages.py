"""Host (numpy) stages of a training iteration: anchor targets, proposal NMS, RoI sampling.

Each takes and returns fixed-shape padded arrays with a ``valid`` mask so the next jitted call
sees static shapes. Randomness: one ``np.random.Generator`` per (seed, step, stage, image), so a
resumed run samples exactly as the uninterrupted one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional

import numpy as np

from seqnet_jax.host import postprocess as post
from seqnet_jax.host.nms import process_pool
from seqnet_jax.host.sampling import _stack, sample_roi_targets, sample_rpn_targets
from seqnet_jax.ops import anchors as anchor_ops
from seqnet_jax.ops import canvas as canvas_ops

FEATURE_STRIDE = 16  # feat_res4 (the RPN's single level)

_RPN_TAG, _STAGE1_TAG, _STAGE2_TAG = 11, 12, 13


def _rng(seed: int, step: int, tag: int, image: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step), tag, int(image)])


def _row(batch: dict, i: int) -> int:
    """Local row ``i``'s position in the global batch (``batch['rows']``, several processes):
    the sampling streams are per global row, so N processes sample exactly as one."""
    rows = batch.get("rows")
    return i if rows is None else int(rows[i])


def _finite_targets(targets: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Regression targets only matter for positives; zero the rest (degenerate boxes give
    inf/NaN encodings there) and fail loudly if a positive's target is not finite."""
    targets = np.where(positive[..., None], targets, 0.0).astype(np.float32)
    if not np.isfinite(targets).all():
        raise FloatingPointError("non-finite box regression target for a positive sample")
    return targets


class HostStages:
    """The per-iteration host work, images processed in parallel threads."""

    def __init__(self, model_cfg, seed: int, num_threads: int = 4):
        self.cfg = model_cfg
        self.seed = seed
        self.pool = ThreadPoolExecutor(max(1, num_threads)) if num_threads > 1 else None
        n = int(model_cfg.rpn.nms_processes)
        if n < 0:
            raise ValueError(f"model.rpn.nms_processes must be >= 0, got {n}")
        self.nms_pool = process_pool(n) if n > 0 else None
        self._anchors: Dict[tuple, np.ndarray] = {}

    def _map(self, fn, n):
        if self.pool is None or n == 1:
            return [fn(i) for i in range(n)]
        return list(self.pool.map(fn, range(n)))

    def canvas_anchors(self, batch: dict) -> np.ndarray:
        """The reference's anchors for this training batch: the grid of its canvas (the batch's
        largest image rounded up to 32, §2.2), ``(hc * wc * A, 4)`` in (y, x, anchor) order."""
        hc, wc = self.canvas_feat_hw(batch)
        key = (hc, wc)
        if key not in self._anchors:
            r = self.cfg.rpn
            cell = anchor_ops.cell_anchors(tuple(r.anchor_sizes), tuple(r.aspect_ratios))
            self._anchors[key] = anchor_ops.grid_anchors(hc, wc, FEATURE_STRIDE, cell)
        return self._anchors[key]

    @staticmethod
    def canvas_feat_hw(batch: dict) -> tuple:
        # the canvas of the GLOBAL batch (``global_image_sizes``: every process's rows)
        sizes = batch.get("global_image_sizes", batch["image_sizes"])
        c = canvas_ops.canvas_sizes(sizes, per_image=False, xp=np)[0]
        return int(c[0]) // FEATURE_STRIDE, int(c[1]) // FEATURE_STRIDE

    def rpn_targets(self, batch: dict, step: int, feat_hw: tuple) -> Dict[str, np.ndarray]:
        """Sampled anchors per image: ``indices (B, S)`` into the ``feat_hw`` (bucket) grid's
        anchors, ``labels``, ``targets (B, S, 4)``, ``valid``; S = model.rpn.batch_size_train.

        Matching and sampling run over the reference's anchor set (the canvas grid, see
        :meth:`canvas_anchors`), in its order; the indices are then mapped into the bucket grid.
        """
        r = self.cfg.rpn
        anchors = self.canvas_anchors(batch)
        hc, wc = self.canvas_feat_hw(batch)
        if hc > feat_hw[0] or wc > feat_hw[1]:
            raise ValueError(f"canvas grid {hc}x{wc} larger than the feature map {feat_hw}")

        def one(i):
            return sample_rpn_targets(
                anchors,
                batch["boxes"][i],
                batch["box_valid"][i],
                _rng(self.seed, step, _RPN_TAG, _row(batch, i)),
                batch_size=r.batch_size_train,
                positive_fraction=r.pos_frac_train,
                high=r.pos_thresh_train,
                low=r.neg_thresh_train,
            )

        out = _stack(self._map(one, batch["boxes"].shape[0]))
        num_anchors = len(r.anchor_sizes) * len(r.aspect_ratios)
        out["indices"] = canvas_ops.anchor_index_to_grid(
            out["indices"], wc, int(feat_hw[1]), num_anchors
        ).astype(np.int32)
        out["targets"] = _finite_targets(out["targets"], out["valid"] & (out["labels"] > 0))
        return out

    def proposals(self, boxes: np.ndarray, scores: np.ndarray):
        """NMS 0.7 on the device top-k → ``(proposals (B, P, 4), valid (B, P))``."""
        r = self.cfg.rpn
        return post.rpn_proposals(
            boxes, scores, r.nms_thresh, r.post_nms_topn_train, executor=self.nms_pool
        )

    def roi_targets(
        self, boxes: np.ndarray, valid: np.ndarray, batch: dict, step: int, stage: int
    ) -> Dict[str, np.ndarray]:
        """GT appended, matched at 0.5 and sampled (§2.8): ``boxes (B, R, 4)``, ``pids``,
        ``targets``, ``valid``; R = model.roi_head.batch_size_train."""
        h = self.cfg.roi_head
        tag = _STAGE1_TAG if stage == 1 else _STAGE2_TAG

        def one(i):
            return sample_roi_targets(
                boxes[i],
                valid[i],
                batch["boxes"][i],
                batch["pids"][i],
                batch["box_valid"][i],
                _rng(self.seed, step, tag, _row(batch, i)),
                batch_size=h.batch_size_train,
                positive_fraction=h.pos_frac_train,
                fg_iou=h.pos_thresh_train,
                bg_iou=h.neg_thresh_train,
            )

        out = _stack(self._map(one, boxes.shape[0]))
        out["targets"] = _finite_targets(out["targets"], out["valid"] & (out["pids"] != 0))
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
        if self.nms_pool is not None:
            self.nms_pool.shutdown()


def check_pids(batch: dict, num_pids: int, where: Optional[str] = None) -> None:
    """Labeled pids must be 1..num_pids (the OIM lookup table rows)."""
    pids = batch["pids"][batch["box_valid"]]
    bad = pids[(pids > num_pids) | (pids == 0) | (pids < -1)]
    if bad.size:
        raise ValueError(
            f"person ids {sorted(set(bad.tolist()))[:10]} {where or ''} are outside 1..{num_pids} "
            f"(labeled) / -1 (unlabeled); set model.oim.lut_size or fix the dataset's id mapping"
        )
