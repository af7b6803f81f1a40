"""seqnet-jax entry point: train and/or evaluate SeqNet.

  python main.py --config configs/synthetic.py --workdir runs/synthetic
  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.data.root=/data/CUHK-SYSU
  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.eval.mode=eval
  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.eval.mode=search \
      --config.search.query=me.jpg --config.search.gallery=photos/ --config.search.output=found/

Any config field can be overridden with --config.<field>=<value>. A misspelled field, a value of
the wrong type or one no run can use is one line (``config error: solver.base_lrr: no such
field; did you mean base_lr?``) and exit status 2; so is every other bad input (a missing
dataset, a checkpoint that does not fit, a locked workdir): the message, no traceback, unless
--verbosity=1 asks for it.
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


def _fail(prefix: str, message: str, status: int = 2) -> None:
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def parse_flags(argv):
    """absl's flag parsing; a bad ``--config.*`` override (applied while parsing) is one line."""
    from seqnet_jax import config_checks

    spec = config_checks.config_file_arg(argv)
    if spec and not os.path.isfile(spec.partition(":")[0]):
        _fail("config error", f"--config={spec}: no such file")
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
        config = config_checks.load_config_file(spec)  # without the overrides
        if config is None:
            if not isinstance(e, flags.Error):
                raise  # an error inside the config file: its traceback is the message
        message = config_checks.describe_override_error(argv, config, e)
        about_config = config is not None and any(
            message.startswith(p) for p, _ in config_checks.overrides(argv)
        )
        _fail("config error" if about_config or "--config" in message else "usage error", message)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from seqnet_jax import config_checks, distributed, run
    from seqnet_jax.train_lib import train as train_lib

    verbose = FLAGS.verbosity >= 1  # --verbosity=1: tracebacks of user errors too
    logging.set_verbosity(logging.DEBUG if verbose else logging.INFO)
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
    except KeyboardInterrupt:
        if verbose:
            raise
        # train.py has logged what was saved; a traceback adds nothing. 130 = 128 + SIGINT.
        print("interrupted (Ctrl-C): rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except train_lib.NonFiniteLossError as e:
        if verbose:
            raise
        _fail("error", str(e), status=1)  # the message names the loss and the checkpoint kept
    except Exception as e:
        if verbose or not config_checks.is_user_error(e):
            raise
        if isinstance(e, config_checks.ConfigError):
            _fail("config error", str(e))
        _fail("error", f"{e}\n(for the traceback add --verbosity=1)")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
