"""Training loop: checkpoints, resume, non-finite losses, end-to-end runs of main's code."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from seqnet_jax import run
from seqnet_jax.train_lib import train as train_lib
from tests.tiny import tiny_config


def _params(workdir, config):
    from seqnet_jax import checkpoints
    from seqnet_jax.data import build_dataset
    from seqnet_jax.modeling import seqnet

    model = seqnet.build_model(config.model, build_dataset(config).num_train_pids)
    ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    state, meta, step = ck.restore(train_lib.abstract_train_state(config, model))
    return jax.device_get(state), meta, step


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(max_steps=5)
    config.checkpoint_every_steps = 1

    def fake_iteration(self, state, batch):
        step = int(state.step) + 1
        metrics = {k: 0.5 for k in train_lib.LOSS_NAMES}
        metrics.update(loss=3.5, grad_norm=1.0)
        if step == 3:
            metrics["loss_box_reid"] = float("nan")
            metrics["loss"] = float("nan")
        return state.replace(step=state.step + 1), metrics

    monkeypatch.setattr(train_lib.Trainer, "iteration", fake_iteration)
    with pytest.raises(train_lib.NonFiniteLossError, match="loss_box_reid"):
        train_lib.train_and_evaluate(config, str(tmp_path))
    steps = sorted(
        int(os.path.basename(p))
        for p in glob.glob(str(tmp_path / "checkpoints/*"))
        if os.path.basename(p).isdigit()
    )
    assert steps[-1] == 2
    _, meta, step = _params(str(tmp_path), config)
    assert step == 2 and meta["step"] == 2


def test_config_typo_fails_naming_the_key(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config",
            "configs/synthetic.py",
            "--workdir",
            str(tmp_path),
            "--config.solver.trian_lr=0.1",
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "trian_lr" in proc.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def test_end_to_end_train_then_eval_mode_reuses_features(tmp_path, caplog):
    config = tiny_config(max_steps=2)
    config.eval.mode = "train_and_eval"
    results = run.run(config, str(tmp_path))
    assert set(results) >= {"detection", "search"} or results  # evaluated after the last step
    out = tmp_path / "eval" / "step2"
    data = json.loads((out / "results.json").read_text())
    assert "TestG8" in json.dumps(data)
    assert (out / "per_query_top10.json").exists()
    assert glob.glob(str(tmp_path / "tensorboard" / "events.*"))
    assert (tmp_path / "config.json").exists()
    caches = glob.glob(str(tmp_path / "eval_cache" / "*.npz"))
    assert len(caches) == 1
    mtime = os.path.getmtime(caches[0])
    # Evaluation-only mode restores the latest checkpoint and re-uses the cached features.
    config.eval.mode = "eval"
    results2 = run.run(config, str(tmp_path))
    assert os.path.getmtime(caches[0]) == mtime
    assert json.dumps(results2, sort_keys=True, default=str) == json.dumps(
        results, sort_keys=True, default=str
    )


# 1 process x 2 devices (and 2 processes): tests/test_distributed.py, same numbers as 1 device.


def test_logged_metrics_are_window_means_and_the_parameter_table_is_written(
    tmp_path, monkeypatch, caplog
):
    from seqnet_jax.data import build_dataset
    from seqnet_jax.modeling import seqnet

    config = tiny_config(max_steps=4)
    config.log_every = 2

    def fake_iteration(self, state, batch):
        step = int(state.step) + 1
        metrics = {k: 0.5 for k in train_lib.LOSS_NAMES}
        metrics.update(loss=float(step), grad_norm=2.0 * step)
        return state.replace(step=state.step + 1), metrics

    logged = []
    monkeypatch.setattr(train_lib.Trainer, "iteration", fake_iteration)
    monkeypatch.setattr(
        train_lib.MetricWriter, "scalars", lambda self, step, values: logged.append((step, values))
    )
    with caplog.at_level("INFO"):
        train_lib.train_and_evaluate(config, str(tmp_path))
    # clu Average over each window of log_every steps: steps 1-2 and 3-4
    assert [s for s, _ in logged] == [2, 4]
    assert [v["loss"] for _, v in logged] == [1.5, 3.5]
    assert [v["grad_norm"] for _, v in logged] == [3.0, 7.0]
    assert all(v["loss_box_reid"] == 0.5 for _, v in logged)
    assert "step 4/4 loss 3.5000" in caplog.text
    # clu's parameter table: every parameter of the model, the total equal to the model's count
    ds = build_dataset(config)
    model = seqnet.build_model(config.model, train_lib.num_pids_from(config, ds))
    shapes = jax.eval_shape(lambda r: seqnet.init_variables(model, r), jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves_with_path(shapes["params"])
    count = sum(int(np.prod(x.shape)) for _, x in leaves)
    table = (tmp_path / train_lib.PARAMETERS_FILE).read_text()
    assert f"Total: {count:,} -- {4 * count:,} bytes" in table
    for path, _ in leaves:
        assert "/".join(p.key for p in path) in table
    assert f"Total: {count:,}" in caplog.text
