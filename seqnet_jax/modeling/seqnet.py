"""The SeqNet model and the jit-able stages that the training and inference flows call.

``SeqNet`` owns every parameter; its methods are the pieces of the sequential flow (design.md §1):

    features   images → feat_res4                     (backbone, BN train/eval)
    rpn        feat_res4 → objectness logits, deltas   (per anchor)
    box_stage  RoIs → first-stage class logits, deltas (box_head res5 + FastRCNNPredictor)
    reid_stage RoIs → second-stage deltas, embeddings, NAE logits (reid_head res5 + regressor + NAE)
    oim        embeddings, pids → OIM loss (and the LUT/CQ update)

The module-level functions below wrap them into the stages used between the host steps.

Padding: every method takes the reference's padded ``canvas (B, 2)`` (``ops/canvas.py``): the
batch's largest image rounded up to 32 in training, each image's own at test time (the
reference's test batches hold one image). The stage functions compute it from ``image_sizes``
(:func:`canvas_for`), so any padding bucket at least that large gives the reference's numbers.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from seqnet_jax.modeling.backbone import Backbone, Res5Head, check_depth
from seqnet_jax.modeling.heads import (
    BBoxRegressor,
    FastRCNNPredictor,
    NormAwareEmbedding,
    RPNHead,
)
from seqnet_jax.modeling.oim import OIM
from seqnet_jax.ops import anchors as anchor_ops
from seqnet_jax.ops import canvas as canvas_ops
from seqnet_jax.ops.box_ops import BoxCoder, clip_boxes
from seqnet_jax.ops.roi_align import roi_align_batched, roi_align_matmul

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_STRIDE = 16
RPN_CODER = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(1000.0 / 16))
ROI_CODER = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=math.log(1000.0 / 16))


class SeqNet(nn.Module):
    """SeqNet (C4 Faster R-CNN + NAE + OIM, two separate res5 heads). NHWC, boxes xyxy."""

    depth: int = 50
    width: int = 64
    anchor_sizes: Tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
    emb_dim: int = 256
    num_pids: int = 5532
    cq_size: int = 5000
    oim_momentum: float = 0.5
    oim_scalar: float = 30.0
    bn_neck: bool = True
    roi_size: int = 14
    sampling_ratio: int = 2
    roi_align_impl: str = "gather"  # or "matmul": same values, faster on CPU, more memory
    dtype: Any = jnp.float32

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.aspect_ratios)

    def setup(self):
        check_depth(self.depth)
        self.backbone = Backbone(self.depth, self.width, dtype=self.dtype)
        self.rpn_head = RPNHead(self.num_anchors)
        self.box_head = Res5Head(self.depth, self.width, dtype=self.dtype)
        self.reid_head = Res5Head(self.depth, self.width, dtype=self.dtype)
        self.faster_rcnn_predictor = FastRCNNPredictor(2)
        self.box_predictor = BBoxRegressor(2, bn_neck=self.bn_neck)
        self.embedding_head = NormAwareEmbedding(self.emb_dim)
        self.reid_loss = OIM(
            self.num_pids, self.cq_size, self.emb_dim, self.oim_momentum, self.oim_scalar
        )

    # -- pieces --------------------------------------------------------------------------------
    def features(
        self, images: Array, image_sizes: Array, train: bool, canvas: Array | None = None
    ) -> Array:
        """``images (B, H, W, 3)`` RGB in 0..255, zero padded → ``feat_res4 (B, H/16, W/16, C4)``.

        Normalises with the ImageNet mean/std and re-zeroes the padding (in normalised space, as
        the reference's batching does) from ``image_sizes (B, 2)`` = unpadded (h, w). ``canvas``
        defaults to :func:`canvas_for` ``(image_sizes, train)``.
        """
        if canvas is None:
            canvas = canvas_for(image_sizes, train)
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32) * 255.0
        std = jnp.asarray(IMAGENET_STD, jnp.float32) * 255.0
        x = (images.astype(jnp.float32) - mean) / std
        h, w = images.shape[1], images.shape[2]
        inside = (jnp.arange(h)[None, :, None] < image_sizes[:, 0, None, None]) & (
            jnp.arange(w)[None, None, :] < image_sizes[:, 1, None, None]
        )
        x = jnp.where(inside[..., None], x, 0.0)
        return self.backbone(x, train, canvas)

    def rpn(self, feat: Array, canvas: Array | None = None) -> Tuple[Array, Array]:
        """``feat`` → ``(logits (B, H*W*A), deltas (B, H*W*A, 4))`` in (y, x, anchor) order.

        With ``canvas``, the 3×3 conv sees zeros outside it (the reference's zero padding) and
        the logits of anchors outside the canvas grid (which the reference does not have) are
        ``-inf``.
        """
        b, fh, fw = feat.shape[:3]
        if canvas is not None:
            inside = canvas_ops.region_mask(canvas, fh, fw, FEATURE_STRIDE)
            feat = jnp.where(inside[..., None], feat, jnp.zeros((), feat.dtype))
        logits, deltas = self.rpn_head(feat)
        logits, deltas = logits.reshape(b, -1), deltas.reshape(b, -1, 4)
        if canvas is not None:
            keep = canvas_ops.anchors_inside(canvas, fh, fw, self.num_anchors, FEATURE_STRIDE)
            logits = jnp.where(keep, logits, -jnp.inf)
        return logits, deltas

    def pool(self, feat: Array, rois: Array, canvas: Array | None = None) -> Array:
        """Legacy RoIAlign 14×14 at 1/16: ``(B, R, 4)`` → ``(B*R, 14, 14, C4)``, each image's
        feature map taken as its canvas's (``canvas / 16``) when ``canvas`` is given."""
        b, r = rois.shape[:2]
        fn = roi_align_matmul if self.roi_align_impl == "matmul" else roi_align_batched
        extents = None if canvas is None else canvas // FEATURE_STRIDE
        x = fn(
            feat,
            jax.lax.stop_gradient(rois),
            self.roi_size,
            1.0 / FEATURE_STRIDE,
            self.sampling_ratio,
            extents,
        )
        return x.reshape((b * r,) + x.shape[2:])

    def box_stage(self, feat: Array, rois: Array, roi_valid: Array, train: bool, canvas=None):
        """First stage. ``rois (B, R, 4)`` → ``(class_logits (B, R, 2), deltas (B, R, 8))``."""
        b, r = rois.shape[:2]
        mask = roi_valid.reshape(-1)
        _, res5 = self.box_head(self.pool(feat, rois, canvas), train, mask)
        logits, deltas = self.faster_rcnn_predictor(res5)
        return logits.reshape(b, r, -1), deltas.reshape(b, r, -1)

    def reid_stage(self, feat: Array, rois: Array, roi_valid: Array, train: bool, canvas=None):
        """Second stage. ``rois (B, R, 4)`` →
        ``(deltas (B, R, 8), emb (B, R, D), nae_logits (B, R))``."""
        b, r = rois.shape[:2]
        mask = roi_valid.reshape(-1)
        res4, res5 = self.reid_head(self.pool(feat, rois, canvas), train, mask)
        deltas = self.box_predictor(res5, train, mask)
        emb, logits = self.embedding_head(res4, res5, train, mask)
        return deltas.reshape(b, r, -1), emb.reshape(b, r, -1), logits.reshape(b, r)

    def embed(self, feat: Array, rois: Array, roi_valid: Array, canvas=None) -> Array:
        """Query/GT-box embeddings (§2.10), eval mode: ``(B, R, 4)`` → unit ``(B, R, D)``."""
        b, r = rois.shape[:2]
        res4, res5 = self.reid_head(self.pool(feat, rois, canvas), False, None)
        emb, _ = self.embedding_head(res4, res5, False, None)
        return emb.reshape(b, r, -1)

    def oim(self, emb: Array, pids: Array, valid: Array, update: bool = True) -> Array:
        return self.reid_loss(emb, pids, valid, update)

    def __call__(self, images, image_sizes, rois, roi_valid, pids, train: bool = False):
        """Touches every submodule (used by ``init``)."""
        canvas = canvas_for(image_sizes, train)
        feat = self.features(images, image_sizes, train, canvas)
        self.rpn(feat, canvas)
        self.box_stage(feat, rois, roi_valid, train, canvas)
        _, emb, _ = self.reid_stage(feat, rois, roi_valid, train, canvas)
        d = emb.shape[-1]
        return self.oim(emb.reshape(-1, d), pids.reshape(-1), roi_valid.reshape(-1), update=False)


def canvas_for(image_sizes: Array, train: bool) -> Array:
    """The reference's padded canvas ``(B, 2)`` for a batch (§2.2 item 4): in training the
    batch's largest image rounded up to 32, at test time each image's own (its batches hold one
    image). See ``ops/canvas.py``."""
    return canvas_ops.canvas_sizes(image_sizes, per_image=not train)


def build_model(model_cfg, num_pids: int) -> SeqNet:
    """SeqNet from the ``config.model`` section (see configs/default.py)."""
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(model_cfg.compute_dtype)
    if dtype is None:
        raise ValueError(
            f"model.compute_dtype must be 'float32' or 'bfloat16', got {model_cfg.compute_dtype!r}"
        )
    if model_cfg.roi_head.roi_align_impl not in ("gather", "matmul"):
        raise ValueError(
            "model.roi_head.roi_align_impl must be 'gather' or 'matmul', got "
            f"{model_cfg.roi_head.roi_align_impl!r}"
        )
    return SeqNet(
        depth=model_cfg.backbone.depth,
        width=model_cfg.backbone.width,
        anchor_sizes=tuple(model_cfg.rpn.anchor_sizes),
        aspect_ratios=tuple(model_cfg.rpn.aspect_ratios),
        emb_dim=model_cfg.emb_dim,
        num_pids=num_pids,
        cq_size=model_cfg.oim.cq_size,
        oim_momentum=model_cfg.oim.momentum,
        oim_scalar=model_cfg.oim.scalar,
        bn_neck=model_cfg.roi_head.bn_neck,
        roi_size=model_cfg.roi_head.pooled_size,
        roi_align_impl=model_cfg.roi_head.roi_align_impl,
        dtype=dtype,
    )


def init_variables(model: SeqNet, rng: Array, image_hw: Tuple[int, int] = (64, 64)) -> Dict:
    """Random initial variables: ``{'params', 'batch_stats', 'oim_state'}``."""
    h, w = image_hw
    images = jnp.zeros((1, h, w, 3), jnp.float32)
    sizes = jnp.asarray([[h, w]], jnp.int32)
    rois = jnp.asarray([[[0.0, 0.0, w / 2, h / 2]]], jnp.float32)
    valid = jnp.ones((1, 1), bool)
    pids = jnp.ones((1, 1), jnp.int32)
    init = jax.jit(functools.partial(model.init, train=False))  # jitted: ~10x faster than eager
    return dict(init(rng, images, sizes, rois, valid, pids))


# -- anchors -----------------------------------------------------------------------------------
def anchors_for(model: SeqNet, feat_h: int, feat_w: int) -> np.ndarray:
    """All anchors of a ``feat_h × feat_w`` map, ``(feat_h*feat_w*A, 4)``, (y, x, a) order."""
    cell = anchor_ops.cell_anchors(model.anchor_sizes, model.aspect_ratios)
    return anchor_ops.grid_anchors(feat_h, feat_w, FEATURE_STRIDE, cell)


# -- stages (pure functions of (model, variables, arrays); jitted by the callers) --------------
def propose(model: SeqNet, variables, images, image_sizes, *, pre_nms_top_n: int):
    """Eval backbone + RPN + top-k before NMS (on device); training uses
    ``train_lib.steps.propose_train``.

    Returns ``feat (B, h, w, C4)``, ``boxes (B, K, 4)`` decoded and clipped to the unpadded image,
    ``scores (B, K)`` raw objectness logits sorted descending, K = min(pre_nms_top_n, #anchors).
    """

    canvas = canvas_for(image_sizes, False)

    def fn(m):
        feat = m.features(images, image_sizes, False, canvas)
        logits, deltas = m.rpn(feat, canvas)
        return feat, logits, deltas

    feat, logits, deltas = model.apply(variables, method=fn)
    boxes, scores = rpn_top_k(model, logits, deltas, image_sizes, feat.shape[1:3], pre_nms_top_n)
    return feat, boxes, scores


def rpn_top_k(model: SeqNet, logits, deltas, image_sizes, feat_hw, pre_nms_top_n: int):
    """The ``pre_nms_top_n`` best anchors per image: boxes decoded and clipped, raw logits.

    Anchors outside the reference canvas have logit ``-inf`` (``SeqNet.rpn``): they come last,
    and when the canvas has fewer than ``pre_nms_top_n`` anchors (the reference then takes them
    all) the surplus entries keep ``-inf``, which the host NMS treats as absent."""
    anchors = jnp.asarray(anchors_for(model, feat_hw[0], feat_hw[1]))
    k = min(pre_nms_top_n, logits.shape[1])
    scores, idx = jax.lax.top_k(jax.lax.stop_gradient(logits), k)
    d = jnp.take_along_axis(deltas, idx[..., None], axis=1)
    boxes = RPN_CODER.decode(jax.lax.stop_gradient(d), anchors[idx])
    boxes = clip_boxes(boxes, image_sizes[:, 0, None], image_sizes[:, 1, None])
    return boxes, scores


def first_stage(model: SeqNet, variables, feat, rois, roi_valid, image_sizes):
    """Eval first-stage boxes and scores: class-1 boxes decoded w.r.t. ``rois`` with (10,10,5,5),
    clipped; ``scores`` = softmax person probability. ``(B, R, 4)`` → ``(B, R, 4), (B, R)``."""
    canvas = canvas_for(image_sizes, False)
    logits, deltas = model.apply(
        variables, feat, rois, roi_valid, False, canvas, method=SeqNet.box_stage
    )
    return first_stage_boxes(logits, deltas, rois, image_sizes)


def first_stage_boxes(logits, deltas, rois, image_sizes):
    """Box-stage outputs → (class-1 boxes decoded w.r.t. ``rois`` and clipped, person scores)."""
    boxes = ROI_CODER.decode(deltas[..., 4:8], rois)
    boxes = clip_boxes(boxes, image_sizes[:, 0, None], image_sizes[:, 1, None])
    scores = jax.nn.softmax(logits, axis=-1)[..., 1]
    return jax.lax.stop_gradient(boxes), jax.lax.stop_gradient(scores)


def second_stage(model: SeqNet, variables, feat, rois, roi_valid, image_sizes):
    """Eval second stage (§2.9 step 3–4): refined boxes (decoded w.r.t. ``rois``, clipped) and
    unit embeddings pooled from ``rois``. ``(B, R, 4)`` → ``(B, R, 4), (B, R, D)``."""

    canvas = canvas_for(image_sizes, False)

    def fn(m):
        return m.reid_stage(feat, rois, roi_valid, False, canvas)

    deltas, emb, _ = model.apply(variables, method=fn)
    boxes = ROI_CODER.decode(deltas[..., 4:8], rois)
    boxes = clip_boxes(boxes, image_sizes[:, 0, None], image_sizes[:, 1, None])
    return boxes, emb


def embed_boxes(model: SeqNet, variables, images, image_sizes, boxes, box_valid):
    """Embeddings of given boxes (queries, GT boxes), eval mode: ``(B, K, 4)`` → ``(B, K, D)``."""

    canvas = canvas_for(image_sizes, False)

    def fn(m):
        feat = m.features(images, image_sizes, False, canvas)
        return m.embed(feat, boxes, box_valid, canvas)

    return model.apply(variables, method=fn)
