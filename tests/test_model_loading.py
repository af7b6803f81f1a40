"""One loader for inference weights (seqnet_jax.model_loading): orbax workdirs, reference
``.pth`` / ``.npz`` files, the fit check; evaluation, search and ``to_orbax`` agree (the
conversion test moved here from test_weights.py with ``convert_reference_to_orbax``).

The checkpoints are random variables of the tiny test model (``tests/tiny.py``) exported in the
reference's state-dict format: only shapes are computed (``jax.eval_shape``), nothing is trained.
"""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np
import pytest

from seqnet_jax import model_loading, run, weights, weights_cli
from seqnet_jax.modeling import seqnet
from tests.tiny import tiny_config

NUM_PIDS = 7  # rows of the checkpoint's lookup table (the tiny config's data has 6 identities)


@functools.lru_cache(maxsize=None)
def _reference_variables(emb_dim: int = 16, depth: int = 18):
    config = tiny_config()
    config.model.emb_dim, config.model.backbone.depth = emb_dim, depth
    model = seqnet.build_model(config.model, NUM_PIDS)
    abstract = model_loading.abstract_variables(model)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), abstract)


@pytest.fixture(scope="module")
def reference_npz(tmp_path_factory):
    """``(path, variables)``: a reference-format ``.npz`` of random tiny-model variables."""
    src = _reference_variables()
    sd = weights.export_reference_state_dict(src, include_num_batches_tracked=True)
    path = tmp_path_factory.mktemp("ref") / "seqnet_tiny.npz"
    np.savez(path, **sd)
    return str(path), src


def _assert_variables_equal(got, want):
    for col in ("params", "batch_stats"):
        a, b = jax.tree_util.tree_flatten_with_path(got[col])[0], jax.tree.leaves(want[col])
        assert len(a) == len(b)
        for (path, x), y in zip(a, b, strict=True):
            np.testing.assert_array_equal(np.asarray(x), y, err_msg=f"{col} {path}")


def test_reference_npz_loads_without_a_workdir(reference_npz, caplog):
    path, src = reference_npz
    config = tiny_config()
    config.init.reference_checkpoint = path
    config.model.oim.lut_size = 3  # differs from the checkpoint's 7 rows: logged, not fatal
    with caplog.at_level(logging.WARNING):
        loaded = model_loading.load_model(config, workdir=None)
    assert "has 7 identities" in caplog.text
    assert loaded.num_pids == NUM_PIDS == loaded.model.num_pids
    assert loaded.model.cq_size == 20 and loaded.step is None
    assert loaded.name == "reference_seqnet_tiny.npz"
    assert loaded.source_id.startswith(f"reference:{path}:")
    assert set(loaded.variables) == {"params", "batch_stats"}
    _assert_variables_equal(loaded.variables, src)
    np.testing.assert_array_equal(
        loaded.oim_state["reid_loss"]["lut"], src["oim_state"]["reid_loss"]["lut"]
    )
    # The queue size comes from the checkpoint too (it only matters in training).
    config.model.oim.cq_size = 500
    assert model_loading.load_model(config).model.cq_size == 20


def test_reference_pth_loads_like_its_npz(reference_npz, tmp_path):
    torch = pytest.importorskip("torch")
    path, src = reference_npz
    with np.load(path) as z:
        sd = {k: torch.from_numpy(z[k]) for k in z.files}
    pth = tmp_path / "epoch_3.pth"
    torch.save({"model": sd, "epoch": 3}, pth)
    config = tiny_config()
    config.init.reference_checkpoint = str(pth)
    loaded = model_loading.load_model(config)
    assert loaded.meta == {"epoch": 3} and loaded.name == "reference_epoch_3.pth"
    _assert_variables_equal(loaded.variables, src)


@pytest.mark.parametrize(
    "field, value, says",
    [
        ("emb_dim", 32, "model.emb_dim=16 (config: 32)"),
        ("depth", 34, "model.backbone.depth=18 (config: 34)"),
    ],
)
def test_a_reference_checkpoint_that_does_not_fit_names_arrays_and_fields(
    reference_npz, field, value, says
):
    config = tiny_config()
    config.init.reference_checkpoint = reference_npz[0]
    if field == "depth":
        config.model.backbone.depth = value
    else:
        config.model.emb_dim = value
    with pytest.raises(model_loading.CheckpointMismatchError) as err:
        model_loading.load_model(config)
    msg = str(err.value)
    assert "does not fit the model built from the config" in msg and says in msg
    assert ("vs config" in msg) or ("not in the checkpoint" in msg)
    assert "params/" in msg


