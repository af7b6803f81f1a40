"""Faults a new user meets: resuming with another model config, the workdir's config.json."""

from __future__ import annotations

import json
import os

import pytest

from seqnet_jax.model_loading import CheckpointMismatchError
from seqnet_jax.train_lib import train as train_lib
from tests.tiny import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    train_lib.train_and_evaluate(tiny_config(max_steps=1), str(workdir))
    return workdir


def test_resume_with_another_model_config_names_arrays_and_fields(trained):
    config = tiny_config(max_steps=2)
    config.model.emb_dim = 32
    before = (trained / "config.json").read_text()
    with pytest.raises(CheckpointMismatchError) as e:
        train_lib.train_and_evaluate(config, str(trained))
    msg = str(e.value)
    assert "model.emb_dim=16 (config: 32)" in msg
    assert "params/embedding_head/proj_feat_res4/kernel" in msg  # an array that differs
    assert "strict=False" not in msg
    # the failed run did not overwrite the trained config
    assert (trained / "config.json").read_text() == before
    assert json.loads(before)["model"]["emb_dim"] == 16


def test_a_changed_valid_config_keeps_the_earlier_one_in_the_history(trained):
    config = tiny_config(max_steps=1)  # resumes at step 1: nothing left to train
    config.solver.base_lr = 0.02
    train_lib.train_and_evaluate(config, str(trained))
    assert json.loads((trained / "config.json").read_text())["solver"]["base_lr"] == 0.02
    (hist,) = os.listdir(trained / "config_history")
    old = json.loads((trained / "config_history" / hist).read_text())
    assert old["solver"]["base_lr"] == 0.01
    train_lib.train_and_evaluate(config, str(trained))  # the same config: no new history entry
    assert len(os.listdir(trained / "config_history")) == 1
