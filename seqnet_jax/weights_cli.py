"""The command line of ``python -m seqnet_jax.weights``: converting checkpoints between formats.

    python -m seqnet_jax.weights convert epoch_19.pth seqnet_cuhk_epoch19.npz
    python -m seqnet_jax.weights to_orbax --config configs/cuhk.py --workdir runs/cuhk_ref \\
        --config.init.reference_checkpoint=epoch_19.pth

``convert`` rewrites a torch file as ``.npz`` (:func:`seqnet_jax.weights.convert_file`, so torch
is needed once, on one machine). ``to_orbax`` (:func:`convert_reference_to_orbax`) loads a
reference checkpoint through ``seqnet_jax.model_loading`` (the loader evaluation and search use,
with its fit check) and saves it as step 0 of an orbax train state, which evaluation, search and
training then read like any checkpoint of this code base.

This lives apart from ``seqnet_jax.weights`` because it needs the model loader and the train
state, which import ``weights``; ``weights.py`` runs :func:`main` when executed as a script.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Union

from absl import logging

from seqnet_jax import weights


def convert_reference_to_orbax(
    config, checkpoint: Union[str, os.PathLike, Mapping], workdir: str
) -> Dict[str, Any]:
    """Load a reference checkpoint and save it as step 0 of ``WORKDIR/checkpoints`` (orbax).

    The model is built from ``config.model`` with the checkpoint's lookup-table (and queue) size
    (``seqnet_jax.model_loading.load_reference_checkpoint_model``). Afterwards
    ``python main.py --config ... --workdir WORKDIR --config.eval.mode=eval`` evaluates it; the
    returned ``overrides`` are the config fields that training from it would need. Returns
    ``{'directory', 'step', 'num_pids', 'overrides'}``.
    """
    import jax
    import jax.numpy as jnp

    from seqnet_jax import checkpoints as ckpt_lib
    from seqnet_jax import model_loading
    from seqnet_jax.train_lib.optimizer import make_optimizer
    from seqnet_jax.train_lib.train_state import TrainState

    directory = os.path.join(workdir, "checkpoints")
    ckpt = ckpt_lib.Checkpointer(directory, max_to_keep=max(int(config.keep_checkpoints), 1))
    try:
        if ckpt.latest_step() is not None:
            raise FileExistsError(
                f"{directory} already holds checkpoints (latest step {ckpt.latest_step()}); "
                "convert into an empty workdir"
            )
        loaded = model_loading.load_reference_checkpoint_model(config, checkpoint)
        if loaded.oim_state is None:
            raise ValueError(
                f"{loaded.source_id} has no OIM lookup table ({weights.OIM_KEYS[0]}): a train "
                "state needs one"
            )
        # The train state around the imported weights, as train_lib.train.create_train_state
        # builds it (same optimizer state and run key), without a random initialisation first.
        params = loaded.variables["params"]
        tx = make_optimizer(config.solver, params, 1)
        _, run_rng = jax.random.split(jax.random.PRNGKey(config.seed))
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=loaded.variables["batch_stats"],
            oim_state=loaded.oim_state,
            opt_state=tx.init(params),
            rng=run_rng,
        )
        meta = {
            "loader": {"epoch": 0, "position": 0},
            "step": 0,
            "num_pids": loaded.num_pids,
            "reference_checkpoint": (
                "<state dict>"
                if isinstance(checkpoint, Mapping)
                else os.path.abspath(os.fspath(checkpoint))
            ),
            "reference_epoch": loaded.meta.get("epoch"),
        }
        ckpt.save(0, state, meta)
    finally:
        ckpt.close()
    overrides = [f"--config.model.oim.lut_size={loaded.num_pids}"]
    if int(loaded.model.cq_size) != int(config.model.oim.cq_size):
        overrides.append(f"--config.model.oim.cq_size={int(loaded.model.cq_size)}")
    return {"directory": directory, "step": 0, "num_pids": loaded.num_pids, "overrides": overrides}


_USAGE = """usage:
  python -m seqnet_jax.weights convert IN.pth OUT.npz
      torch checkpoint / state dict (torchvision ResNet or reference SeqNet) -> numpy .npz
  python -m seqnet_jax.weights to_orbax --config configs/cuhk.py --workdir DIR \\
      --config.init.reference_checkpoint=IN.pth [--config.model.* ...]
      reference SeqNet checkpoint -> orbax checkpoint (step 0) in DIR/checkpoints
"""


def _to_orbax_main(argv: List[str]) -> None:  # pragma: no cover - thin absl wrapper
    from absl import app, flags
    from ml_collections import config_flags

    sys.path.insert(0, os.getcwd())  # configs/*.py import 'configs.default'
    config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Workdir to create the orbax checkpoint in.")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(args):
        if len(args) > 1:
            raise app.UsageError(f"unexpected arguments: {args[1:]}")
        logging.set_verbosity(logging.INFO)
        cfg = flags.FLAGS.config
        if not cfg.init.reference_checkpoint:
            raise app.UsageError("set --config.init.reference_checkpoint=PATH")
        res = convert_reference_to_orbax(cfg, cfg.init.reference_checkpoint, flags.FLAGS.workdir)
        cfg_file = config_flags.get_config_filename(flags.FLAGS["config"])
        print(
            f"saved step {res['step']} in {res['directory']}; evaluate with:\n  python main.py "
            f"--config {cfg_file} --workdir {flags.FLAGS.workdir} --config.eval.mode=eval "
            + " ".join(res["overrides"])
        )

    app.run(main, argv=[argv[0]] + argv[2:])


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m seqnet_jax.weights {convert,to_orbax} ...``; returns the exit status."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) >= 2 and argv[1] == "convert":
        if len(argv) != 4:
            print(_USAGE, file=sys.stderr)
            return 2
        n = weights.convert_file(argv[2], argv[3])
        print(f"wrote {n} tensors to {argv[3]}")
        return 0
    if len(argv) >= 2 and argv[1] in ("to_orbax", "to-orbax"):
        _to_orbax_main(argv)
        return 0
    print(_USAGE, file=sys.stderr)
    return 2