def test_missing_weights_are_reported():
    config = tiny_config()
    with pytest.raises(ValueError, match="no weights to load"):
        model_loading.load_model(config, workdir=None)
    config.init.reference_checkpoint = "/nonexistent/epoch_19.pth"
    with pytest.raises(FileNotFoundError, match="epoch_19.pth does not exist"):
        model_loading.load_model(config)


def test_orbax_workdir_from_to_orbax_loads_the_same_for_evaluation_and_search(
    reference_npz, tmp_path, monkeypatch
):
    path, src = reference_npz
    config = tiny_config()
    config.init.reference_checkpoint = path
    with np.load(path) as z:
        sd = {k: z[k] for k in z.files}
    res = weights_cli.convert_reference_to_orbax(config, {"model": sd}, str(tmp_path))
    assert res["num_pids"] == NUM_PIDS and res["overrides"] == ["--config.model.oim.lut_size=7"]
    with pytest.raises(FileExistsError):
        weights_cli.convert_reference_to_orbax(config, sd, str(tmp_path))
    config.init.reference_checkpoint = ""

    # The converted checkpoint restores as the train state training resumes from.
    from seqnet_jax import checkpoints
    from seqnet_jax.train_lib import train as train_lib

    model = seqnet.build_model(config.model, NUM_PIDS)
    ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
    state, meta, step = ckpt.restore(train_lib.abstract_train_state(config, model))
    ckpt.close()
    assert step == 0 and meta["num_pids"] == NUM_PIDS
    assert meta["loader"] == {"epoch": 0, "position": 0}
    _assert_variables_equal(state.variables, src)
    for name in ("lut", "cq"):
        np.testing.assert_array_equal(
            state.oim_state["reid_loss"][name], src["oim_state"]["reid_loss"][name]
        )
    loaded = model_loading.load_model(config, str(tmp_path))
    assert (loaded.name, loaded.step, loaded.num_pids) == ("step0", 0, NUM_PIDS)
    assert loaded.source_id.startswith(f"orbax:{tmp_path / 'checkpoints'}:0:")
    assert loaded.meta["num_pids"] == NUM_PIDS and loaded.meta["loader"]["position"] == 0
    _assert_variables_equal(loaded.variables, src)
    np.testing.assert_array_equal(
        loaded.oim_state["reid_loss"]["cq"], src["oim_state"]["reid_loss"]["cq"]
    )
    config.eval.checkpoint = "5"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint step 5 .*\[0\]"):
        model_loading.load_model(config, str(tmp_path))
    config.eval.checkpoint = ""

    # Evaluation (eval mode) and search build their model from the same loader.
    from seqnet_jax import evaluate as eval_lib
    from seqnet_jax import search

    seen = {}

    def fake_evaluate(cfg, workdir, model, variables, dataset, checkpoint_id, **kw):
        seen.update(model=model, variables=variables, checkpoint_id=checkpoint_id)
        return {}

    monkeypatch.setattr(eval_lib, "evaluate", fake_evaluate)
    run.evaluate_checkpoint(config, str(tmp_path))
    searcher = search.PersonSearcher.from_config(config, str(tmp_path))
    assert seen["checkpoint_id"] == "step0" and seen["model"] == searcher.model
    _assert_variables_equal(seen["variables"], src)
    _assert_variables_equal(searcher.inference.variables, src)
    assert searcher.fingerprint == search.fingerprint(config, loaded.source_id)

    # A config the checkpoint does not fit is refused the same way in eval mode and search.
    config.model.emb_dim = 32
    for load in (
        lambda: run.evaluate_checkpoint(config, str(tmp_path)),
        lambda: search.PersonSearcher.from_config(config, str(tmp_path)),
    ):
        with pytest.raises(model_loading.CheckpointMismatchError, match="model.emb_dim=16"):
            load()
