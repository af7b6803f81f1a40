"""OIM loss and buffer updates against hand-computed / sequential reference values (§3.2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqnet_jax.modeling.oim import OIM, oim_cross_entropy, oim_logits, oim_update


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def reference_update(lut, cq, header, x, pids, valid, momentum=0.5):
    """The reference's python loop over kept RoIs (labels = pid - 1, unlabeled → queue)."""
    lut, cq = lut.copy(), cq.copy()
    for xi, p, v in zip(x, pids, valid):
        if not v or p == 0:
            continue
        if p > 0:
            y = p - 1
            lut[y] = momentum * lut[y] + (1 - momentum) * xi
            lut[y] /= np.linalg.norm(lut[y])
        else:
            cq[header] = xi
            header = (header + 1) % cq.shape[0]
    return lut, cq, header


def test_duplicate_labels_update_sequentially():
    lut = _unit([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cq = np.zeros((3, 3), np.float32)
    x = _unit([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    pids = np.array([1, 1, 2], np.int32)
    valid = np.ones(3, bool)
    got = oim_update(
        jnp.asarray(lut),
        jnp.asarray(cq),
        jnp.int32(0),
        jnp.asarray(x),
        jnp.asarray(pids),
        jnp.asarray(valid),
        0.5,
    )
    # Hand computation for row 0: first (1,0,0)+(0,0,1) → (1,0,1)/√2; then average with
    # (0,1,1)/√2 → (1,1,2)/(2√2) → normalised (1,1,2)/√6.
    np.testing.assert_allclose(np.asarray(got[0][0]), np.array([1, 1, 2]) / np.sqrt(6), atol=1e-6)
    want = reference_update(lut, cq, 0, x, pids, valid)
    np.testing.assert_allclose(np.asarray(got[0]), want[0], atol=1e-6)
    assert int(got[2]) == 0  # no unlabeled rows: header unchanged


def test_queue_wraps_around_in_order():
    lut = np.zeros((2, 2), np.float32)
    cq = np.zeros((3, 2), np.float32)
    x = np.arange(8, dtype=np.float32).reshape(4, 2)
    pids = np.array([-1, 0, -1, -1], np.int32)  # background row 1 is skipped
    valid = np.ones(4, bool)
    lut2, cq2, h2 = oim_update(
        jnp.asarray(lut),
        jnp.asarray(cq),
        jnp.int32(2),
        jnp.asarray(x),
        jnp.asarray(pids),
        jnp.asarray(valid),
        0.5,
    )
    # header 2: rows 0, 2, 3 go to slots 2, 0, 1; header ends at (2 + 3) % 3 = 2.
    np.testing.assert_array_equal(np.asarray(cq2), np.array([[4, 5], [6, 7], [0, 1]]))
    assert int(h2) == 2
    np.testing.assert_array_equal(np.asarray(lut2), lut)


def test_more_unlabeled_rows_than_queue_slots_keeps_the_last_ones():
    rng = np.random.default_rng(0)
    x = _unit(rng.normal(size=(7, 4)))
    pids = np.array([-1, 2, -1, -1, 0, -1, -1], np.int32)
    valid = np.array([1, 1, 1, 1, 1, 1, 0], bool)  # the last row is padding
    lut = _unit(rng.normal(size=(3, 4)))
    cq = np.zeros((2, 4), np.float32)
    got = oim_update(
        jnp.asarray(lut),
        jnp.asarray(cq),
        jnp.int32(1),
        jnp.asarray(x),
        jnp.asarray(pids),
        jnp.asarray(valid),
        0.5,
    )
    want = reference_update(lut, cq, 1, x, pids, valid)
    np.testing.assert_allclose(np.asarray(got[1]), want[1], atol=1e-6)
    np.testing.assert_allclose(np.asarray(got[0]), want[0], atol=1e-6)
    assert int(got[2]) == want[2]


def test_cross_entropy_hand_value():
    lut = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    cq = np.array([[-1.0, 0.0]], np.float32)
    x = np.array([[1.0, 0.0]], np.float32)
    logits = oim_logits(jnp.asarray(x), jnp.asarray(lut), jnp.asarray(cq), 2.0)
    np.testing.assert_allclose(np.asarray(logits), [[2.0, 0.0, -2.0]], atol=1e-6)
    loss = oim_cross_entropy(logits, jnp.array([1]), jnp.array([True]))
    want = -np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(-2)))
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)


def test_no_labeled_roi_gives_zero_loss_and_zero_gradient():
    module = OIM(num_pids=4, cq_size=3, dim=2)
    x = jnp.asarray(_unit([[1.0, 2.0], [3.0, 1.0]]))
    pids = jnp.array([-1, 0])
    valid = jnp.array([True, True])
    variables = module.init(jax.random.PRNGKey(0), x, pids, valid)
    variables = {
        "oim_state": jax.tree.map(lambda a: a + 0.3 if a.ndim else a, variables["oim_state"])
    }

    def loss(x):
        out, _ = module.apply(variables, x, pids, valid, mutable=["oim_state"])
        return out

    val, grad = jax.value_and_grad(loss)(x)
    assert float(val) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_module_uses_old_buffers_then_updates():
    module = OIM(num_pids=2, cq_size=2, dim=2, scalar=1.0)
    x = jnp.asarray(_unit([[1.0, 0.0], [0.0, 1.0]]))
    pids = jnp.array([1, -1])
    valid = jnp.array([True, True])
    variables = module.init(jax.random.PRNGKey(0), x, pids, valid)
    loss, new = module.apply(variables, x, pids, valid, mutable=["oim_state"])
    # Buffers were zero: every logit 0, CE = log(L + Q) = log 4.
    np.testing.assert_allclose(float(loss), np.log(4.0), rtol=1e-6)
    st = new["oim_state"]
    np.testing.assert_allclose(np.asarray(st["lut"][0]), [1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(st["cq"][0]), [0.0, 1.0], atol=1e-6)
    assert int(st["header"]) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_batches_match_the_sequential_reference(seed):
    rng = np.random.default_rng(seed)
    n, L, Q, D = 40, 5, 7, 8
    x = _unit(rng.normal(size=(n, D)))
    pids = rng.choice(np.array([-1, 0, 1, 2, 3, 4, 5]), size=n).astype(np.int32)
    valid = rng.random(n) > 0.1
    lut = _unit(rng.normal(size=(L, D)))
    cq = _unit(rng.normal(size=(Q, D)))
    header = int(rng.integers(Q))
    got = jax.jit(oim_update, static_argnums=6)(
        jnp.asarray(lut),
        jnp.asarray(cq),
        jnp.int32(header),
        jnp.asarray(x),
        jnp.asarray(pids),
        jnp.asarray(valid),
        0.5,
    )
    want = reference_update(lut, cq, header, x, pids, valid)
    np.testing.assert_allclose(np.asarray(got[0]), want[0], atol=1e-5)
    np.testing.assert_allclose(np.asarray(got[1]), want[1], atol=1e-6)
    assert int(got[2]) == want[2]
