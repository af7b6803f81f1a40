"""The device stages of one training iteration and the loss/update step (design.md §1).

propose_train (jit) → host NMS + RoI sampling → first_stage_train (jit) → host RoI sampling
  → staged_train_step (jit): all seven losses, gradients, clip, SGD, BN and OIM state updates.

The backbone and the box head run forward once per iteration, as in the reference: the stages
hand their VJPs to the train step in a device-resident ``cache``.
"""

from __future__ import annotations

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import optax

from seqnet_jax.modeling import losses as L
from seqnet_jax.modeling import seqnet
from seqnet_jax.modeling.seqnet import SeqNet
from seqnet_jax.train_lib.optimizer import trainable_mask
from seqnet_jax.train_lib.train_state import TrainState


def loss_weights(solver_cfg) -> Dict[str, float]:
    s = solver_cfg
    return {
        "loss_rpn_reg": s.lw_rpn_reg,
        "loss_rpn_cls": s.lw_rpn_cls,
        "loss_proposal_reg": s.lw_proposal_reg,
        "loss_proposal_cls": s.lw_proposal_cls,
        "loss_box_reg": s.lw_box_reg,
        "loss_box_cls": s.lw_box_cls,
        "loss_box_reid": s.lw_box_reid,
    }


def compute_losses(model: SeqNet, variables, batch, rpn, s1, s2):
    """All seven (unweighted) losses and the updated mutable collections, in one pass.

    This is the definition the staged step below must reproduce (tests compare the two).

    Args:
      batch: ``images (B,H,W,3)``, ``image_sizes (B,2)``.
      rpn: sampled anchors ``indices (B,A_s)``, ``labels``, ``targets (B,A_s,4)``, ``valid``.
      s1, s2: sampled RoIs of the first/second stage: ``boxes (B,R,4)``, ``pids (B,R)``,
        ``targets (B,R,4)``, ``valid (B,R)``.
    """

    canvas = seqnet.canvas_for(batch["image_sizes"], True)

    def fwd(m: SeqNet):
        feat = m.features(batch["images"], batch["image_sizes"], True, canvas)
        cls1, d1 = m.box_stage(feat, s1["boxes"], s1["valid"], True, canvas)
        return _head_losses(m, feat, canvas, cls1, d1, rpn, s1, s2)

    return model.apply(variables, method=fwd, mutable=["batch_stats", "oim_state"])


def _head_losses(m: SeqNet, feat, canvas, cls1, d1, rpn, s1, s2):
    """The seven losses given the backbone features and the first-stage outputs."""
    logits, deltas = m.rpn(feat, canvas)
    idx = rpn["indices"]
    sl = jnp.take_along_axis(logits, idx, axis=1).reshape(-1)
    sd = jnp.take_along_axis(deltas, idx[..., None], axis=1).reshape(-1, 4)
    rpn_cls, rpn_reg = L.rpn_losses(
        sl,
        sd,
        rpn["labels"].reshape(-1),
        rpn["targets"].reshape(-1, 4),
        rpn["valid"].reshape(-1),
    )
    prop_cls, prop_reg = L.fast_rcnn_losses(
        cls1.reshape(-1, 2),
        d1.reshape(-1, 8),
        s1["pids"].reshape(-1),
        s1["targets"].reshape(-1, 4),
        s1["valid"].reshape(-1),
    )
    d2, emb, nae = m.reid_stage(feat, s2["boxes"], s2["valid"], True, canvas)
    pids2, valid2 = s2["pids"].reshape(-1), s2["valid"].reshape(-1)
    box_reg = L.box_reg_loss(d2.reshape(-1, 8), pids2, s2["targets"].reshape(-1, 4), valid2)
    box_cls = L.nae_cls_loss(nae.reshape(-1), pids2, valid2)
    reid = m.oim(emb.reshape(-1, emb.shape[-1]), pids2, valid2, update=True)
    return {
        "loss_rpn_reg": rpn_reg,
        "loss_rpn_cls": rpn_cls,
        "loss_proposal_reg": prop_reg,
        "loss_proposal_cls": prop_cls,
        "loss_box_reg": box_reg,
        "loss_box_cls": box_cls,
        "loss_box_reid": reid,
    }


def _freeze(params):
    """The frozen conv1/bn1 behind ``stop_gradient``: their gradients are zeros, so XLA drops the
    backward pass through the stem (conv1, bn1, max pool), which the reference never computes
    either (``requires_grad=False`` on everything before layer1)."""
    trainable = trainable_mask(params)
    return jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)


