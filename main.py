"""seqnet-jax entry point: train and/or evaluate SeqNet.

  python main.py --config configs/synthetic.py --workdir runs/synthetic
  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.data.root=/data/CUHK-SYSU
  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.eval.mode=eval
  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.eval.mode=search \
      --config.search.query=me.jpg --config.search.gallery=photos/ --config.search.output=found/

Any config field can be overridden with --config.<field>=<value>; a misspelled field is an error.
"""

import logging as pylogging
import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, evaluation outputs.")
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from seqnet_jax import distributed, run

    logging.set_verbosity(logging.INFO)
    # orbax logs every step of every save at INFO through absl; keep its warnings only.
    logging.get_absl_handler().addFilter(
        lambda r: r.levelno >= pylogging.WARNING or "orbax" not in r.pathname
    )
    try:
        run.run(FLAGS.config, FLAGS.workdir)
    except distributed.LostProcessError:
        # Another process died: leave now. JAX's exit handler would first wait for the lost
        # process at its shutdown barrier (up to distributed.heartbeat_timeout_s) and abort.
        traceback.print_exc()
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)


if __name__ == "__main__":
    app.run(main)
