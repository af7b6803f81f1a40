"""Online Instance Matching loss with its lookup table and circular queue (§3.2).

The lookup table (LUT, one row per labeled training identity), the circular queue (CQ, features of
unlabeled people) and the queue pointer live in the ``oim_state`` variable collection, carried in
the jitted train state. The loss uses the buffers as they were *before* the step; the updates are
written to the collection afterwards, in the reference's sequential order.
"""

from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def oim_logits(x: Array, lut: Array, cq: Array, scalar: float) -> Array:
    """``x (R, D)`` → ``(R, L + Q)`` logits ``[x·LUTᵀ, x·CQᵀ] · scalar`` (buffers are constants)."""
    table = jax.lax.stop_gradient(jnp.concatenate([lut, cq], axis=0))
    return scalar * (x.astype(jnp.float32) @ table.T)


def oim_cross_entropy(logits: Array, pids: Array, valid: Array) -> Array:
    """Mean CE over labeled rows (pid ≥ 1, target column pid − 1); 0 when there is none.

    Unlabeled (pid −1), background (0) and invalid rows contribute nothing, which is torch 1.2's
    ``ignore_index`` behaviour; unlike newer torch an all-ignored batch gives 0, not NaN.
    """
    labeled = valid & (pids >= 1)
    target = jnp.where(labeled, pids - 1, 0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
    count = jnp.sum(labeled)
    return jnp.sum(jnp.where(labeled, nll, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)


def oim_update(
    lut: Array, cq: Array, header: Array, x: Array, pids: Array, valid: Array, momentum: float
) -> Tuple[Array, Array, Array]:
    """Reference update, in row order (§3.2 item 4).

    Labeled rows: ``LUT[y] ← normalise(m·LUT[y] + (1−m)·x)`` one after another (duplicates chain).
    Unlabeled rows: written to the queue at ``header, header+1, …`` (mod Q), header advanced.
    Background and invalid rows are skipped.
    """
    x = jax.lax.stop_gradient(x).astype(jnp.float32)
    labeled = valid & (pids >= 1)
    unlabeled = valid & (pids < 0)

    def body(i, table):
        y = jnp.where(labeled[i], pids[i] - 1, 0)
        row = table[y]
        new = momentum * row + (1.0 - momentum) * x[i]
        new = new / jnp.maximum(jnp.linalg.norm(new), 1e-12)
        return table.at[y].set(jnp.where(labeled[i], new, row))

    lut = jax.lax.fori_loop(0, x.shape[0], body, lut)

    q = cq.shape[0]
    rank = jnp.cumsum(unlabeled) - 1  # position among this batch's unlabeled rows
    n_unl = jnp.sum(unlabeled)
    # With more than Q unlabeled rows only the last Q survive the wrap-around; drop the others so
    # the scatter has unique indices (the sequential result).
    keep = unlabeled & (rank >= n_unl - q)
    pos = jnp.where(keep, (header + rank) % q, q)  # q = out of bounds → dropped
    cq = cq.at[pos].set(x, mode="drop")
    header = ((header + n_unl) % q).astype(header.dtype)
    return lut, cq, header


class OIM(nn.Module):
    """OIM loss module. ``(x (R, D), pids (R,), valid (R,))`` → scalar loss.

    With ``update=True`` (and the ``oim_state`` collection mutable) the buffers are updated after
    the loss is computed.
    """

    num_pids: int
    cq_size: int
    dim: int = 256
    momentum: float = 0.5
    scalar: float = 30.0

    @nn.compact
    def __call__(self, x: Array, pids: Array, valid: Array, update: bool = True) -> Array:
        if self.num_pids < 1:
            raise ValueError(f"model.oim.num_pids must be >= 1, got {self.num_pids}")
        lut = self.variable("oim_state", "lut", jnp.zeros, (self.num_pids, self.dim), jnp.float32)
        cq = self.variable("oim_state", "cq", jnp.zeros, (self.cq_size, self.dim), jnp.float32)
        header = self.variable("oim_state", "header", lambda: jnp.zeros((), jnp.int32))
        too_big = valid & (pids > self.num_pids)
        logits = oim_logits(x, lut.value, cq.value, self.scalar)
        loss = oim_cross_entropy(logits, jnp.where(too_big, 0, pids), valid & ~too_big)
        if update and not self.is_initializing():
            lut.value, cq.value, header.value = oim_update(
                lut.value, cq.value, header.value, x, pids, valid & ~too_big, self.momentum
            )
        return loss
