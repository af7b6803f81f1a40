"""RPN head, the first-stage FastRCNNPredictor, the second-stage BBoxRegressor and the NAE."""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from seqnet_jax.modeling.layers import (
    BatchNorm,
    normal_001,
    torch_default_bias_init,
    torch_default_kernel_init,
)

Array = jax.Array


class RPNHead(nn.Module):
    """3×3 conv + ReLU, then 1×1 objectness logits and 1×1 box deltas (§2.4).

    ``feat (B, H, W, C)`` → ``(logits (B, H, W, A), deltas (B, H, W, A, 4))``; the delta channel
    index is ``a * 4 + k`` exactly as torchvision's ``(N, A*4, H, W)`` view.
    """

    num_anchors: int = 15

    @nn.compact
    def __call__(self, feat: Array) -> Tuple[Array, Array]:
        c = feat.shape[-1]
        dense = dict(
            kernel_init=normal_001, bias_init=nn.initializers.zeros, param_dtype=jnp.float32
        )
        t = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), dtype=feat.dtype, name="conv", **dense)(
            feat
        )
        t = nn.relu(t)
        logits = nn.Conv(self.num_anchors, (1, 1), dtype=feat.dtype, name="cls_logits", **dense)(t)
        deltas = nn.Conv(self.num_anchors * 4, (1, 1), dtype=feat.dtype, name="bbox_pred", **dense)(
            t
        )
        b, h, w, _ = deltas.shape
        deltas = deltas.reshape(b, h, w, self.num_anchors, 4)
        return logits.astype(jnp.float32), deltas.astype(jnp.float32)


class FastRCNNPredictor(nn.Module):
    """Linear 2-way classifier and class-specific box regression (§2.6).

    ``(R, C)`` → ``(scores (R, 2), deltas (R, 8))``.
    """

    num_classes: int = 2

    @nn.compact
    def __call__(self, x: Array) -> Tuple[Array, Array]:
        fan_in = x.shape[-1]
        kw = dict(kernel_init=torch_default_kernel_init, bias_init=torch_default_bias_init(fan_in))
        scores = nn.Dense(self.num_classes, name="cls_score", **kw)(x)
        deltas = nn.Dense(self.num_classes * 4, name="bbox_pred", **kw)(x)
        return scores, deltas


class BBoxRegressor(nn.Module):
    """Second-stage box regression: Linear(C→8) + BN neck (§2.7). ``(R, C) → (R, 8)``."""

    num_classes: int = 2
    bn_neck: bool = True

    @nn.compact
    def __call__(self, x: Array, train: bool, mask: Array | None = None) -> Array:
        d = nn.Dense(self.num_classes * 4, kernel_init=normal_001, name="bbox_pred")(x)
        if self.bn_neck:
            d = BatchNorm(scale_init=normal_001, name="bbox_pred_bn")(d, not train, mask)
        return d


class NormAwareEmbedding(nn.Module):
    """NAE (§2.7): project feat_res4/feat_res5 to 128+128, L2-normalise, norm → person logit.

    ``(feat_res4 (R, C4), feat_res5 (R, C5))`` → ``(embeddings (R, dim) unit norm, logits (R,))``.
    The norm is not detached: the person-classification loss trains the projections too.
    """

    dim: int = 256

    @nn.compact
    def __call__(
        self, feat_res4: Array, feat_res5: Array, train: bool, mask: Array | None = None
    ) -> Tuple[Array, Array]:
        half = self.dim // 2
        parts = []
        for name, f, d in (
            ("feat_res4", feat_res4, half),
            ("feat_res5", feat_res5, self.dim - half),
        ):
            p = nn.Dense(d, kernel_init=normal_001, name=f"proj_{name}")(f)
            p = BatchNorm(scale_init=normal_001, name=f"proj_{name}_bn")(p, not train, mask)
            parts.append(p)
        e = jnp.concatenate(parts, axis=-1)
        n = jnp.linalg.norm(e, axis=-1, keepdims=True)
        emb = e / jnp.maximum(n, 1e-12)
        logits = BatchNorm(name="rescaler")(n, not train, mask)[:, 0]
        return emb, logits
