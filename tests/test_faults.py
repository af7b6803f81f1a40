"""Faults a new user meets: resuming with another model config, the workdir's config.json;
interrupting and resuming (Ctrl-C, kill -9, crashes), bad images, diverging training."""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from seqnet_jax import run
from seqnet_jax.model_loading import CheckpointMismatchError
from seqnet_jax.train_lib import train as train_lib
from tests import fault_config
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


# -- interrupting and resuming ---------------------------------------------------------------------
# One workdir goes through: a main.py run stopped by Ctrl-C in the middle of step 4 (its input
# state donated), a second run resuming it and stopped by Ctrl-C in the final evaluation, and an
# in-process rerun that runs the missing evaluation. A reference run without interruption (next
# to the first one, on the other core) gives the losses and parameters they must reproduce.

REPO = Path(__file__).resolve().parents[1]
STEPS = 6  # one epoch of the tiny config (12 images, batch 2)


def _env(**extra) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        # share compiled programs with the rest of the suite (tests/conftest.py)
        JAX_COMPILATION_CACHE_DIR=str(REPO / ".pytest_cache" / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
        SEQNET_PROGRESS="log",
    )
    env.update(extra)
    return env


def _main(workdir, log_path, *flags, **env) -> subprocess.Popen:
    """main.py with tests/fault_config.py (train_and_eval, STEPS steps), output to log_path."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [
                sys.executable,
                str(REPO / "main.py"),
                "--config",
                f"{REPO / 'tests' / 'fault_config.py'}:{STEPS}",
                f"--workdir={workdir}",
                *flags,
            ],
            cwd=REPO,
            env=_env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_for(log_path, text: str, proc: subprocess.Popen, timeout: float = 120) -> str:
    """The log once it holds ``text`` (fails if the process ends first or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = Path(log_path).read_text()
        if text in log:
            return log
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before {text!r}:\n{log[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {text!r} within {timeout} s:\n{Path(log_path).read_text()[-3000:]}")


def _finish(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _tb_losses(workdir) -> dict:
    """``{step: loss}`` from every TensorBoard event file of the workdir (tensorboardX's records:
    8-byte length, 4-byte CRC, an Event proto, 4-byte CRC)."""
    from tensorboardX.proto import event_pb2

    out = {}
    for f in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*"))):
        data, i = Path(f).read_bytes(), 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i : i + 8])
            event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                if v.tag == "loss":
                    out[event.step] = v.simple_value
    return out


def _checkpoint(workdir, config):
    from seqnet_jax.checkpoints import Checkpointer
    from seqnet_jax.data import build_dataset
    from seqnet_jax.modeling import seqnet

    model = seqnet.build_model(config.model, build_dataset(config).num_train_pids)
    ck = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        state, meta, step = ck.restore(train_lib.abstract_train_state(config, model))
    finally:
        ck.close()
    return jax.device_get(state), meta, step


def _capture_losses(mp, losses: dict) -> None:
    mp.setattr(
        train_lib.MetricWriter,
        "scalars",
        lambda self, step, values: losses.setdefault(step, values["loss"]),
    )


@pytest.fixture(scope="module")
def ctrl_c(tmp_path_factory):
    """The processes of the scenario, overlapped on the two cores:

    - the first run, paused after step 3's iteration: a second run on its workdir is refused;
      Ctrl-C; it finishes the step, saves and stops;
    - next to it, a run paused in the same place with a checkpoint every 2 steps: kill -9, then
      resumed in process to step 4;
    - the reference run (train mode, a checkpoint every 3 steps: periodic, epoch-end and last
      step coincide at step 6);
    - the second run on the first's workdir: resumes, trains to step 6, Ctrl-C once the final
      evaluation has started.
    """
    tmp = tmp_path_factory.mktemp("ctrl_c")
    work, release = tmp / "work", tmp / "release"
    pause = dict(SEQNET_TEST_PAUSE_AFTER_STEP="3", SEQNET_TEST_RELEASE=str(release))
    out = {"work": work, "tmp": tmp, "ref": tmp / "ref", "killed": tmp / "killed"}
    first = _main(work, tmp / "first.log", **pause)
    killed = _main(tmp / "killed", tmp / "killed.log", "--config.checkpoint_every_steps=2", **pause)
    procs = [first, killed]
    try:
        ref_config = fault_config.get_config(str(STEPS))
        ref_config.eval.mode, ref_config.checkpoint_every_steps = "train", 3
        out["ref_losses"] = {}
        with pytest.MonkeyPatch.context() as mp:
            _capture_losses(mp, out["ref_losses"])
            train_lib.train_and_evaluate(ref_config, str(out["ref"]))
        _wait_for(tmp / "killed.log", fault_config.PAUSED, killed)
        killed.kill()  # kill -9
        killed.wait(timeout=60)
        _wait_for(tmp / "first.log", fault_config.PAUSED, first)
        refused = _main(work, tmp / "refused.log")  # a second run on the workdir
        out["refused_rc"] = _finish(refused)
        out["refused"], out["pid"] = (tmp / "refused.log").read_text(), first.pid
        first.send_signal(signal.SIGINT)
        _wait_for(tmp / "first.log", "Ctrl-C: stopping once the current step is done", first)
        release.touch()
        out["rc"] = _finish(first)
        out["log"] = (tmp / "first.log").read_text()

        second = _main(work, tmp / "second.log")
        procs.append(second)
        # meanwhile: the killed run resumed in this process
        config = fault_config.get_config("4")
        config.eval.mode, config.checkpoint_every_steps = "train", 2
        out["killed_ckpts"] = sorted(os.listdir(out["killed"] / "checkpoints"))
        out["killed_losses"] = {}
        with pytest.MonkeyPatch.context() as mp:
            _capture_losses(mp, out["killed_losses"])
            run.run(config, str(out["killed"]))  # the stale lock of the killed run is taken over
        _wait_for(tmp / "second.log", "evaluating step6", second)  # the final evaluation began
        second.send_signal(signal.SIGINT)
        out["rc2"] = _finish(second)
        out["log2"] = (tmp / "second.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def test_ctrl_c_mid_step_saves_the_last_completed_step_and_a_second_run_is_refused(ctrl_c):
    assert ctrl_c["rc"] == 130  # 128 + SIGINT, after the message and without a traceback
    log = ctrl_c["log"]
    assert "interrupted (Ctrl-C): rerun the same command to resume" in log
    assert "Traceback" not in log
    assert "saved step 3: rerun the same command to resume from it" in log
    assert "StepAlreadyExistsError" not in log and "has been deleted" not in log
    # steps 1-3 were logged (step 3 too, though Ctrl-C came during it), as the reference's
    ref = ctrl_c["ref_losses"]
    got = {s: v for s, v in _tb_losses(ctrl_c["work"]).items() if s <= 3}
    assert sorted(got) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in got], [ref[s] for s in got], rtol=1e-4)
    # the second run on the workdir was refused in one line naming the first (a user error)
    assert ctrl_c["refused_rc"] == 2
    (line,) = [x for x in ctrl_c["refused"].splitlines() if x.startswith("error: ")]
    assert "WorkdirLockedError" not in ctrl_c["refused"] and "Traceback" not in ctrl_c["refused"]
    assert f"is in use by pid {ctrl_c['pid']} on {socket.gethostname()}" in line
    assert "eval.mode=train_and_eval" in line
    # the reference run saved step 6 once (periodic, epoch end and last step coincide)
    assert sorted(os.listdir(ctrl_c["ref"] / "checkpoints")) == ["3", "6"]


def test_kill_9_resumes_from_the_last_periodic_checkpoint_exactly(ctrl_c):
    # killed in step 4's place: the periodic checkpoint of step 2 is the last
    assert ctrl_c["killed_ckpts"] == ["2"]
    ref, got = ctrl_c["ref_losses"], ctrl_c["killed_losses"]
    assert sorted(got) == [3, 4]
    np.testing.assert_allclose([got[3], got[4]], [ref[3], ref[4]], rtol=1e-4)
    config = fault_config.get_config("4")
    _, meta, step = _checkpoint(ctrl_c["killed"], config)
    assert step == 4 and meta["loader"] == {"epoch": 0, "position": 4}


def test_resume_after_ctrl_c_is_exact_and_an_interrupted_evaluation_is_rerun(ctrl_c, caplog):
    work, config = ctrl_c["work"], fault_config.get_config(str(STEPS))
    log = ctrl_c["log2"]
    assert ctrl_c["rc2"] == 130, log[-3000:]
    # resumed after the step Ctrl-C came in, at the loader position after its batch
    assert "resumed from step 3 (epoch 0, batch 3)" in log
    assert "interrupted (Ctrl-C) during the evaluation of step 6" in log
    assert "StepAlreadyExistsError" not in log
    results = work / "eval" / "step6" / "results.json"
    assert not results.exists()
    # steps 4-6 after the resume are the uninterrupted run's: losses and final parameters
    ref, got = ctrl_c["ref_losses"], _tb_losses(work)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in ref], [ref[s] for s in ref], rtol=1e-4)
    a, _, sa = _checkpoint(ctrl_c["ref"], config)
    b, meta, sb = _checkpoint(work, config)
    assert sa == sb == STEPS and meta["loader"] == {"epoch": 1, "position": 0}
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
    # the rerun finds the run trained but not evaluated: it evaluates
    with caplog.at_level("INFO"):
        out = run.run(config, str(work))
    assert "step 6 has no evaluation results yet: evaluating it now" in caplog.text
    assert results.exists() and out["num_queries"] == json.loads(results.read_text())["num_queries"]
    caplog.clear()
    with caplog.at_level("INFO"):
        assert run.run(config, str(work)) == {}
    assert "the run is already complete: step 6 of 6" in caplog.text
    assert f"results in {results.parent}" in caplog.text
    assert "evaluating step6" not in caplog.text


