"""Several processes as one run (jax.distributed, gloo collectives on CPU, coordinator on
127.0.0.1): the same numbers as one device, checkpoints across process counts, evaluation split
over processes, faults and bad input. (Also the test of one process on a 2-device mesh.)

The runs share one fixture: (a) 1 process x 1 device, (b) 1 process x 2 devices and (c) 2
processes x 1 device train the tiny config 3 steps ((a) one more, from its step-3 checkpoint
on: the uninterrupted reference), (c) evaluates at the end with 2 processes. Every run is a
subprocess with a timeout; a shared persistent compilation cache makes the later runs cheap.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from seqnet_jax import distributed as dist
from seqnet_jax import launch
from tests.tiny import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
TIMEOUT = 420  # seconds for any one run (a 2-core CI machine compiling the tiny model)
# The same flags for every training run: equal programs, so the compilation cache is shared.
COMMON = [
    "--config.keep_checkpoints=6",
    "--config.model.rpn.nms_processes=0",  # no NMS worker processes next to 2 CPU processes
    "--config.model.roi_head.score_thresh_test=0.0",  # an untrained model still detects
]
LOSSES = ("loss_rpn_reg", "loss_rpn_cls", "loss_proposal_reg", "loss_proposal_cls")
LOSSES += ("loss_box_reg", "loss_box_cls", "loss_box_reid", "loss")


def _env(cache: str, devices: int = 1) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.update(
        JAX_COMPILATION_CACHE_DIR=cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    # Every run compiles with the same (fast) settings: the runs compare 1 and N processes, not
    # compiler settings; the tiny model's steps are cheap next to its compilation.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    if devices > 1:
        env["XLA_FLAGS"] += f" --xla_force_host_platform_device_count={devices}"
    return env


def _worker(workdir, steps: int, *flags) -> list:
    return (
        [WORKER, "--config", f"tests/tiny.py:{steps}", "--workdir", str(workdir)]
        + COMMON
        + [*flags]
    )


def _start(cmd, env, log):
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True
    )


def _finish(proc, log, timeout=TIMEOUT) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{log} still running after {timeout} s:\n{open(log).read()[-3000:]}")
    text = open(log).read()
    assert proc.returncode == 0, f"{log} exit status {proc.returncode}:\n{text[-4000:]}"
    return text


def _metrics(workdir, process: int = 0) -> list:
    with open(os.path.join(workdir, f"metrics_{process}.json")) as f:
        return json.load(f)


def _state(workdir, step: int):
    """The train state of a checkpoint, restored in this (1-process, 1-device) test process."""
    from seqnet_jax import checkpoints
    from seqnet_jax.data import build_dataset
    from seqnet_jax.modeling import seqnet
    from seqnet_jax.train_lib import train as train_lib

    config = tiny_config()
    model = seqnet.build_model(config.model, build_dataset(config).num_train_pids)
    ck = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    try:
        state, meta, _ = ck.restore(train_lib.abstract_train_state(config, model), step)
    finally:
        ck.close()
    return jax.device_get(state), meta


def _assert_states_equal(a, b):
    for tree in ("params", "batch_stats", "oim_state"):
        pa = jax.tree_util.tree_flatten_with_path(getattr(a, tree))[0]
        for (path, x), y in zip(pa, jax.tree.leaves(getattr(b, tree)), strict=True):
            scale = max(float(np.max(np.abs(x))), 1e-3)
            np.testing.assert_allclose(
                x, y, rtol=1e-4, atol=1e-5 * scale, err_msg=f"{tree}{jax.tree_util.keystr(path)}"
            )
    # the OIM lookup table, circular queue and queue pointer
    oa, ob = a.oim_state["reid_loss"], b.oim_state["reid_loss"]
    assert set(oa) == {"lut", "cq", "header"}
    assert int(oa["header"]) == int(ob["header"]) and int(oa["header"]) > 0


def _search_inputs(folder) -> list:
    """A gallery folder of the tiny dataset's gallery images, a query image and box: the
    ``--config.search.*`` flags of a search."""
    from PIL import Image

    from seqnet_jax.data import build_dataset

    dataset = build_dataset(tiny_config())
    gallery = folder / "gallery"
    gallery.mkdir(parents=True)
    for ann in dataset.gallery[:6]:
        image = dataset.load_image("gallery", ann.name)
        Image.fromarray(image).save(gallery / f"{os.path.basename(ann.name)}.png")
    q = dataset.queries[0]
    Image.fromarray(dataset.load_image("query", q.name)).save(folder / "query.png")
    return [
        "--then_search",
        f"--config.search.query={folder / 'query.png'}",
        "--config.search.query_box=" + ",".join(f"{v:.1f}" for v in q.box),
        f"--config.search.gallery={gallery}",
        "--config.search.cbgm=True",
        "--config.search.jax_cache=False",
        "--config.search.batch_size=2",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("distributed")
    cache = str(base / "jax_cache")
    a, b, c = base / "a", base / "b", base / "c"
    search = _search_inputs(base / "search_inputs")
    # (a), (b) and (c) at once (the machine's cores are shared; the programs differ anyway).
    # (a) runs 5 steps with a checkpoint at each: the reference of the resumed runs below.
    pa = _start(
        [sys.executable] + _worker(a, 5, "--config.checkpoint_every_steps=1"),
        _env(cache),
        base / "a.log",
    )
    pb = _start(
        [sys.executable] + _worker(b, 3, "--config.checkpoint_every_steps=3"),
        _env(cache, devices=2),
        base / "b.log",
    )
    launcher = [sys.executable, "-m", "seqnet_jax.launch", "--num_processes", "2", "--cpu", "--"]
    # (c) also evaluates at its end and then searches, both with 2 processes.
    flags = ["--config.checkpoint_every_steps=3", "--config.eval.mode=train_and_eval"] + search
    pc = _start(launcher + _worker(c, 3, *flags), _env(cache), base / "c.log")
    logs = {k: _finish(p, base / f"{k}.log") for k, p in (("a", pa), ("b", pb), ("c", pc))}
    return {"base": base, "cache": cache, "a": a, "b": b, "c": c, "logs": logs, "search": search}


def test_same_losses_parameters_and_oim_state_as_one_device(runs):
    """(a) 1x1, (b) 1x2 and (c) 2x1 give the same losses at every step, parameters, BN
    statistics and OIM lookup table / queue / pointer after 3 steps."""
    ref = _metrics(runs["a"])[:3]
    assert len(ref) == 3
    for name, got in (
        ("1 process x 2 devices", _metrics(runs["b"])),
        ("2 processes x 1 device (process 0)", _metrics(runs["c"], 0)),
        ("2 processes x 1 device (process 1)", _metrics(runs["c"], 1)),
    ):
        assert len(got) == 3, name
        for step, (r, g) in enumerate(zip(ref, got), 1):
            for k in LOSSES + ("grad_norm",):
                assert g[k] == pytest.approx(r[k], rel=1e-4), f"{name}: step {step} {k}"
    a3, meta_a = _state(runs["a"], 3)
    for other in ("b", "c"):
        s3, meta = _state(runs[other], 3)  # (c)'s was written by 2 processes: restores in 1
        assert meta["loader"] == meta_a["loader"] == {"epoch": 0, "position": 3}
        _assert_states_equal(a3, s3)


def test_two_process_checkpoint_resumes_in_one_process_as_uninterrupted(runs):
    resumed = runs["base"] / "c_resumed"
    shutil.copytree(
        runs["c"], resumed, ignore=shutil.ignore_patterns("eval*", "metrics_*", "search")
    )
    p = _start(
        [sys.executable] + _worker(resumed, 4), _env(runs["cache"]), runs["base"] / "resume.log"
    )
    _finish(p, runs["base"] / "resume.log")
    (step4,) = _metrics(resumed)  # one step: 3 -> 4
    ref = _metrics(runs["a"])[3]
    for k in LOSSES:
        assert step4[k] == pytest.approx(ref[k], rel=1e-4), k
    a4, meta_a = _state(runs["a"], 4)
    r4, meta_r = _state(resumed, 4)
    assert meta_r["loader"] == meta_a["loader"]
    _assert_states_equal(a4, r4)


def test_two_process_evaluation_equals_one_process(runs):
    """(c) evaluated with 2 processes at its end; the same checkpoint evaluated in 1 process
    gives the same features (gathered in gallery order) and metrics."""
    c = runs["c"]
    one = runs["base"] / "c_eval1"
    shutil.copytree(c, one, ignore=shutil.ignore_patterns("eval*", "metrics_*", "search"))
    flags = ["--config.eval.mode=eval", "--config.eval.checkpoint=3"] + runs["search"]
    p = _start(
        [sys.executable] + _worker(one, 3, *flags), _env(runs["cache"]), runs["base"] / "eval1.log"
    )
    _finish(p, runs["base"] / "eval1.log")
    (two_cache,) = glob.glob(str(c / "eval_cache" / "*.npz"))
    (one_cache,) = glob.glob(str(one / "eval_cache" / "*.npz"))
    assert os.path.basename(two_cache) == os.path.basename(one_cache)  # same features' key
    f2, f1 = np.load(two_cache), np.load(one_cache)
    assert sorted(f2.files) == sorted(f1.files)
    assert f1["gallery_dets"].shape[0] > 10  # every gallery image has detections
    for k in f1.files:
        np.testing.assert_allclose(f2[k], f1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    r2 = json.loads((c / "eval" / "step3" / "results.json").read_text())
    r1 = json.loads((one / "eval" / "step3" / "results.json").read_text())
    _same_json(r2, r1)
    assert r1["detection"]["all"]["num_dets"] > 0
    # outputs from process 0 only: one TensorBoard file, no training log lines from process 1
    assert len(glob.glob(str(c / "tensorboard" / "events.*"))) == 1
    log = runs["logs"]["c"]
    assert "[0] " in log and "step 3/3" in log
    assert not [ln for ln in log.splitlines() if ln.startswith("[1]") and "step 3/3" in ln]
    assert "[launch] all processes finished" in log
    # the search of (c): each process took its share of the gallery files, process 0 wrote
    s2 = json.loads((c / "search" / "results.json").read_text())
    s1 = json.loads((one / "search" / "results.json").read_text())
    assert s2["index"]["processed"] == s1["index"]["processed"] == 6
    assert s2["index"]["frames_processed"] == s1["index"]["frames_processed"] == 6
    assert s1["summary"]["num_detections"] > 0
    for d in s1["detections"] + s2["detections"]:
        d.pop("annotated")  # a path under each run's own output folder
    _same_json(s2["detections"], s1["detections"])
    _same_json(s2["summary"], s1["summary"])
    assert s2["query"]["context_boxes"] == s1["query"]["context_boxes"]


def _same_json(a, b, path="") -> bool:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        return all(_same_json(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        return all(_same_json(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
        return True
    assert a == b, path
    return True


def test_one_process_checkpoint_resumes_in_two_then_a_killed_process_stops_the_other(
    runs, tmp_path
):
    """(a)'s step-3 checkpoint (1 process) resumes in 2 processes: steps 4 and 5 equal (a)'s.
    Then kill -9 of process 1: process 0 exits non-zero at once, its error names the lost
    process, and the last checkpoint restores (a relaunch resumes from it)."""
    work = tmp_path / "run"
    shutil.copytree(runs["a"], work, ignore=shutil.ignore_patterns("metrics_*", "4", "5"))
    env = _env(runs["cache"])
    port = launch.free_port()
    flags = [
        f"--config.distributed.coordinator=127.0.0.1:{port}",
        "--config.distributed.num_processes=2",
        "--config.distributed.heartbeat_timeout_s=10",
        "--config.checkpoint_every_steps=1",
    ]
    cmds = [_worker(work, 60, *flags, f"--config.distributed.process_id={i}") for i in range(2)]
    p0 = subprocess.Popen(
        [sys.executable] + cmds[0],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    p1 = subprocess.Popen(
        [sys.executable] + cmds[1],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lines: list = []
    reached = threading.Event()

    def read():
        for line in p0.stdout:
            lines.append(line)
            if "step 6/" in line:
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(TIMEOUT), "".join(lines)[-3000:]
        p1.send_signal(signal.SIGKILL)  # not reaped: a zombie counts as dead
        t0 = time.monotonic()
        p0.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        for p in (p0, p1):
            if p.poll() is None:
                p.kill()
                p.wait()
    reader.join(10)
    out = "".join(lines)
    assert "resumed from step 3" in out, out[-3000:]
    ref = _metrics(runs["a"])
    got = _metrics(work, 0)
    for step in (4, 5):
        for k in LOSSES:
            assert got[step - 4][k] == pytest.approx(ref[step - 1][k], rel=1e-4), (step, k)
    assert p0.returncode != 0, out[-3000:]
    assert took < 30, took  # the collective fails at once; no heartbeat wait
    msg = "process 0: lost process 1 of 2 during train: another process has stopped"
    assert msg in out, out[-3000:]
    assert "LostProcessError" in out
    steps = [int(n) for n in os.listdir(work / "checkpoints") if n.isdigit()]
    assert max(steps) >= 5
    state, meta = _state(work, max(steps))  # intact: restores
    assert int(state.step) == max(steps) == meta["step"]


def test_mismatched_configs_fail_naming_the_first_differing_field(runs, tmp_path):
    env = _env(runs["cache"])
    port = launch.free_port()
    procs = []
    for i in range(2):
        flags = [
            f"--config.distributed.coordinator=127.0.0.1:{port}",
            "--config.distributed.num_processes=2",
            f"--config.distributed.process_id={i}",
            f"--config.solver.base_lr={0.01 if i == 0 else 0.02}",
            "--config.solver.gamma=0.5" if i else "--config.solver.gamma=0.1",
        ]
        procs.append(
            _start([sys.executable] + _worker(tmp_path, 1, *flags), env, tmp_path / f"{i}.log")
        )
    for i, p in enumerate(procs):
        p.wait(timeout=TIMEOUT)
        out = (tmp_path / f"{i}.log").read_text()
        assert p.returncode == 2, out[-2000:]  # a user error: the message, no traceback
        assert "error: the processes run different configs: " in out, out[-2000:]
        assert "solver.base_lr is 0.01 on process 0 but 0.02 on process 1" in out, out[-2000:]
        assert "Traceback" not in out, out[-2000:]
    assert not (tmp_path / "checkpoints").exists()  # failed before any work


def test_batch_that_does_not_divide_over_the_devices_fails_at_start_up(runs, tmp_path):
    cmd = [sys.executable] + _worker(tmp_path, 1, "--config.data.batch_size=3")
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=_env(runs["cache"], devices=2),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode != 0
    assert "data.batch_size=3 (the global batch) does not divide over the 2 devices" in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_unreachable_coordinator_fails_after_the_timeout_naming_the_address():
    config = tiny_config()
    port = launch.free_port()
    config.distributed.coordinator = f"127.0.0.1:{port}"
    config.distributed.num_processes = 2
    config.distributed.process_id = 1
    config.distributed.init_timeout_s = 1
    t0 = time.monotonic()
    with pytest.raises(dist.DistributedSetupError, match=f"coordinator at 127.0.0.1:{port}"):
        dist.initialize(config)
    assert 0.9 < time.monotonic() - t0 < 10
    assert not jax.distributed.is_initialized()


def test_process_id_out_of_range_fails_before_any_work(tmp_path):
    from seqnet_jax import run

    config = tiny_config()
    config.distributed.coordinator = "127.0.0.1:1234"
    config.distributed.num_processes = 2
    config.distributed.process_id = 2
    with pytest.raises(dist.DistributedSetupError, match=r"process_id=2 is out of range.*0\.\.1"):
        run.run(config, str(tmp_path))
    assert not os.listdir(tmp_path)
    config.distributed.process_id = 0
    config.distributed.coordinator = "localhost"
    with pytest.raises(dist.DistributedSetupError, match="expected HOST:PORT"):
        dist.settings(config.distributed)
    config.distributed.coordinator = ""
    with pytest.raises(dist.DistributedSetupError, match="needs distributed.coordinator"):
        dist.settings(config.distributed)


def test_config_difference_and_shares():
    a = tiny_config()
    b = tiny_config()
    b.distributed.process_id = 1  # may differ
    assert dist.config_fingerprint(a)[1] == dist.config_fingerprint(b)[1]
    b.solver.base_lr = 0.5
    b.seed = 7
    fa, fb = dist.config_fingerprint(a)[0], dist.config_fingerprint(b)[0]
    assert dist.first_difference(fa, fb) == ("seed", json.dumps(a.seed), "7")  # dotted-name order
    b.seed = a.seed
    fb = dist.config_fingerprint(b)[0]
    assert dist.first_difference(fa, fb) == ("solver.base_lr", "0.01", "0.5")
    # contiguous shares cover everything once, in order
    assert [list(dist.shard_range(7, i, 3)) for i in range(3)] == [[0, 1], [2, 3], [4, 5, 6]]


def test_launcher_commands_and_devices():
    cmds = launch.commands(["--config", "c.py", "--workdir", "w"], 2, "127.0.0.1:5")
    assert cmds[0][2] == cmds[1][2] == launch.MAIN
    assert cmds[1][3:] == [
        "--config",
        "c.py",
        "--workdir",
        "w",
        "--config.distributed.coordinator=127.0.0.1:5",
        "--config.distributed.num_processes=2",
        "--config.distributed.process_id=1",
    ]
    assert launch.commands(["x.py", "--a"], 1, "h:1")[0][2:4] == ["x.py", "--a"]
    assert launch.device_lists(2, 1, None) == ["0", "1"]
    assert launch.device_lists(2, 2, "4,5,6,7") == ["4,5", "6,7"]
    with pytest.raises(SystemExit, match="need 4 devices"):
        launch.device_lists(2, 2, "0,1")
    assert launch.describe_status(-9) == "killed by SIGKILL"


def test_launcher_stops_the_others_when_one_fails(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(
        "import sys, time\n"
        "pid = int([a for a in sys.argv if 'process_id=' in a][0].split('=')[1])\n"
        "print('hello from', pid, flush=True)\n"
        "sys.exit(3) if pid == 1 else time.sleep(60)\n"
    )
    out = tmp_path / "out.txt"
    t0 = time.monotonic()
    with open(out, "w") as f:
        status = launch.launch([str(script)], 2, cpu=True, grace_s=5, out=f)
    assert status == 3
    assert time.monotonic() - t0 < 20
    text = out.read_text()
    assert "[0] hello from 0" in text and "[1] hello from 1" in text
    assert "[launch] process 1 failed (exit status 3): stopping process(es) 0" in text
