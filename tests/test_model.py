"""Model structure, the staged train step and inference on tiny inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from seqnet_jax.data import build_dataset
from seqnet_jax.data.pipeline import TrainLoader
from seqnet_jax.inference import SeqNetInference
from seqnet_jax.modeling import seqnet
from seqnet_jax.modeling.backbone import param_count
from seqnet_jax.train_lib import train as train_lib
from tests.tiny import tiny_config


def test_resnet50_model_has_the_reference_parameter_count():
    model = seqnet.build_model(default.get_config().model, num_pids=5532)
    shapes = jax.eval_shape(lambda r: seqnet.init_variables(model, r), jax.random.PRNGKey(0))
    # §8: 48,418,735 parameters; two separate res5 heads of 14,964,736 each.
    assert param_count(shapes["params"]) == 48_418_735
    assert param_count(shapes["params"]["box_head"]) == 14_964_736
    assert param_count(shapes["params"]["reid_head"]) == 14_964_736
    assert shapes["oim_state"]["reid_loss"]["lut"].shape == (5532, 256)
    assert shapes["oim_state"]["reid_loss"]["cq"].shape == (5000, 256)


def test_anchor_count_and_feature_stride():
    model = seqnet.build_model(default.get_config().model, num_pids=10)
    anchors = seqnet.anchors_for(model, 3, 4)
    assert anchors.shape == (3 * 4 * 15, 4)
    # (y, x, anchor) order: the second cell (x=1) is shifted by 16 px in x.
    np.testing.assert_allclose(anchors[15] - anchors[0], [16, 0, 16, 0])


@pytest.fixture(scope="module")
def tiny_setup():
    config = tiny_config()
    dataset = build_dataset(config)
    model = seqnet.build_model(config.model, dataset.num_train_pids)
    d = config.data
    loader = TrainLoader(
        dataset.train,
        lambda n: dataset.load_image("train", n),
        batch_size=d.batch_size,
        min_size=d.min_size,
        max_size=d.max_size,
        max_boxes=d.max_boxes,
        seed=0,
        num_workers=1,
    )
    batch = next(iter(loader))
    state, tx = train_lib.create_train_state(
        config, model, loader.num_batches_per_epoch, jax.random.PRNGKey(0)
    )
    trainer = train_lib.Trainer(config, model, tx)
    return config, dataset, model, state, trainer, batch


def test_train_step_updates_trainable_params_only(tiny_setup):
    config, _, _, state, trainer, batch = tiny_setup
    before = jax.device_get(state)
    # Make the lr non-negligible for this check (the warm-up starts at 1/1000).
    new_state, metrics = trainer.iteration(jax.tree.map(jnp.array, state), batch)
    after = jax.device_get(new_state)
    for k in (
        "loss_rpn_reg",
        "loss_rpn_cls",
        "loss_proposal_reg",
        "loss_proposal_cls",
        "loss_box_reg",
        "loss_box_cls",
        "loss_box_reid",
    ):
        assert np.isfinite(metrics[k]), k
    bb0, bb1 = before.params["backbone"], after.params["backbone"]
    np.testing.assert_array_equal(bb0["conv1"]["kernel"], bb1["conv1"]["kernel"])
    np.testing.assert_array_equal(bb0["bn1"]["scale"], bb1["bn1"]["scale"])
    np.testing.assert_array_equal(bb0["bn1"]["bias"], bb1["bn1"]["bias"])
    # bn1's running statistics still update (train-mode BN).
    assert not np.array_equal(
        before.batch_stats["backbone"]["bn1"]["mean"], after.batch_stats["backbone"]["bn1"]["mean"]
    )
    for name in ("layer1_0", "layer3_0"):
        k0 = bb0[name]["conv1"]["kernel"]
        assert not np.array_equal(k0, bb1[name]["conv1"]["kernel"]), name
    for head in (
        "rpn_head",
        "box_head",
        "reid_head",
        "faster_rcnn_predictor",
        "box_predictor",
        "embedding_head",
    ):
        changed = jax.tree.leaves(
            jax.tree.map(lambda a, b: bool(np.any(a != b)), before.params[head], after.params[head])
        )
        assert any(changed), head
    assert int(after.step) == 1
    # The OIM lookup table received the labeled RoIs of the batch.
    assert np.abs(after.oim_state["reid_loss"]["lut"]).sum() > 0


def test_inference_returns_boxes_in_original_coordinates(tiny_setup):
    config, dataset, model, state, _, _ = tiny_setup
    from seqnet_jax.data.pipeline import EvalLoader

    inf = SeqNetInference(model, state.variables, config.model)
    items = [(a.name, a) for a in dataset.gallery[:2]]
    loader = EvalLoader(
        items,
        lambda n: dataset.load_image("gallery", n),
        batch_size=2,
        min_size=48,
        max_size=80,
        max_boxes=config.data.max_boxes,
    )
    batch = next(iter(loader))
    dets = inf.detect(batch, query_boxes=batch["boxes"][:, 0])
    for j, det in enumerate(dets):
        # The forced query box comes first with score 1, mapped back to original coordinates.
        ann = dataset.gallery[j]
        np.testing.assert_allclose(det.boxes[0], ann.boxes[0], atol=0.5)
        assert det.scores[0] == 1.0
        assert det.embeddings.shape[1] == config.model.emb_dim
        np.testing.assert_allclose(np.linalg.norm(det.embeddings, axis=1), 1.0, atol=1e-4)
    emb = inf.embed(batch, batch["boxes"][:, :1], batch["box_valid"][:, :1])
    np.testing.assert_allclose(emb[:, 0], np.stack([d.embeddings[0] for d in dets]), atol=1e-5)


def _random_targets(batch, seed=0):
    """Batch arrays plus random RPN/RoI targets of the shapes the host stages produce."""
    rng = np.random.default_rng(seed)
    b, h, w = batch["images"].shape[:3]
    r, a = 4, 8
    n_anchors = (h // 16) * (w // 16) * 15
    xy = rng.uniform(0, 16, (b, r, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(12, 30, (b, r, 2))], -1).astype(np.float32)
    rois = {
        "boxes": jnp.asarray(boxes),
        "pids": jnp.asarray(rng.integers(-1, 3, (b, r)), jnp.int32),
        "targets": jnp.asarray(rng.normal(size=(b, r, 4)), jnp.float32),
        "valid": jnp.ones((b, r), bool),
    }
    rpn = {
        "indices": jnp.asarray(rng.integers(0, n_anchors, (b, a)), jnp.int32),
        "labels": jnp.asarray(rng.integers(0, 2, (b, a)), jnp.int32),
        "targets": jnp.asarray(rng.normal(size=(b, a, 4)), jnp.float32),
        "valid": jnp.ones((b, a), bool),
    }
    data = {
        "images": jnp.asarray(batch["images"]),
        "image_sizes": jnp.asarray(batch["image_sizes"]),
    }
    return data, rpn, rois


def test_train_step_grad_norm_covers_trainable_params_only(tiny_setup):
    """Frozen conv1/bn1 enter the loss through stop_gradient: the reported (and clipped) gradient
    norm equals the norm of the trainable gradients alone."""
    from seqnet_jax.train_lib import steps
    from seqnet_jax.train_lib.optimizer import trainable_mask

    config, _, model, state, _, batch = tiny_setup
    data, rpn, rois = _random_targets(batch)
    weights = steps.loss_weights(config.solver)
    state = jax.tree.map(jnp.array, state)

    def total(params):
        variables = {
            "params": params,
            "batch_stats": state.batch_stats,
            "oim_state": state.oim_state,
        }
        losses, _ = steps.compute_losses(model, variables, data, rpn, rois, rois)
        return sum(weights[k] * losses[k] for k in losses)

    grads = jax.jit(jax.grad(total))(state.params)  # jitted: eager op-by-op costs ~50 s
    mask = trainable_mask(grads)
    all_sq = sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads))
    train_sq = sum(
        float(jnp.sum(g**2)) for g, t in zip(jax.tree.leaves(grads), jax.tree.leaves(mask)) if t
    )
    assert all_sq > train_sq  # the frozen conv1 does receive a gradient without stop_gradient
    _, tx = train_lib.create_train_state(config, model, 1, jax.random.PRNGKey(0))
    step = jax.jit(functools.partial(steps.train_step, model, tx, weights))
    _, metrics = step(state, data, rpn, rois, rois)
    np.testing.assert_allclose(float(metrics["grad_norm"]), np.sqrt(train_sq), rtol=1e-4)


def test_staged_train_step_equals_the_one_pass_step(tiny_setup):
    """The Trainer's stages run the backbone and box head forward once and hand their VJPs to the
    train step; the result must be the one-pass step's: losses, gradient norm, new params, BN
    running statistics of every module and the OIM table."""
    from seqnet_jax.train_lib import steps

    config, _, model, state, _, batch = tiny_setup
    data, rpn, s1 = _random_targets(batch, seed=1)
    _, _, s2 = _random_targets(batch, seed=2)
    weights = steps.loss_weights(config.solver)
    _, tx = train_lib.create_train_state(config, model, 1, jax.random.PRNGKey(0))
    state = jax.device_get(state)

    one_pass = jax.jit(functools.partial(steps.train_step, model, tx, weights))
    ref_state, ref = jax.device_get(one_pass(jax.tree.map(jnp.array, state), data, rpn, s1, s2))

    variables = state.variables
    _, _, cache = jax.jit(functools.partial(steps.propose_train, model, pre_nms_top_n=50))(
        variables, data["images"], data["image_sizes"]
    )
    _, cache = jax.jit(functools.partial(steps.first_stage_train, model))(
        variables, cache, s1["boxes"], s1["valid"], data["image_sizes"]
    )
    staged = steps.make_jitted_train_step(model, tx, weights)
    new_state, got = jax.device_get(staged(jax.tree.map(jnp.array, state), rpn, s1, s2, cache))

    for k in list(ref):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert ref["loss_box_reid"] > 0 and ref["grad_norm"] > 0
    for name, tree in (
        ("params", "params"),
        ("batch_stats", "batch_stats"),
        ("oim_state", "oim_state"),
    ):
        a = jax.tree_util.tree_leaves_with_path(getattr(ref_state, tree))
        b = jax.tree.leaves(getattr(new_state, tree))
        for (path, x), y in zip(a, b):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5, err_msg=f"{name}{path}")
    # every module's running statistics moved exactly once (backbone, box head, re-id head)
    before = state.batch_stats
    for module in ("backbone", "box_head", "reid_head"):
        moved = jax.tree.leaves(
            jax.tree.map(
                lambda x, y: bool(np.any(x != y)), before[module], new_state.batch_stats[module]
            )
        )
        assert any(moved), module
