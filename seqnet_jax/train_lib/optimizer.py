"""Torch-style SGD with the reference's frozen parameters and LR schedule (§4)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

# Parameters the reference never trains (requires_grad=False, §2.3).
FROZEN_PARAMS = (
    ("backbone", "conv1", "kernel"),
    ("backbone", "bn1", "scale"),
    ("backbone", "bn1", "bias"),
)


def trainable_mask(params) -> dict:
    """Same tree as ``params``: True for trained leaves, False for the frozen conv1/bn1 affine."""
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: k not in FROZEN_PARAMS for k in flat})


def lr_factor(step, steps_per_epoch: int, warmup_factor: float, milestones, gamma: float):
    """LR multiplier at global ``step`` (0-based): linear warm-up over epoch 0 and step decay.

    Epoch 0 iteration i uses ``warmup_factor * (1 - i/W) + i/W`` with ``W = steps_per_epoch - 1``
    (the reference's ``warmup_lr_scheduler``), 1 from iteration W on; epochs ≥ each milestone
    multiply by ``gamma``. Works on python ints and traced jnp scalars.
    """
    xp = jnp if isinstance(step, jax.Array) else np
    epoch = step // steps_per_epoch
    i = step % steps_per_epoch
    w = max(steps_per_epoch - 1, 1)
    alpha = xp.minimum(i / w, 1.0)
    warm = xp.where((epoch == 0) & (i < w), warmup_factor * (1 - alpha) + alpha, 1.0)
    decay = (
        gamma ** sum(xp.asarray(epoch >= m, xp.float32) for m in milestones) if milestones else 1.0
    )
    return warm * decay


def make_schedule(solver_cfg, steps_per_epoch: int) -> Callable:
    def schedule(count):
        return solver_cfg.base_lr * lr_factor(
            count,
            steps_per_epoch,
            solver_cfg.warmup_factor,
            tuple(solver_cfg.lr_decay_milestones),
            solver_cfg.gamma,
        )

    return schedule


def make_optimizer(solver_cfg, params, steps_per_epoch: int) -> optax.GradientTransformation:
    """clip(global norm over trainable grads) → +wd·p → momentum → ×lr, frozen leaves untouched.

    The same order as ``clip_grad_norm_`` followed by ``torch.optim.SGD(weight_decay=...)``.
    """
    chain = []
    if solver_cfg.clip_gradients > 0:
        chain.append(optax.clip_by_global_norm(solver_cfg.clip_gradients))
    chain += [
        optax.add_decayed_weights(solver_cfg.weight_decay),
        optax.sgd(make_schedule(solver_cfg, steps_per_epoch), momentum=solver_cfg.sgd_momentum),
    ]
    labels = jax.tree.map(lambda t: "train" if t else "frozen", trainable_mask(params))
    return optax.multi_transform(
        {"train": optax.chain(*chain), "frozen": optax.set_to_zero()}, labels
    )
