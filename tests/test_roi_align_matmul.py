"""The separable-matmul RoIAlign equals the gather implementation (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np

from seqnet_jax.ops.roi_align import roi_align_batched, roi_align_matmul


def _boxes(rng, b, r, h, w):
    xy = rng.uniform(-40, max(h, w) * 16, (b, r, 2))
    wh = rng.uniform(0, 200, (b, r, 2))
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    boxes[0, 0] = [-100, -100, -50, -50]  # fully outside
    boxes[0, 1] = [w * 16 - 20, h * 16 - 20, w * 16 + 300, h * 16 + 300]  # crossing the border
    boxes[0, 2] = [10, 10, 10, 10]  # zero size
    return jnp.asarray(boxes)


def test_matmul_equals_gather_values_and_gradients():
    rng = np.random.default_rng(0)
    b, h, w, c, r = 2, 9, 13, 5, 12
    feat = jnp.asarray(rng.normal(size=(b, h, w, c)).astype(np.float32))
    boxes = _boxes(rng, b, r, h, w)
    # jitted: op-by-op dispatch of these loops cost ~20 s on the 2-core CI
    gather = jax.jit(roi_align_batched, static_argnums=(2, 3, 4))
    matmul = jax.jit(roi_align_matmul, static_argnums=(2, 3, 4))
    for size, sr in ((14, 2), (7, 3), ((4, 6), 1)):
        a = gather(feat, boxes, size, 1 / 16, sr)
        m = matmul(feat, boxes, size, 1 / 16, sr)
        np.testing.assert_allclose(np.asarray(m), np.asarray(a), atol=1e-5)
    cot = jnp.asarray(rng.normal(size=(b, r, 7, 7, c)).astype(np.float32))
    g1 = jax.jit(jax.grad(lambda f: jnp.sum(gather(f, boxes, 7, 1 / 16, 3) * cot)))(feat)
    g2 = jax.jit(jax.grad(lambda f: jnp.sum(matmul(f, boxes, 7, 1 / 16, 3) * cot)))(feat)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g1), atol=1e-4)


def test_arange_map_hand_value():
    # Feature value = x on a 4x4 map; a box covering feature cells x in [1, 3) at scale 1:
    # bin 0 samples x at 1.25 and 1.75 → mean 1.5; bin 1 at 2.25, 2.75 → 2.5.
    feat = jnp.tile(jnp.arange(4, dtype=jnp.float32)[None, :, None], (4, 1, 1))[None]
    boxes = jnp.asarray([[[1.0, 0.0, 3.0, 2.0]]])
    out = roi_align_matmul(feat, boxes, 2, 1.0, 2)
    np.testing.assert_allclose(np.asarray(out[0, 0, :, :, 0]), [[1.5, 2.5], [1.5, 2.5]], atol=1e-6)
