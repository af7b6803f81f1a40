"""Bad configs and other user errors: one line naming the field, exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest

from seqnet_jax import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
    from configs import synthetic

    return synthetic.get_config()


def _main(tmp_path, *flags, timeout=120):
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    return proc.returncode, proc.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "--config.solver.base_lrr=0.1",
            "config error: solver.base_lrr: no such field; did you mean base_lr?",
        ),
        (
            "--config.model.backbone.dept=3",
            "config error: model.backbone.dept: no such field; did you mean depth?",
        ),
        (
            "--config.solver.base_lr=abc",
            "config error: solver.base_lr=abc: could not convert string to float: 'abc'",
        ),
        ("--config.solver.base_lr=-0.01", "config error: solver.base_lr=-0.01: expected > 0"),
    ],
)
def test_main_prints_one_line_and_exits_2(tmp_path, override, expected):
    rc, err = _main(
        tmp_path, "--config", "configs/synthetic.py", "--workdir", str(tmp_path / "w"), override
    )
    assert rc == 2, err
    assert err.strip() == expected
    assert not (tmp_path / "w").exists()  # refused before any work


def test_main_names_a_missing_config_file_and_an_unset_root(tmp_path):
    rc, err = _main(tmp_path, "--config", "configs/nope.py", "--workdir", str(tmp_path / "w"))
    assert (rc, err.strip()) == (2, "config error: --config=configs/nope.py: no such file")
    rc, err = _main(tmp_path, "--config", "configs/cuhk.py", "--workdir", str(tmp_path / "w"))
    assert rc == 2 and err.strip().startswith("config error: data.root is unset: "), err
    assert "Traceback" not in err


def test_a_missing_dataset_folder_is_the_message_without_a_traceback(tmp_path):
    flags = ["--config", "configs/cuhk.py", "--workdir", str(tmp_path / "w")]
    flags.append(f"--config.data.root={tmp_path / 'nowhere'}")
    rc, err = _main(tmp_path, *flags)
    assert rc == 2 and "Traceback" not in err, err
    assert f"\nerror: CUHK-SYSU folder not found: {tmp_path / 'nowhere'}. Download" in err
    assert err.rstrip().endswith("(for the traceback add --verbosity=1)")
    rc, err = _main(tmp_path, *flags, "--verbosity=1")
    assert rc == 1 and "Traceback" in err and "FileNotFoundError" in err


def test_missing_field_hints():
    c = _config()
    assert config_checks.missing_field(c, "solver.base_lr") is None
    assert config_checks.missing_field(c, "data.synthetic") is None
    assert (
        config_checks.missing_field(c, "solver.base_lr.x")
        == "solver.base_lr.x: solver.base_lr is a float (0.005), not a group of fields"
    )
    assert config_checks.missing_field(c, "zzz").startswith(
        "zzz: no such field; the config has: checkpoint_every_steps, data, "
    )
    argv = ["main.py", "--config", "x.py", "--config.seed=3", "--config.eval.mod", "eval"]
    assert config_checks.overrides(argv) == [("seed", "3"), ("eval.mod", "eval")]
    assert config_checks.config_file_arg(argv) == "x.py"
    assert (
        config_checks.describe_override_error(argv, c, KeyError("x"))
        == "eval.mod: no such field; did you mean mode?"
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("solver.base_lr", 0.0, "solver.base_lr=0.0: expected > 0"),
        ("solver.base_lr", float("nan"), "solver.base_lr=nan: expected a finite number"),
        ("solver.max_epochs", 0, "solver.max_epochs=0: expected >= 1"),
        ("solver.max_steps", 0, "solver.max_steps=0: expected a number of steps >= 1, or -1"),
        ("solver.gamma", -0.1, "solver.gamma=-0.1: expected > 0"),
        ("solver.sgd_momentum", 1.5, "solver.sgd_momentum=1.5: expected <= 1"),
        ("solver.weight_decay", -1e-4, "solver.weight_decay=-0.0001: expected >= 0"),
        ("solver.lr_decay_milestones", (0,), "every entry must be an epoch >= 1"),
        ("solver.lw_box_reid", -1.0, "solver.lw_box_reid=-1.0: expected >= 0"),
        ("data.batch_size", 0, "data.batch_size=0: expected >= 1"),
        ("log_every", 0, "log_every=0: expected >= 1"),
    ],
)
def test_values_no_training_run_can_use_are_refused(field, value, message):
    c = _config()
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(config_checks.ConfigError) as e:
        config_checks.check_config(c)
    assert message in str(e.value)
    c.eval.mode = "eval"  # evaluation does not read the solver
    if not field.startswith(("solver", "data.batch", "log_every")):
        return
    config_checks.check_config(c)


def test_root_is_required_for_folder_datasets_only():
    c = _config()
    config_checks.check_config(c)  # synthetic needs no root
    for dataset in ("cuhk_sysu", "prw", "custom"):
        c.data.dataset, c.data.root = dataset, "  "
        with pytest.raises(config_checks.ConfigError, match=r"^data.root is unset: "):
            config_checks.check_config(c)
        c.data.tfds_data_dir = "/prepared"  # a prepared TFDS dataset is enough
        config_checks.check_config(c)
        c.data.tfds_data_dir = ""
    c.eval.mode = "search"  # search reads no dataset
    config_checks.check_config(c)


def test_user_errors_are_ours_and_library_errors_are_not():
    from seqnet_jax import weights

    try:
        config_checks.check_config(None)
    except AttributeError as e:  # a bug, not a user error
        assert not config_checks.is_user_error(e)
    assert config_checks.is_user_error(weights.WeightsFileError("x"))
    try:
        from seqnet_jax.data.cuhk_sysu import load_cuhk_sysu

        load_cuhk_sysu("/nonexistent/folder")
    except FileNotFoundError as e:  # raised by our own check
        assert config_checks.is_user_error(e)
    try:
        int("x")
    except ValueError as e:  # raised outside seqnet_jax
        assert not config_checks.is_user_error(e)