def train_step(
    model: SeqNet, tx: optax.GradientTransformation, weights, state: TrainState, batch, rpn, s1, s2
):
    """One SGD step from scratch (one forward pass over everything). Returns the new state and
    metrics (each loss, total, grad norm). ``grad_norm`` is the norm of the trainable gradients,
    the one that is clipped. The Trainer runs the equivalent :func:`staged_train_step`."""

    def loss_fn(params):
        variables = {
            "params": _freeze(params),
            "batch_stats": state.batch_stats,
            "oim_state": state.oim_state,
        }
        losses, new_vars = compute_losses(model, variables, batch, rpn, s1, s2)
        total = sum(weights[k] * losses[k] for k in L.LOSS_NAMES)
        return total, (losses, new_vars)

    (total, (losses, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return _finish(tx, state, grads, total, losses, new_vars)


def _finish(tx, state: TrainState, grads, total, losses, new_vars):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = dict(losses)
    metrics["loss"] = total
    metrics["grad_norm"] = optax.global_norm(grads)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_vars["batch_stats"],
        oim_state=new_vars["oim_state"],
        opt_state=opt_state,
    )
    return new_state, metrics


# -- the staged iteration: every forward pass runs once ------------------------------------------
# The reference runs one forward pass per iteration: the RPN proposals, the first-stage boxes and
# the losses all come from the same backbone features and box-head outputs. The staged flow stops
# on the host twice (NMS, sampling), so the stages below return, next to their outputs, the VJP of
# what they computed (its residuals live on the device); the train step runs only the RPN head, the
# re-id head and the losses forward and backward and pulls the cotangents back through those
# VJPs. Batch-norm running statistics are threaded through the stages, each module updating them
# once.

# Parameter subtrees the first stage uses (``SeqNet.box_stage``).
BOX_STAGE_PARAMS = ("box_head", "faster_rcnn_predictor")


def propose_train(model: SeqNet, variables, images, image_sizes, *, pre_nms_top_n: int):
    """Training propose: ``seqnet.propose`` with train-mode BN, returning ``boxes, scores`` and a
    ``cache`` with ``feat``, the batch's reference ``canvas`` (``seqnet.canvas_for``), the
    backbone's VJP (w.r.t. ``params['backbone']``) and the batch statistics with the backbone's
    updated."""
    params = variables["params"]
    canvas = seqnet.canvas_for(image_sizes, True)

    def trunk(backbone):
        p = _freeze({**params, "backbone": backbone})
        v = {"params": p, "batch_stats": variables["batch_stats"]}
        feat, upd = model.apply(
            v, images, image_sizes, True, canvas, method=SeqNet.features, mutable=["batch_stats"]
        )
        return feat, upd["batch_stats"]

    feat, trunk_vjp, batch_stats = jax.vjp(trunk, params["backbone"], has_aux=True)
    logits, deltas = model.apply({"params": params}, feat, canvas, method=SeqNet.rpn)
    boxes, scores = seqnet.rpn_top_k(
        model, logits, deltas, image_sizes, feat.shape[1:3], pre_nms_top_n
    )
    cache = {"feat": feat, "canvas": canvas, "trunk_vjp": trunk_vjp, "batch_stats": batch_stats}
    return boxes, scores, cache


def first_stage_train(model: SeqNet, variables, cache, rois, roi_valid, image_sizes):
    """Training first stage on the sampled proposals: refined boxes for the second-stage sampler;
    ``cache`` gains the box-stage outputs, their VJP (w.r.t. its params and ``feat``) and the
    batch statistics with the box head's updated."""
    params = variables["params"]

    def box(sub, feat):
        p = {**params, **sub}
        v = {"params": p, "batch_stats": cache["batch_stats"]}
        out, upd = model.apply(
            v,
            feat,
            rois,
            roi_valid,
            True,
            cache["canvas"],
            method=SeqNet.box_stage,
            mutable=["batch_stats"],
        )
        return out, upd["batch_stats"]

    sub = {k: params[k] for k in BOX_STAGE_PARAMS}
    (cls1, d1), box_vjp, batch_stats = jax.vjp(box, sub, cache["feat"], has_aux=True)
    refined, _ = seqnet.first_stage_boxes(cls1, d1, rois, image_sizes)
    cache = {**cache, "cls1": cls1, "d1": d1, "box_vjp": box_vjp, "batch_stats": batch_stats}
    return refined, cache


def staged_train_step(
    model: SeqNet,
    tx: optax.GradientTransformation,
    weights,
    state: TrainState,
    rpn,
    s1,
    s2,
    cache,
):
    """One SGD step from the stages' ``cache``: same losses, gradients and state updates as
    :func:`train_step` on the same batch, without re-running the backbone or the box head."""

    def loss_fn(params, feat, cls1, d1):
        variables = {
            "params": _freeze(params),
            "batch_stats": cache["batch_stats"],
            "oim_state": state.oim_state,
        }
        losses, new_vars = model.apply(
            variables,
            method=lambda m: _head_losses(m, feat, cache["canvas"], cls1, d1, rpn, s1, s2),
            mutable=["batch_stats", "oim_state"],
        )
        total = sum(weights[k] * losses[k] for k in L.LOSS_NAMES)
        return total, (losses, new_vars)

    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1, 2, 3), has_aux=True)
    (total, (losses, new_vars)), (grads, g_feat, g_cls1, g_d1) = grad_fn(
        state.params, cache["feat"], cache["cls1"], cache["d1"]
    )
    g_box, g_feat_box = cache["box_vjp"]((g_cls1, g_d1))
    (g_backbone,) = cache["trunk_vjp"](g_feat + g_feat_box)
    grads = dict(grads)
    for k in BOX_STAGE_PARAMS:
        grads[k] = jax.tree.map(jnp.add, grads[k], g_box[k])
    grads["backbone"] = jax.tree.map(jnp.add, grads["backbone"], g_backbone)
    return _finish(tx, state, grads, total, losses, new_vars)


def make_jitted_train_step(model, tx, weights, state_sharding=None):
    """``staged_train_step`` jitted once, the state donated; the new state is
    replicated over the ``('data',)`` mesh when ``state_sharding`` is given (the inputs keep the
    shardings the stages gave them)."""
    fn = functools.partial(staged_train_step, model, tx, weights)
    if state_sharding is None:
        return jax.jit(fn, donate_argnums=(0,))
    return jax.jit(fn, donate_argnums=(0,), out_shardings=(state_sharding, None))
