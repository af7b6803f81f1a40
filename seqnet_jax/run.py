"""What ``main.py`` runs: train, train and evaluate, evaluate a checkpoint, or search."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax
from absl import logging

from seqnet_jax import config_checks, distributed, model_loading
from seqnet_jax import evaluate as eval_lib
from seqnet_jax.data import build_dataset
from seqnet_jax.train_lib import train as train_lib
from seqnet_jax.workdir_lock import WorkdirLock, WorkdirLockedError

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
    with lock_workdir(workdir, mode):
        # Several processes: a failure caused by another process's death names that process.
        with distributed.stop_on_lost_process(mode, config.distributed.heartbeat_timeout_s):
            if mode == "eval":
                return evaluate_checkpoint(config, workdir)
            if mode == "search":
                from seqnet_jax import search

                return search.search_from_config(config, workdir)
            return train_lib.train_and_evaluate(config, workdir)


@contextlib.contextmanager
def lock_workdir(workdir: str, mode: str) -> Iterator[None]:
    """Holds ``WORKDIR/.lock`` for the run (``workdir_lock``): a second run on the workdir is
    refused with ``WorkdirLockedError`` naming the holder. Several processes: process 0 holds
    it and every process raises the same error when it is refused."""
    lock, error = None, ""
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir, f"eval.mode={mode}").acquire()
        except WorkdirLockedError as e:
            error = str(e)
    error = distributed.broadcast_object(error)  # one process: as is
    if error:
        raise WorkdirLockedError(error)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
