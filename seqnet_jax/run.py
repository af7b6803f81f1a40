"""What ``main.py`` runs: train, train and evaluate, or evaluate a checkpoint."""

from __future__ import annotations

import os

import jax
from absl import logging

from seqnet_jax import checkpoints as ckpt_lib
from seqnet_jax import evaluate as eval_lib
from seqnet_jax.data import build_dataset
from seqnet_jax.modeling import seqnet
from seqnet_jax.train_lib import train as train_lib

MODES = ("train_and_eval", "train", "eval", "search")


def evaluate_checkpoint(config, workdir: str) -> dict:
    """Evaluation only: restore the requested (or latest) checkpoint of ``workdir`` — or import a
    reference PyTorch checkpoint (``init.reference_checkpoint``) — and evaluate it."""
    dataset = build_dataset(config)
    num_pids = train_lib.num_pids_from(config, dataset)
    model = seqnet.build_model(config.model, num_pids)
    if config.init.reference_checkpoint:
        from seqnet_jax.weights import load_reference_checkpoint

        variables = seqnet.init_variables(model, jax.random.PRNGKey(config.seed))
        variables = load_reference_checkpoint(variables, config.init.reference_checkpoint)
        checkpoint_id = "reference_" + os.path.basename(config.init.reference_checkpoint)
    else:
        ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
        step = int(config.eval.checkpoint) if config.eval.checkpoint else None
        if ckpt.latest_step() is None:
            raise FileNotFoundError(
                f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first, or set "
                "--config.init.reference_checkpoint=PATH to evaluate a released PyTorch model"
            )
        target = train_lib.abstract_train_state(config, model)
        state, _, step = ckpt.restore(target, step)
        variables = state.variables
        checkpoint_id = f"step{step}"
    return eval_lib.evaluate(config, workdir, model, variables, dataset, checkpoint_id)


def run(config, workdir: str) -> dict:
    mode = config.eval.mode
    if mode not in MODES:
        raise ValueError(f"eval.mode must be one of {MODES}, got {mode!r}")
    logging.info("JAX devices: %s", jax.devices())
    if mode == "eval":
        return evaluate_checkpoint(config, workdir)
    if mode == "search":
        from seqnet_jax import search

        return search.search_from_config(config, workdir)
    return train_lib.train_and_evaluate(config, workdir)
