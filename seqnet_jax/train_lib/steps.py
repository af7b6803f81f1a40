"""The device stages of one training iteration and the loss/update step (design.md §1).

propose (jit) → host NMS + RoI sampling → first_stage (jit) → host RoI sampling
  → train_step (jit): all seven losses, gradients, clip, SGD, BN and OIM state updates.
"""

from __future__ import annotations

import functools
from typing import Dict

import jax
import jax.numpy as jnp
import optax

from seqnet_jax.modeling import losses as L
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
    """All seven (unweighted) losses and the updated mutable collections.

    Args:
      batch: ``images (B,H,W,3)``, ``image_sizes (B,2)``.
      rpn: sampled anchors ``indices (B,A_s)``, ``labels``, ``targets (B,A_s,4)``, ``valid``.
      s1, s2: sampled RoIs of the first/second stage: ``boxes (B,R,4)``, ``pids (B,R)``,
        ``targets (B,R,4)``, ``valid (B,R)``.
    """

    def fwd(m: SeqNet):
        feat = m.features(batch["images"], batch["image_sizes"], True)
        logits, deltas = m.rpn(feat)
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
        cls1, d1 = m.box_stage(feat, s1["boxes"], s1["valid"], True)
        prop_cls, prop_reg = L.fast_rcnn_losses(
            cls1.reshape(-1, 2),
            d1.reshape(-1, 8),
            s1["pids"].reshape(-1),
            s1["targets"].reshape(-1, 4),
            s1["valid"].reshape(-1),
        )
        d2, emb, nae = m.reid_stage(feat, s2["boxes"], s2["valid"], True)
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

    return model.apply(variables, method=fwd, mutable=["batch_stats", "oim_state"])


def train_step(
    model: SeqNet, tx: optax.GradientTransformation, weights, state: TrainState, batch, rpn, s1, s2
):
    """One SGD step. Returns the new state and metrics (each loss, total, grad norm).

    The frozen parameters (conv1, bn1 affine) enter the loss through ``stop_gradient``: their
    gradients are zeros, so XLA drops the backward pass through the stem (conv1, bn1, max pool),
    which the reference never computes either (``requires_grad=False`` on everything before
    layer1). ``grad_norm`` is the norm of the trainable gradients, the one that is clipped.
    """
    trainable = trainable_mask(state.params)

    def loss_fn(params):
        params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, trainable)
        variables = {
            "params": params,
            "batch_stats": state.batch_stats,
            "oim_state": state.oim_state,
        }
        losses, new_vars = compute_losses(model, variables, batch, rpn, s1, s2)
        total = sum(weights[k] * losses[k] for k in L.LOSS_NAMES)
        return total, (losses, new_vars)

    (total, (losses, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(losses)
    metrics["loss"] = total
    metrics["grad_norm"] = optax.global_norm(grads)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=new_vars["batch_stats"],
        oim_state=new_vars["oim_state"],
        opt_state=opt_state,
    )
    return new_state, metrics


def make_jitted_train_step(model, tx, weights, state_sharding=None, data_sharding=None):
    """``train_step`` jitted once, state donated, sharded over a ``('data',)`` mesh if given."""
    fn = functools.partial(train_step, model, tx, weights)
    if state_sharding is None:
        return jax.jit(fn, donate_argnums=(0,))
    return jax.jit(
        fn,
        donate_argnums=(0,),
        in_shardings=(state_sharding, data_sharding, data_sharding, data_sharding, data_sharding),
        out_shardings=(state_sharding, None),
    )
