"""What ``main.py`` runs: train, train and evaluate, evaluate a checkpoint, or search."""

from __future__ import annotations

import jax
from absl import logging

from seqnet_jax import config_checks, distributed, model_loading
from seqnet_jax import evaluate as eval_lib
from seqnet_jax.data import build_dataset
from seqnet_jax.train_lib import train as train_lib

MODES = ("train_and_eval", "train", "eval", "search")


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Evaluation only: the weights ``model_loading.load_model`` finds for ``config`` (the
    requested or latest checkpoint of ``workdir``, or a reference ``.pth``/``.npz`` named by
    ``init.reference_checkpoint``), evaluated on the config's dataset."""
    loaded = model_loading.load_model(config, workdir)  # before the dataset: fails fast
    dataset = build_dataset(config)
    return eval_lib.evaluate(config, workdir, loaded.model, loaded.variables, dataset, loaded.name)


def run(config, workdir: str) -> dict:
    mode = config.eval.mode
    if mode not in MODES:
        raise config_checks.ConfigError(f"eval.mode must be one of {MODES}, got {mode!r}")
    config_checks.check_config(config)  # values no run can use: refused before any work
    distributed.initialize(config)  # several processes: join them (before any device is used)
    logging.info("JAX devices: %s", jax.devices())
    # Several processes: a failure caused by another process's death names that process.
    with distributed.stop_on_lost_process(mode, config.distributed.heartbeat_timeout_s):
        if mode == "eval":
            return evaluate_checkpoint(config, workdir)
        if mode == "search":
            from seqnet_jax import search

            return search.search_from_config(config, workdir)
        return train_lib.train_and_evaluate(config, workdir)
