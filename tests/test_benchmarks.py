"""The benchmark entry point and its shared helpers (no model is run here; the GPU check's CPU
dry run in test_gpu_check.py runs every measuring module at tiny sizes)."""

import os
import re
import shlex

import numpy as np
import pytest

from benchmarks import benchmark, common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _documented_commands(script: str):
    """Every ``python benchmarks/<script> ...`` command in BENCHMARKS.md's bash blocks, with
    backslash continuations joined, as argument lists (``$OUT`` kept as a plain word)."""
    text = open(os.path.join(ROOT, "BENCHMARKS.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if f"benchmarks/{script}" not in line:
                continue
            words = shlex.split(line)
            i = next(k for k, w in enumerate(words) if w.endswith(f"benchmarks/{script}"))
            commands.append(words[i + 1 :])
    return commands


def test_every_documented_benchmark_command_parses():
    commands = _documented_commands("benchmark.py")
    assert len(commands) >= 8  # CPU validation, host, compile_only and the GPU commands
    for argv in commands:
        args = benchmark.parse_args(argv)  # argparse exits on an unknown or malformed flag
        assert args.iters > 0 and args.warmup >= 0


def test_every_documented_gpu_check_command_parses():
    from benchmarks import gpu_check

    commands = _documented_commands("gpu_check.sh") + _documented_commands("gpu_check.py")
    assert ["--tiny", "--out", "/tmp/gpu_check"] in commands and ["--prepare"] in commands
    for argv in commands:
        gpu_check.parse_args(argv)


def test_unknown_flag_is_refused():
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--no_such_flag"])


def test_split_rows_sum_by_kind():
    split = {
        "h2d images": {"median_ms": 1.0, "min_ms": 0.5},
        "device: propose": {"median_ms": 10.0, "min_ms": 9.0},
        "host: RPN NMS": {"median_ms": 2.5, "min_ms": 2.0},
        "device: stage1": {"median_ms": 4.0, "min_ms": 3.0},
        "d2h stage1": {"median_ms": 0.25, "min_ms": 0.2},
    }
    order = ("h2d images", "device: propose", "host: RPN NMS", "device: stage1", "d2h stage1")
    rows = common.split_rows(split, order + ("device: stage2",))  # absent stages are skipped
    assert rows[:5] == [
        ("h2d images", "1.00", "0.50"),
        ("device: propose", "10.00", "9.00"),
        ("host: RPN NMS", "2.50", "2.00"),
        ("device: stage1", "4.00", "3.00"),
        ("d2h stage1", "0.25", "0.20"),
    ]
    assert rows[5:] == [
        ("**sum device**", "14.00", ""),
        ("**sum host**", "2.50", ""),
        ("**sum transfer**", "1.25", ""),
        ("**sum of the split**", "17.75", ""),
    ]


def test_samples_and_median_after_warmup():
    calls = []
    m, times = common.median_ms(lambda: calls.append(1), warmup=2, iters=3)
    assert len(calls) == 5 and len(times) == 3 and m >= 0
    rec = common.Samples()
    rec.data["x"] = [0.003, 0.001, 0.002]
    s = rec.summary()["x"]
    assert (s["median_ms"], s["min_ms"], s["n"]) == (pytest.approx(2.0), pytest.approx(1.0), 3)
    assert np.isnan(rec.median_ms("absent"))


def test_make_batch_pads_to_the_pipeline_canvas_with_valid_person_boxes():
    b = common.make_batch(np.random.default_rng(0), 2, 90, 150, 8, 3, 10)
    assert b["images"].shape == (2,) + common.canvas_for(90, 150) + (3,)
    assert b["box_valid"].sum(1).tolist() == [3, 3]
    boxes = b["boxes"][b["box_valid"]]
    assert (boxes[:, 2] <= 150).all() and (boxes[:, 3] <= 90).all()
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    pids = b["pids"][b["box_valid"]]
    assert ((pids == -1) | ((pids >= 1) & (pids <= 10))).all() and (pids >= 1).any()
