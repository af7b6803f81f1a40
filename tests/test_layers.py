"""BatchNorm with torch semantics, losses and the LR schedule / optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from seqnet_jax.modeling import losses as L
from seqnet_jax.modeling.layers import BatchNorm
from seqnet_jax.train_lib.optimizer import lr_factor, make_optimizer, trainable_mask


def test_batchnorm_train_uses_biased_batch_var_and_stores_unbiased():
    x = jnp.asarray([[1.0], [2.0], [3.0], [6.0]])
    bn = BatchNorm()
    v = bn.init(jax.random.PRNGKey(0), x, False)
    y, new = bn.apply(v, x, False, mutable=["batch_stats"])
    mean, var_b = 3.0, np.mean((np.array([1, 2, 3, 6.0]) - 3) ** 2)  # 3.5
    np.testing.assert_allclose(
        np.asarray(y[:, 0]), (np.array([1, 2, 3, 6]) - mean) / np.sqrt(var_b + 1e-5), rtol=1e-5
    )
    st = new["batch_stats"]
    np.testing.assert_allclose(float(st["mean"][0]), 0.9 * 0 + 0.1 * 3.0, rtol=1e-6)
    np.testing.assert_allclose(float(st["var"][0]), 0.9 * 1 + 0.1 * (var_b * 4 / 3), rtol=1e-6)


def test_batchnorm_mask_excludes_padded_rows():
    x = jnp.asarray([[1.0], [3.0], [100.0]])
    mask = jnp.asarray([True, True, False])
    bn = BatchNorm()
    v = bn.init(jax.random.PRNGKey(0), x, False)
    y, new = bn.apply(v, x, False, mask, mutable=["batch_stats"])
    np.testing.assert_allclose(
        np.asarray(y[:2, 0]), [-1 / np.sqrt(1 + 1e-5), 1 / np.sqrt(1 + 1e-5)], rtol=1e-5
    )
    np.testing.assert_allclose(float(new["batch_stats"]["mean"][0]), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(new["batch_stats"]["var"][0]), 0.9 + 0.1 * 2.0, rtol=1e-6)


def test_batchnorm_eval_uses_running_stats():
    bn = BatchNorm()
    x = jnp.ones((2, 3))
    v = bn.init(jax.random.PRNGKey(0), x, True)
    v = {
        "params": v["params"],
        "batch_stats": {"mean": jnp.full((3,), 2.0), "var": jnp.full((3,), 4.0)},
    }
    y = bn.apply(v, x, True)
    np.testing.assert_allclose(np.asarray(y), (1 - 2) / np.sqrt(4 + 1e-5), rtol=1e-6)


def test_rpn_losses_normalised_by_sampled_count():
    logits = jnp.asarray([0.0, 2.0, -1.0, 5.0])
    labels = jnp.asarray([1.0, 0.0, 0.0, 1.0])
    valid = jnp.asarray([True, True, True, False])
    deltas = jnp.asarray([[1.0, -1.0, 0.5, 0.0]] * 4)
    targets = jnp.zeros((4, 4))
    cls, reg = L.rpn_losses(logits, deltas, labels, targets, valid)
    want_cls = (np.log(2) + np.log1p(np.exp(2.0)) + np.log1p(np.exp(-1.0))) / 3
    np.testing.assert_allclose(float(cls), want_cls, rtol=1e-6)
    np.testing.assert_allclose(float(reg), 2.5 / 3, rtol=1e-6)  # plain L1 of one positive / 3


def test_box_losses_smooth_l1_beta_one_on_class1_deltas():
    deltas = jnp.asarray([[9, 9, 9, 9, 0.5, -2.0, 0.0, 0.0], [9, 9, 9, 9, 1, 1, 1, 1]])
    pids = jnp.asarray([3, 0])
    targets = jnp.zeros((2, 4))
    valid = jnp.asarray([True, True])
    got = L.box_reg_loss(deltas, pids, targets, valid)
    np.testing.assert_allclose(float(got), (0.125 + 1.5) / 2, rtol=1e-6)
    logits = jnp.asarray([[0.0, 0.0], [1.0, -1.0]])
    cls, _ = L.fast_rcnn_losses(logits, deltas, pids, targets, valid)
    want = (np.log(2) + np.log1p(np.exp(-2.0))) / 2
    np.testing.assert_allclose(float(cls), want, rtol=1e-6)
    nae = L.nae_cls_loss(jnp.asarray([0.0, 0.0]), jnp.asarray([-1, 0]), valid)
    np.testing.assert_allclose(float(nae), np.log(2), rtol=1e-6)  # unlabeled counts as person


def test_lr_schedule_warmup_and_decay():
    spe = 11  # warm-up over W = 10 iterations
    f = lambda s: float(lr_factor(s, spe, 0.001, (2,), 0.1))  # noqa: E731
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.001 * 0.5 + 0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(11) == pytest.approx(1.0)  # epoch 1
    assert f(2 * spe) == pytest.approx(0.1)  # epoch 2 ≥ milestone
    # jnp path agrees with the numpy path.
    assert float(lr_factor(jnp.int32(5), spe, 0.001, (2,), 0.1)) == pytest.approx(f(5))


def _solver(**kw):
    c = ConfigDict(
        dict(
            base_lr=0.1,
            warmup_factor=1.0,
            lr_decay_milestones=(),
            gamma=0.1,
            weight_decay=0.5,
            sgd_momentum=0.9,
            clip_gradients=10.0,
        )
    )
    c.update(kw)
    return c


def test_optimizer_matches_torch_sgd_and_freezes_conv1_bn1():
    params = {
        "backbone": {
            "conv1": {"kernel": jnp.ones(2)},
            "bn1": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
            "layer1_0": {"w": jnp.asarray([1.0, 2.0])},
        }
    }
    mask = trainable_mask(params)
    assert not mask["backbone"]["conv1"]["kernel"] and mask["backbone"]["layer1_0"]["w"]
    tx = make_optimizer(_solver(), params, 10)
    st = tx.init(params)
    g = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)  # norm of trainable grads < 10
    p = params
    buf = np.zeros(2)
    w = np.array([1.0, 2.0])
    for _ in range(2):
        u, st = tx.update(g, st, p)
        p = optax.apply_updates(p, u)
        # torch: g + wd * p → buf = 0.9 buf + g → p -= lr * buf
        d = 3.0 + 0.5 * w
        buf = 0.9 * buf + d
        w = w - 0.1 * buf
    np.testing.assert_allclose(np.asarray(p["backbone"]["layer1_0"]["w"]), w, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(p["backbone"]["conv1"]["kernel"]), np.ones(2))
    np.testing.assert_array_equal(np.asarray(p["backbone"]["bn1"]["scale"]), np.ones(2))


def test_clip_uses_trainable_grads_only():
    params = {"backbone": {"conv1": {"kernel": jnp.zeros(1)}}, "head": {"w": jnp.zeros(1)}}
    tx = make_optimizer(_solver(weight_decay=0.0, sgd_momentum=0.0, base_lr=1.0), params, 10)
    st = tx.init(params)
    g = {
        "backbone": {"conv1": {"kernel": jnp.asarray([1000.0])}},
        "head": {"w": jnp.asarray([20.0])},
    }
    u, _ = tx.update(g, st, params)
    np.testing.assert_allclose(np.asarray(u["head"]["w"]), [-10.0], rtol=1e-5)  # clipped to 10
    assert float(u["backbone"]["conv1"]["kernel"][0]) == 0.0
