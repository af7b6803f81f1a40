"""Gallery detection, query embedding and query-as-gallery passes (§2.9, §2.10).

Every device stage is a jitted function of ``(variables, arrays)``; the numpy stages in
``seqnet_jax.host.postprocess`` run between them. Shapes stay static: images come padded to a
size bucket, proposals are padded to ``post_nms_topn_test`` and the second stage's boxes to one of
``stage2_buckets``, so the number of compilations is bounded by (#image buckets × #box buckets).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import defaultdict
from typing import Dict, List, Optional

import jax
import numpy as np

from seqnet_jax.host import postprocess as post
from seqnet_jax.modeling import seqnet


@dataclasses.dataclass
class Detections:
    """Detections of one image in ORIGINAL image coordinates."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32 first-stage (FCS) scores
    embeddings: np.ndarray  # (N, D) float32; CWS-scaled for gallery detections


def _to_original(boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Resized → original coordinates; ``scale = (sy, sx)`` = resized / original."""
    sy, sx = float(scale[0]), float(scale[1])
    return (boxes / np.asarray([sx, sy, sx, sy], np.float32)).astype(np.float32)


class SeqNetInference:
    """Runs SeqNet inference on padded batches from ``seqnet_jax.data.pipeline``.

    Args:
      model: a ``SeqNet``; variables: ``{'params', 'batch_stats', ...}``; model_cfg: config.model.
    """

    def __init__(self, model: seqnet.SeqNet, variables, model_cfg):
        self.model = model
        self.variables = {k: variables[k] for k in ("params", "batch_stats")}
        self.cfg = model_cfg
        rh = model_cfg.roi_head
        self.stage2_buckets = tuple(rh.stage2_buckets)
        self._propose = jax.jit(
            functools.partial(seqnet.propose, model, pre_nms_top_n=model_cfg.rpn.pre_nms_topn_test)
        )
        self._first = jax.jit(functools.partial(seqnet.first_stage, model))
        self._second = jax.jit(functools.partial(seqnet.second_stage, model))
        self._embed = jax.jit(functools.partial(seqnet.embed_boxes, model))
        self.timings: Dict[str, List[float]] = defaultdict(list)

    def num_compilations(self) -> int:
        fns = (self._propose, self._first, self._second, self._embed)
        return int(sum(f._cache_size() for f in fns))

    def _tic(self, name: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[name].append(t - t0)
        return t

    def detect(
        self,
        batch: dict,
        query_boxes: Optional[np.ndarray] = None,
        cws: Optional[bool] = None,
    ) -> List[Detections]:
        """Detect and embed every person of each valid image of ``batch``.

        ``query_boxes (B, 4)`` in resized coordinates switches to the query-as-gallery pass: CWS
        off and the given box forced in first with score 1 (§2.10). ``cws``: scale the gallery
        embeddings by the scores (default: on for gallery passes, off for query-as-gallery).
        """
        if cws is None:
            cws = query_boxes is None
        rh, rpn = self.cfg.roi_head, self.cfg.rpn
        t = time.perf_counter()
        images, sizes = batch["images"], batch["image_sizes"]
        feat, boxes, scores = self._propose(self.variables, images, sizes)
        boxes, scores = jax.device_get((boxes, scores))
        t = self._tic("device_propose", t)
        props, pvalid = post.rpn_proposals(boxes, scores, rpn.nms_thresh, rpn.post_nms_topn_test)
        t = self._tic("host_rpn_nms", t)
        b1, s1 = jax.device_get(self._first(self.variables, feat, props, pvalid, sizes))
        t = self._tic("device_stage1", t)
        kept = post.stage1_detections(
            b1, s1, pvalid, rh.score_thresh_test, rh.nms_thresh_test, rh.detections_per_image_test
        )
        b = len(kept)
        n_max = max([len(k) for k in kept] + [0]) + (1 if query_boxes is not None else 0)
        nb = post.pad_to_bucket(max(n_max, 1), self.stage2_buckets)
        rois = np.zeros((b, nb, 4), np.float32)
        rvalid = np.zeros((b, nb), bool)
        for i, k in enumerate(kept):
            k = k[: nb - (1 if query_boxes is not None else 0)]
            kept[i] = k
            rois[i, : len(k)] = b1[i, k]
            rvalid[i, : len(k)] = True
            if query_boxes is not None:
                rois[i, len(k)] = query_boxes[i]
                rvalid[i, len(k)] = True
        t = self._tic("host_stage1_nms", t)
        out = []
        if n_max == 0:
            emb_dim = self.model.emb_dim
            for _ in range(b):
                out.append(
                    Detections(
                        np.zeros((0, 4), np.float32),
                        np.zeros((0,), np.float32),
                        np.zeros((0, emb_dim), np.float32),
                    )
                )
            return out
        b2, e2 = jax.device_get(self._second(self.variables, feat, rois, rvalid, sizes))
        t = self._tic("device_stage2", t)
        for i, k in enumerate(kept):
            n = len(k)
            forced_box = forced_emb = None
            if query_boxes is not None:
                forced_box, forced_emb = query_boxes[i], e2[i, n]
            bx, sc, em = post.stage2_detections(
                b2[i, :n],
                s1[i, k],
                e2[i, :n],
                rh.nms_thresh_test_2,
                rh.detections_per_image_test,
                cws=cws,
                forced_box=forced_box,
                forced_embedding=forced_emb,
            )
            out.append(
                Detections(
                    _to_original(bx, batch["scales"][i]),
                    sc.astype(np.float32),
                    em.astype(np.float32),
                )
            )
        self._tic("host_stage2_nms", t)
        return out

    def embed(self, batch: dict, boxes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Unit embeddings of given boxes (resized coordinates): ``(B, K, 4)`` → ``(B, K, D)``."""
        t = time.perf_counter()
        e = jax.device_get(
            self._embed(self.variables, batch["images"], batch["image_sizes"], boxes, valid)
        )
        self._tic("device_embed", t)
        return np.asarray(e, np.float32)
