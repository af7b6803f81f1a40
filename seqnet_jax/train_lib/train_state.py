"""The whole training state as one pytree (checkpointed as is)."""

from __future__ import annotations

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    """``params`` (trained), ``batch_stats`` (BN running averages), ``oim_state`` (LUT, CQ,
    header), ``opt_state`` (optax), ``step`` (global step, int32) and ``rng`` (base key of the
    run; every random stream is folded from it and the step)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    oim_state: Any
    opt_state: Any
    rng: jax.Array

    @property
    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats, "oim_state": self.oim_state}
