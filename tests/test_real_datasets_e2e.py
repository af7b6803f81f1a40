"""main's train + evaluation flow on fake CUHK-SYSU and PRW folders in the official formats."""

import json

import pytest

from seqnet_jax import run
from seqnet_jax.data.fake_datasets import write_fake_cuhk_sysu, write_fake_prw
from tests.tiny import tiny_config


def _config(dataset, root, **kw):
    c = tiny_config(max_steps=2)
    c.data.dataset = dataset
    c.data.root = str(root)
    c.data.synthetic = type(c.data.synthetic)()
    c.eval.mode = "train_and_eval"
    c.eval.max_queries = -1
    for k, v in kw.items():
        c.data[k] = v
    return c


@pytest.mark.parametrize("dataset", ["cuhk_sysu", "prw"])
def test_two_steps_and_evaluation_on_fake_official_folders(tmp_path, dataset):
    root = tmp_path / "data"
    if dataset == "cuhk_sysu":
        write_fake_cuhk_sysu(root, num_train_images=6, image_size=(120, 160))
        protocol = "TestG50"
    else:
        write_fake_prw(root, num_train_frames=6, image_size=(120, 160))
        protocol = "PRW"
    config = _config(dataset, root)
    config.eval.cbgm_k1, config.eval.cbgm_k2 = 5, 2
    run.run(config, str(tmp_path / "work"))
    results = json.loads((tmp_path / "work" / "eval" / "step2" / "results.json").read_text())
    assert protocol in json.dumps(results)
    # Evaluation-only mode on the same workdir restores the checkpoint and evaluates again.
    config.eval.mode = "eval"
    run.run(config, str(tmp_path / "work"))


def test_tfds_path_trains_from_the_prepared_data(tmp_path):
    root = tmp_path / "data"
    write_fake_prw(root, num_train_frames=6, image_size=(120, 160))
    config = _config("prw", root, tfds_data_dir=str(tmp_path / "tfds"))
    config.eval.mode = "train"
    run.run(config, str(tmp_path / "work"))
    assert (tmp_path / "work" / "checkpoints" / "2").exists()
