"""Small building blocks shared by the modules: torch-semantics BatchNorm and initialisers."""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# torchvision ResNet conv init: kaiming_normal_(mode="fan_out", nonlinearity="relu").
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch nn.Linear / nn.Conv default init: kaiming_uniform_(a=sqrt(5)) == U(-1/sqrt(fan_in), +).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
normal_001 = nn.initializers.normal(stddev=0.01)


def torch_default_bias_init(fan_in: int) -> Callable:
    """torch's default bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / (fan_in**0.5)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics (the reference uses plain ``nn.BatchNorm{1,2}d``).

    * Training (``use_running_average=False``): normalise with the biased batch variance and update
      the running statistics as ``new = (1 - momentum) * old + momentum * batch`` with the
      *unbiased* batch variance, as torch does (Flax's BatchNorm stores the biased one).
    * ``mask`` (broadcastable to ``x.shape[:-1]``) excludes padded rows (padded RoIs) from the batch
      statistics; masked rows are still normalised (and later ignored by the caller).
    * Statistics are always computed in float32, whatever the compute dtype.

    Variables: params ``scale``, ``bias`` (C,); batch_stats ``mean``, ``var`` (C,).
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    dtype: Optional[Any] = None

    @nn.compact
    def __call__(self, x: Array, use_running_average: bool, mask: Optional[Array] = None) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), jnp.float32)
        bias = self.param("bias", self.bias_init, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            xf = x.astype(jnp.float32)
            axes = tuple(range(x.ndim - 1))
            if mask is None:
                n = jnp.asarray(float(x.size // c), jnp.float32)
                mean = jnp.mean(xf, axis=axes)
                var = jnp.mean(jnp.square(xf - mean), axis=axes)
            else:
                m = jnp.broadcast_to(mask, x.shape[:-1]).astype(jnp.float32)[..., None]
                n = jnp.sum(m) * 1.0
                denom = jnp.maximum(n, 1.0)
                mean = jnp.sum(xf * m, axis=axes) / denom
                var = jnp.sum(jnp.square(xf - mean) * m, axis=axes) / denom
            if not self.is_initializing():
                unbiased = var * n / jnp.maximum(n - 1.0, 1.0)
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
        dtype = self.dtype or x.dtype
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = (x.astype(jnp.float32) - mean) * inv + bias
        return y.astype(dtype)