# -- images that fail to decode mid-run; crashes ---------------------------------------------------


@pytest.fixture(scope="module")
def custom_data(tmp_path_factory):
    """The tiny synthetic dataset in our format (explicit TestG8 protocol and queries)."""
    from seqnet_jax.data import convert

    root = tmp_path_factory.mktemp("custom") / "data"
    params = tiny_config().data.synthetic.to_dict()
    assert convert.convert_synthetic(root, params=params, seed=0, with_protocols=True).ok
    return root


def _custom_config(root, max_steps):
    config = tiny_config(max_steps)
    config.data.dataset, config.data.root = "custom", str(root)
    config.eval.max_queries = -1
    return config


def _truncated_jpeg(root: Path, image_id: int) -> str:
    """Image ``image_id`` of ``root`` re-written as a JPEG cut in half (the header, and so the
    start-up check, still reads); returns its new file name."""
    from PIL import Image

    doc = json.loads((root / "annotations.json").read_text())
    (im,) = [im for im in doc["images"] if im["id"] == image_id]
    src = root / "images" / im["file_name"]
    im["file_name"] = Path(im["file_name"]).with_suffix(".jpg").as_posix()
    dst = root / "images" / im["file_name"]
    Image.open(src).convert("RGB").save(dst, quality=95)
    dst.write_bytes(dst.read_bytes()[: dst.stat().st_size // 2])
    src.unlink()
    (root / "annotations.json").write_text(json.dumps(doc))
    return im["file_name"]


def _train_image_at(config, step: int) -> int:
    """The id of an image of the training batch of ``step`` (1-based, epoch 0)."""
    from seqnet_jax.data import build_dataset
    from seqnet_jax.data.pipeline import TrainLoader

    ds = build_dataset(config)
    d = config.data
    loader = TrainLoader(
        ds.train,
        None,
        batch_size=d.batch_size,
        seed=config.seed,
        group_by_aspect_ratio=d.group_by_aspect_ratio,
    )
    name = ds.train[int(loader.epoch_order(0)[(step - 1) * config.data.batch_size])].name
    doc = json.loads((Path(config.data.root) / "annotations.json").read_text())
    return next(im["id"] for im in doc["images"] if im["file_name"] == name)


def test_skip_bad_images_skips_images_that_fail_to_decode_in_training_and_evaluation(
    custom_data, tmp_path, caplog
):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(custom_data, root)
    config = _custom_config(root, max_steps=6)  # one epoch: every training image
    config.eval.mode = "train_and_eval"
    config.data.skip_bad_images = True
    doc = json.loads((root / "annotations.json").read_text())
    query_image = doc["queries"][0]["image_id"]  # a gallery image with a query on it
    bad_train = _truncated_jpeg(root, _train_image_at(config, 2))
    bad_gallery = _truncated_jpeg(root, query_image)
    work = tmp_path / "work"
    with caplog.at_level("WARNING"):
        results = train_lib.train_and_evaluate(config, str(work))
    for name in (bad_train, bad_gallery):
        assert f"could not load image '{name}'" in caplog.text
        assert "skipped (data.skip_bad_images)" in caplog.text
    assert (work / "checkpoints" / "6").exists()
    # evaluation: the image and the query on it are dropped, as bad images at start-up are
    saved = json.loads((work / "eval" / "step6" / "results.json").read_text())
    assert saved["skipped_bad_images"] == [bad_gallery] == results["skipped_bad_images"]
    assert saved["num_gallery_images"] == len(doc["splits"]["test"]) - 1
    on_it = sum(q["image_id"] == query_image for q in doc["queries"])
    assert saved["num_queries"] == len(doc["queries"]) - on_it
    msg = f"without 1 image(s) that could not be decoded (data.skip_bad_images): {bad_gallery}"
    assert msg in caplog.text
    assert not list((work / "eval_cache").glob("*.npz"))  # features without it are not cached


def test_a_crash_mid_training_saves_the_last_completed_step(custom_data, tmp_path, caplog):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(custom_data, root)
    config = _custom_config(root, max_steps=6)
    bad = _truncated_jpeg(root, _train_image_at(config, 3))  # step 3 cannot be built
    work = tmp_path / "work"
    with caplog.at_level("WARNING"), pytest.raises(RuntimeError, match=f"{bad}.*truncated"):
        train_lib.train_and_evaluate(config, str(work))
    assert "stopped by RuntimeError: saving a checkpoint of step 2" in caplog.text
    _, meta, step = _checkpoint(str(work), config)
    assert step == 2 and meta["loader"] == {"epoch": 0, "position": 2}


# -- diverging training ----------------------------------------------------------------------------


def test_diverging_training_saves_no_diverged_state_and_names_the_checkpoint_kept(
    tmp_path, monkeypatch
):
    from seqnet_jax.checkpoints import Checkpointer

    config = tiny_config(max_steps=6)
    config.checkpoint_every_steps = 1
    config.solver.base_lr = 1e6  # parameters beyond 1e6 after step 3
    with pytest.raises(train_lib.NonFiniteLossError) as e:
        train_lib.train_and_evaluate(config, str(tmp_path))
    msg = str(e.value)
    kept = sorted(int(x) for x in os.listdir(tmp_path / "checkpoints") if x.isdigit())[-1]
    assert f"at step {kept + 1}" in msg and "not saved" in msg
    assert f"The last checkpoint, step {kept} (" in msg and "has finite parameters" in msg
    state, meta, step = _checkpoint(tmp_path, config)
    assert step == kept and not train_lib.diverged_params(state.params)
    # A checkpoint that already holds diverged parameters (e.g. an older version's): the stop
    # says so and names the last one with finite parameters.
    leaves, tree = jax.tree.flatten(state.params)
    leaves[0] = np.full_like(leaves[0], np.nan)
    ck = Checkpointer(str(tmp_path / "checkpoints"))
    bad = state.replace(step=np.int32(kept + 1), params=tree.unflatten(leaves))
    ck.save(kept + 1, bad, dict(meta, step=kept + 1))
    ck.close()

    def nan_iteration(self, state, batch):
        metrics = {k: float("nan") for k in train_lib.LOSS_NAMES}
        metrics.update(loss=float("nan"), grad_norm=1.0)
        return state.replace(step=state.step + 1), metrics

    monkeypatch.setattr(train_lib.Trainer, "iteration", nan_iteration)
    with pytest.raises(train_lib.NonFiniteLossError) as e:
        train_lib.train_and_evaluate(config, str(tmp_path))
    msg = str(e.value)
    assert f"at step {kept + 2}" in msg and "without saving this state" in msg
    assert f"The checkpoint(s) of step {kept + 1} (" in msg and "already hold diverged" in msg
    assert f"step {kept} is the last one with finite parameters" in msg
    assert sorted(os.listdir(tmp_path / "checkpoints"))[-1] == str(kept + 1)  # nothing new
