"""User-facing config checks: a misspelled or ill-typed ``--config.*`` override named in one line,
and values no run can use refused before any work (each error names the field).

``main.py`` prints every error :func:`is_user_error` accepts as ``error: ...`` (a bad config
override as ``config error: ...``) and exits 2, without a traceback unless ``--verbosity=1``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
from typing import List, Optional, Tuple

import ml_collections

EXIT_USER_ERROR = 2
NEEDS_ROOT = ("cuhk_sysu", "prw", "custom")  # datasets read from data.root


class ConfigError(ValueError):
    """A config field holds a value the run cannot use; the message names the field."""


# -- the --config.* overrides ---------------------------------------------------------------------
def overrides(argv, flag: str = "config") -> List[Tuple[str, Optional[str]]]:
    """``(field path, value or None)`` of every ``--config.a.b=v`` / ``--config.a.b v`` in argv."""
    out = []
    prefix = f"--{flag}."
    for i, arg in enumerate(argv):
        if not arg.startswith(prefix):
            continue
        path, eq, value = arg[len(prefix) :].partition("=")
        if not eq:
            value = argv[i + 1] if i + 1 < len(argv) else None
        out.append((path, value))
    return out


def missing_field(config, path: str) -> Optional[str]:
    """None if ``path`` names a field of ``config``, else what is wrong, with the nearest names:
    ``solver.base_lrr: no such field; did you mean base_lr?``."""
    node, done = config, []
    for part in path.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return (
                f"{path}: {'.'.join(done)} is a {type(node).__name__} ({node!r}), not a group of "
                "fields"
            )
        keys = list(node.keys())
        if part not in keys:
            where = ".".join(done) or "the config"
            close = difflib.get_close_matches(part, keys, n=3, cutoff=0.6)
            hint = (
                f"did you mean {' or '.join(close)}?"
                if close
                else f"{where} has: {', '.join(keys)}"
            )
            return f"{path}: no such field; {hint}"
        node = node[part]
        done.append(part)
    return None


def config_file_arg(argv, flag: str = "config") -> Optional[str]:
    """The ``--config=FILE`` / ``--config FILE`` of argv (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
    return None


def load_config_file(spec: Optional[str]):
    """``get_config()`` of a config file (``FILE`` or ``FILE:ARG``) without any override; None if
    it cannot be loaded."""
    import importlib.util

    if not spec:
        return None
    path, _, arg = spec.partition(":")
    try:
        module_spec = importlib.util.spec_from_file_location("_seqnet_config_file", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        return module.get_config(arg) if arg else module.get_config()
    except Exception:
        return None


def describe_override_error(argv, config, exc: BaseException) -> str:
    """One line for an error raised while the flags were parsed: the first override naming no
    field, else the error's own first line with the flag name shortened."""
    if config is not None:
        for path, _ in overrides(argv):
            problem = missing_field(config, path)
            if problem:
                return problem
    text = str(exc).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    lines = text.splitlines()
    line = lines[0] if lines else type(exc).__name__
    return line.replace("flag --config.", "", 1)


# -- values ---------------------------------------------------------------------------------------
def _number(config, path: str, lo=None, hi=None, lo_open=False, integer=False) -> None:
    node = config
    for part in path.split("."):
        node = node[part]
    ok_type = numbers.Integral if integer else numbers.Real
    if isinstance(node, bool) or not isinstance(node, ok_type):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{path}={node!r}: expected {kind}")
    if not math.isfinite(float(node)):
        raise ConfigError(f"{path}={node!r}: expected a finite number")
    if lo is not None and (node <= lo if lo_open else node < lo):
        raise ConfigError(f"{path}={node!r}: expected {'>' if lo_open else '>='} {lo}")
    if hi is not None and node > hi:
        raise ConfigError(f"{path}={node!r}: expected <= {hi}")


def check_config(config) -> None:
    """Refuse, naming the field, values with which no run can be right: a learning rate <= 0, a
    batch < 1, milestones that are not a list of epochs, an unset ``data.root``, ..."""
    mode = config.eval.mode
    training = mode in ("train_and_eval", "train")
    if training:
        s = config.solver
        _number(config, "solver.base_lr", lo=0, lo_open=True)
        _number(config, "solver.max_epochs", lo=1, integer=True)
        _number(config, "solver.warmup_factor", lo=0, lo_open=True, hi=1)
        _number(config, "solver.gamma", lo=0, lo_open=True)
        _number(config, "solver.weight_decay", lo=0)
        _number(config, "solver.sgd_momentum", lo=0, hi=1)
        _number(config, "solver.clip_gradients")
        _number(config, "solver.max_steps", integer=True)
        if s.max_steps == 0 or s.max_steps < -1:
            raise ConfigError(
                f"solver.max_steps={s.max_steps}: expected a number of steps >= 1, or -1 (all "
                "epochs)"
            )
        ms = s.lr_decay_milestones
        if isinstance(ms, (str, bytes)) or not isinstance(ms, (tuple, list)):
            raise ConfigError(
                f"solver.lr_decay_milestones={ms!r}: expected a tuple of epochs, e.g. "
                f"--config.solver.lr_decay_milestones='({ms},)'"
            )
        for m in ms:
            if isinstance(m, bool) or not isinstance(m, numbers.Integral) or m < 1:
                raise ConfigError(
                    f"solver.lr_decay_milestones={tuple(ms)!r}: every entry must be an epoch >= 1"
                )
        for name in (
            "rpn_reg",
            "rpn_cls",
            "proposal_reg",
            "proposal_cls",
            "box_reg",
            "box_cls",
            "box_reid",
        ):
            _number(config, f"solver.lw_{name}", lo=0)
        _number(config, "data.batch_size", lo=1, integer=True)
        _number(config, "log_every", lo=1, integer=True)
        _number(config, "checkpoint_every_steps", lo=0, integer=True)
        _number(config, "keep_checkpoints", lo=1, integer=True)
    d = config.data
    uses_dataset = mode != "search"
    if uses_dataset and d.dataset in NEEDS_ROOT and not str(d.root).strip():
        if not str(d.tfds_data_dir).strip():  # a prepared TFDS dataset needs no root
            raise ConfigError(
                f"data.root is unset: data.dataset={d.dataset} reads the dataset folder given by "
                "--config.data.root=/path/to/the/unpacked/dataset"
            )


# -- which errors are the user's ------------------------------------------------------------------
def _user_error_classes() -> tuple:
    from seqnet_jax import distributed, model_loading, weights, workdir_lock
    from seqnet_jax.data import _reader_utils, convert, custom, validate
    from seqnet_jax.search import errors as search_errors

    return (
        ConfigError,
        model_loading.CheckpointMismatchError,
        weights.WeightsFileError,
        workdir_lock.WorkdirLockedError,
        distributed.DistributedSetupError,
        search_errors.SearchInputError,
        validate.DatasetValidationError,
        custom.FormatError,
        convert.ConversionError,
        _reader_utils.ImageReadError,
    )


def _raised_here(exc: BaseException) -> bool:
    """Raised by a deliberate check of ours (the innermost frame is in seqnet_jax/ or configs/),
    not by a library."""
    import seqnet_jax

    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    path = os.path.abspath(tb.tb_frame.f_code.co_filename)
    pkg = os.path.dirname(os.path.abspath(seqnet_jax.__file__))
    roots = (pkg + os.sep, os.path.join(os.path.dirname(pkg), "configs") + os.sep)
    return path.startswith(roots)


def is_user_error(exc: BaseException) -> bool:
    """A bad input the message explains (a config field, a file, a dataset, a checkpoint that
    does not fit, a locked workdir...): ``main.py`` prints it without a traceback."""
    if isinstance(exc, _user_error_classes()):
        return True
    return isinstance(exc, (ValueError, OSError)) and _raised_here(exc)
