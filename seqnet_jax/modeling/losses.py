"""Detection losses of SeqNet (§2.4, §3.3–§3.5), on padded arrays with validity masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LOSS_NAMES = (
    "loss_rpn_reg",
    "loss_rpn_cls",
    "loss_proposal_reg",
    "loss_proposal_cls",
    "loss_box_reg",
    "loss_box_cls",
    "loss_box_reid",
)


def _count(valid: Array) -> Array:
    return jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def smooth_l1(x: Array, beta: float = 1.0) -> Array:
    ax = jnp.abs(x)
    return jnp.where(ax < beta, 0.5 * ax * ax / beta, ax - 0.5 * beta)


def bce_with_logits(logits: Array, labels: Array) -> Array:
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def rpn_losses(logits: Array, deltas: Array, labels: Array, targets: Array, valid: Array):
    """RPN losses on the sampled anchors of the batch (torchvision 0.4).

    Args: logits (N,), deltas (N, 4) of the sampled anchors (any batch layout flattened), labels
    (N,) 1/0, targets (N, 4), valid (N,).
    Returns: (loss_rpn_cls = BCE mean over sampled anchors,
              loss_rpn_reg = plain L1 summed over positives ÷ number of sampled anchors).
    """
    n = _count(valid)
    cls = jnp.sum(jnp.where(valid, bce_with_logits(logits, labels), 0.0)) / n
    pos = valid & (labels > 0)
    # Mask before the loss, not after: a non-finite target in a non-positive row must not leak
    # NaN into the gradient (0 * nan).
    diff = jnp.where(pos[:, None], deltas - targets, 0.0)
    reg = jnp.sum(jnp.abs(diff)) / n
    return cls, reg


def fast_rcnn_losses(class_logits: Array, deltas: Array, pids: Array, targets: Array, valid: Array):
    """First stage: 2-way CE mean and smooth-L1 (β=1) on class-1 deltas of positives ÷ #sampled.

    class_logits (N, 2), deltas (N, 8), pids (N,) (0 = background), targets (N, 4), valid (N,).
    """
    n = _count(valid)
    fg = pids != 0
    logp = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
    nll = -jnp.where(fg, logp[:, 1], logp[:, 0])
    cls = jnp.sum(jnp.where(valid, nll, 0.0)) / n
    reg = box_reg_loss(deltas, pids, targets, valid)
    return cls, reg


def box_reg_loss(deltas: Array, pids: Array, targets: Array, valid: Array) -> Array:
    """Smooth-L1 (β=1) on the class-1 deltas ``deltas[:, 4:8]`` of positives, ÷ #sampled."""
    pos = valid & (pids != 0)
    d = deltas[:, 4:8].astype(jnp.float32)
    diff = jnp.where(pos[:, None], d - targets, 0.0)  # masked first: see rpn_losses
    return jnp.sum(smooth_l1(diff)) / _count(valid)


def nae_cls_loss(logits: Array, pids: Array, valid: Array) -> Array:
    """NAE person/background BCE, mean over all second-stage sampled RoIs."""
    labels = (pids != 0).astype(jnp.float32)
    return jnp.sum(jnp.where(valid, bce_with_logits(logits, labels), 0.0)) / _count(valid)
