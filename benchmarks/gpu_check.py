"""The prepared GPU check: one command for a short device lease (issue 16), writing as it goes.

    python benchmarks/gpu_check.py --prepare        # here, once: the carried packages → .whl/py
    bash benchmarks/gpu_check.sh                    # on the GPU machine (writes to $OUT)
    python benchmarks/gpu_check.py --tiny --out DIR # CPU dry run at tiny sizes (about a minute)

Parts, in this order, each in its own process (its own peak memory; a crash or a hang stops
only that part) with its own time guard:

  a        ``gpu_env.py``: versions, device name, CPU count, the packages the check imports,
           a first jitted call;
  b        full-size ResNet-50 float32 inference at 900×1500 with 16 boxes reaching stage 2:
           ``detect()`` median ms/frame with the device / host / transfer split, the query
           embedding, gallery frames/s at batch 1 / 4 / 8 (``benchmark.py --skip_train``);
  c        one training iteration at batch 5, float32: median ms, split, peak memory,
           compilations in the timed loop (``benchmark.py --skip_inference``);
  d_infer, d_train   the same two in bfloat16 compute;
  e        host stages alone on the machine's cores (``benchmark.py --host_only``: NMS
           5 × 12000→2000, ms/image, speed-up over the plain greedy loop);
  f        ``train_run.py``: 30 real training steps of ``configs/cuhk.py`` at full size on a
           fake CUHK-SYSU in the official format written on the spot: losses finite and
           falling, compilations after warm-up, peak memory, checkpoint save + restore.

Time guards: the whole check has ``--budget_s`` (470 s, inside the issue's 8 minutes). Each part
has a nominal share (``PARTS``); a part may run until the deadline minus the shares of the parts
after it, so time left over by a fast part goes to the next one, and a slow part is stopped (its
whole process group) without eating the later parts' time. Compile time is reported per stage:
XLA compile seconds of each jitted function (JAX's compile events) and the wall time of each
stage's first call. The parts share a persistent compilation cache in the scratch folder (not
under ``$OUT``; ``--no_cache`` turns it off): a function an earlier part compiled is loaded by
a later one, so its compile time is the earlier part's.

Output, all under ``--out`` (default ``$OUT``), rewritten after every part, 3 files (the device
tool returns at most 8): ``gpu_check.log`` (everything the parts print, as they print it),
``results.json`` (every number of every part; a part stopped by its guard keeps what it had
written: the benchmarks rewrite their JSON after each phase) and ``report.md`` (the rows of
BENCHMARKS.md's GPU table, filled from results.json by ``gpu_report.py``).

This module imports no JAX: the parts run in fresh processes and the device stays free between
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Model and data overrides of the CPU dry run (--tiny): about the shapes of tests/tiny.py.
TINY_SET = (
    "model.backbone.depth=18",
    "model.backbone.width=8",
    "model.emb_dim=16",
    "model.rpn.pre_nms_topn_train=200",
    "model.rpn.post_nms_topn_train=50",
    "model.rpn.pre_nms_topn_test=200",
    "model.rpn.post_nms_topn_test=30",
    "model.rpn.batch_size_train=32",
    "model.rpn.nms_processes=2",
    "model.roi_head.batch_size_train=16",
    "model.roi_head.pooled_size=6",
    "model.roi_head.detections_per_image_test=30",
    "model.roi_head.stage2_buckets=(8,30)",
    "model.roi_head.roi_align_impl='matmul'",
    "model.oim.cq_size=20",
    "data.num_workers=1",
)
_BENCH = os.path.join("benchmarks", "benchmark.py")
_FULL = ["--config", os.path.join("configs", "cuhk.py"), "--height", "900", "--width", "1500"]
_TINY = ["--config", os.path.join("configs", "cuhk.py"), "--height", "96", "--width", "160"]
_TINY += ["--dets", "8", "--num_pids", "8", "--warmup", "1", "--iters", "2"]
_TINY += [a for s in TINY_SET for a in ("--set", s)]
_INFER = ["--skip_train", "--dets", "16", "--gallery_batch", "1", "4", "8", "--warmup", "2"]
_TRAIN = ["--skip_inference", "--batch", "5", "--warmup", "2", "--iters", "10"]


@dataclasses.dataclass(frozen=True)
class Part:
    name: str
    what: str
    nominal_s: float  # its share of the budget (see the module docstring)
    full: Tuple[str, ...]  # script and flags on the GPU machine
    tiny: Tuple[str, ...]  # the CPU dry run's


PARTS = (
    Part(
        "a",
        "versions, device, CPU count, imports, first jitted call",
        20,
        (os.path.join("benchmarks", "gpu_env.py"),),
        (os.path.join("benchmarks", "gpu_env.py"), "--tiny"),
    ),
    Part(
        "b",
        "inference float32, 16 dets: detect() split, embed, gallery batch 1/4/8",
        95,
        (_BENCH, *_FULL, "--dtype", "float32", *_INFER, "--iters", "20"),
        (_BENCH, *_TINY, "--dtype", "float32", "--skip_train", "--gallery_batch", "1", "2"),
    ),
    Part(
        "c",
        "training iteration float32, batch 5: split, peak memory, compilations",
        85,
        (_BENCH, *_FULL, "--dtype", "float32", *_TRAIN),
        (_BENCH, *_TINY, "--dtype", "float32", "--skip_inference", "--batch", "2"),
    ),
    Part(
        "d_infer",
        "inference bfloat16 (as b)",
        65,
        (_BENCH, *_FULL, "--dtype", "bfloat16", *_INFER, "--iters", "20"),
        (_BENCH, *_TINY, "--dtype", "bfloat16", "--skip_train", "--gallery_batch", "1"),
    ),
    Part(
        "d_train",
        "training iteration bfloat16 (as c)",
        75,
        (_BENCH, *_FULL, "--dtype", "bfloat16", *_TRAIN),
        (_BENCH, *_TINY, "--dtype", "bfloat16", "--skip_inference", "--batch", "2"),
    ),
    Part(
        "e",
        "host stages alone: RPN NMS 5×12000→2000, test NMS, samplers vs plain greedy",
        25,
        (_BENCH, "--host_only", "--batch", "5", "--iters", "10"),
        (_BENCH, "--host_only", "--batch", "2", "--iters", "1", "--host_scale", "0.05")
        + ("--height", "96", "--width", "160"),
    ),
    Part(
        "f",
        "30 training steps of configs/cuhk.py at full size on a fake CUHK-SYSU, checkpoint",
        105,
        (os.path.join("benchmarks", "train_run.py"), "--steps", "30"),
        (os.path.join("benchmarks", "train_run.py"), "--tiny"),
    ),
)
PART_NAMES = tuple(p.name for p in PARTS)
OUT_FILES = ("gpu_check.log", "results.json", "report.md")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------ preparation
def _git(args: List[str]) -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def prepare(dest: str) -> List[str]:
    """Copy the packages ``gpu_env.CARRIED`` of this interpreter into ``dest/py`` (replacing
    what is there) and write ``dest/COMMIT`` (the checkout's commit, and whether tracked files
    had local changes)."""
    import importlib

    from benchmarks.gpu_env import CARRIED

    py = os.path.join(dest, "py")
    os.makedirs(py, exist_ok=True)
    copied = []
    for name in CARRIED:
        mod = importlib.import_module(name)
        src = os.path.dirname(mod.__file__)
        target = os.path.join(py, name)
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        copied.append(f"{name} {getattr(mod, '__version__', '')} from {src}")
    commit = _git(["rev-parse", "HEAD"]) or "unknown"
    dirty = _git(["status", "--porcelain", "--untracked-files=no"])
    with open(os.path.join(dest, "COMMIT"), "w") as f:
        f.write(f"{commit}{' with local changes' if dirty else ''} (prepared {now()})\n")
    return copied


def checkout_commit() -> str:
    """The commit under test: git's answer in a checkout; on the device machine, which gets a
    copy of the working tree without .git, what --prepare recorded."""
    commit = _git(["rev-parse", "HEAD"])
    if commit:
        dirty = _git(["status", "--porcelain", "--untracked-files=no"])
        return commit + (" with local changes" if dirty else "")
    try:
        with open(os.path.join(ROOT, ".whl", "COMMIT")) as f:
            return "per .whl/COMMIT: " + f.read().strip()
    except OSError:
        return "unknown"


# -------------------------------------------------------------------------------- runner
def guard_s(budget_s: float, elapsed_s: float, index: int, parts=PARTS) -> float:
    """Seconds part ``index`` may run: the budget left minus the shares of the parts after it."""
    return budget_s - elapsed_s - sum(p.nominal_s for p in parts[index + 1 :])


def _kill_group(pgid: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.5)


def jax_env(work: str, tiny: bool, cache: bool = True) -> dict:
    """JAX settings of the parts' processes.

    ``cache``: one persistent compilation cache in the scratch folder (never under ``$OUT``),
    shared by the parts, so a function an earlier part compiled (the model's random init in b,
    c, d and f; the training propose and stage 1 in c and f) is loaded, not compiled again, by
    a later one: its first compile time is the one reported. ``tiny`` (the CPU dry run, which
    checks that every part runs, not its speed): XLA's cheap compile mode too (the tiny
    model's random init alone takes 20–40 s to compile otherwise on a busy 2-core VM), and
    every compile cached."""
    env = {}
    if cache:
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(work, "jax_cache")
    if tiny:
        env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"
        if cache:
            env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
            env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def run_part(cmd: List[str], guard: float, log, env: dict) -> Tuple[str, float]:
    """Run ``cmd`` in a process group of its own with its output appended to ``log``; after
    ``guard`` seconds the whole group is stopped. Returns ``(status, wall seconds)``."""
    t0 = time.perf_counter()
    # a process group of its own (no preexec_fn where Python can do it: nothing runs between
    # fork and exec, which matters when the caller has imported JAX)
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, **group)
    try:
        rc = proc.wait(timeout=max(guard, 1.0))
        status = "ok" if rc == 0 else f"failed (exit code {rc})"
    except subprocess.TimeoutExpired:
        status = f"stopped by its time guard after {guard:.0f} s"
        _kill_group(proc.pid)
        proc.wait()
    _kill_group(proc.pid)  # worker processes (the NMS pool) a failed part may leave behind
    return status, time.perf_counter() - t0


def orchestrate(args) -> int:
    from benchmarks.gpu_report import render

    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    results = {
        "started": now(),
        "commit": checkout_commit(),
        "tiny": args.tiny,
        "budget_s": args.budget_s,
        "parts": {},
    }
    parts = [p for p in PARTS if p.name in args.parts]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for k, v in jax_env(args.work, args.tiny, not args.no_cache).items():
        env.setdefault(k, v)  # what the caller set wins
    results["jax_env"] = {k: v for k, v in env.items() if k.startswith(("JAX_", "XLA_"))}
    t_start = time.perf_counter()
    all_ok = True
    report = ""
    with open(os.path.join(args.out, "gpu_check.log"), "a") as log:
        for i, part in enumerate(parts):
            guard = guard_s(args.budget_s, time.perf_counter() - t_start, i, parts)
            part_json = os.path.join(args.work, f"{part.name}.json")
            if os.path.exists(part_json):
                os.remove(part_json)
            cmd = [sys.executable, *(part.tiny if args.tiny else part.full), "--json", part_json]
            if part.name == "f":
                cmd += ["--work", args.work]
            shown = " ".join(cmd[1:])
            entry = {"what": part.what, "command": shown, "guard_s": round(guard, 1)}
            header = f"===== part {part.name}: {part.what} (guard {guard:.0f} s, {now()})"
            log.write(f"\n{header}\n$ python {shown}\n")
            log.flush()
            print(header, flush=True)
            if guard < 5:
                entry["status"], entry["wall_s"] = "skipped: no time left in the budget", 0.0
            else:
                entry["status"], wall = run_part(cmd, guard, log, env)
                entry["wall_s"] = round(wall, 1)
            all_ok &= entry["status"] == "ok"
            entry["result"] = read_json(part_json)
            results["parts"][part.name] = entry
            results["elapsed_s"] = round(time.perf_counter() - t_start, 1)
            line = f"----- part {part.name}: {entry['status']} ({entry['wall_s']} s)"
            log.write(line + "\n")
            log.flush()
            print(line, flush=True)
            write_json(os.path.join(args.out, "results.json"), results)
            report = render(results)
            with open(os.path.join(args.out, "report.md"), "w") as f:
                f.write(report)
    print("\n" + report)
    print("wrote " + ", ".join(os.path.join(args.out, f) for f in OUT_FILES))
    return 0 if all_ok else 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        default=os.environ.get("OUT") or os.path.join(ROOT, "runs", "gpu_check"),
        help="output folder (default $OUT, else runs/gpu_check)",
    )
    p.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    p.add_argument("--budget_s", type=float, default=470.0, help="wall budget of all parts")
    p.add_argument("--tiny", action="store_true", help="CPU dry run at tiny sizes")
    p.add_argument(
        "--no_cache",
        action="store_true",
        help="no compilation cache shared by the parts (every part compiles everything)",
    )
    p.add_argument("--parts", nargs="+", choices=PART_NAMES, default=list(PART_NAMES))
    p.add_argument(
        "--prepare",
        action="store_true",
        help="copy the packages the GPU machine lacks into .whl/py and stop",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare:
        for line in prepare(os.path.join(ROOT, ".whl")):
            print(f"copied {line}")
        print(f"wrote {os.path.join(ROOT, '.whl', 'COMMIT')}; carry '.whl' in the device call")
        return 0
    args.work = args.work or tempfile.mkdtemp(prefix="seqnet_gpu_check_")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
