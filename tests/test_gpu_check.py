"""The prepared GPU check (benchmarks/gpu_check.py): its CPU dry run at tiny sizes, so the script
a device lease depends on cannot rot, and its time guards, import check and report."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks import gpu_check, gpu_env, gpu_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_budget_shares_fit_the_issue_limit_and_pass_slack_on():
    shares = [p.nominal_s for p in gpu_check.PARTS]
    assert sum(shares) == 470 <= 8 * 60
    assert [p.name for p in gpu_check.PARTS] == ["a", "b", "c", "d_infer", "d_train", "e", "f"]
    # at the start part a gets exactly its share: 470 - (95 + 85 + 65 + 75 + 25 + 105)
    assert gpu_check.guard_s(470, 0, 0) == 20
    # a finished after 10 s: b gets its 95 s plus the 10 s a left over
    assert gpu_check.guard_s(470, 10, 1) == 470 - 10 - (85 + 65 + 75 + 25 + 105)
    # b overran by 30 s (stopped at its guard of 105 s): c's guard shrinks to keep d..f's shares
    assert gpu_check.guard_s(470, 145, 2) == 470 - 145 - (65 + 75 + 25 + 105)
    assert gpu_check.guard_s(470, 470, 6) == 0  # nothing left for the last part


def test_run_part_stops_the_whole_process_group_at_its_guard(tmp_path):
    pid_file = tmp_path / "child.pid"
    script = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
        """
    )
    with open(tmp_path / "log", "w") as log:
        t0 = time.perf_counter()
        status, wall = gpu_check.run_part(
            [sys.executable, "-c", script], 2.0, log, dict(os.environ)
        )
    assert status == "stopped by its time guard after 2 s"
    assert 2.0 <= wall < 10 and time.perf_counter() - t0 < 10
    assert "started" in (tmp_path / "log").read_text()
    child = int(pid_file.read_text())
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # the grandchild went with the group
        os.kill(child, 0)


def test_run_part_reports_a_failing_part(tmp_path):
    with open(tmp_path / "log", "w") as log:
        status, _ = gpu_check.run_part(
            [sys.executable, "-c", "raise SystemExit(3)"], 30, log, dict(os.environ)
        )
    assert status == "failed (exit code 3)"


def test_module_level_imports_skip_lazy_ones(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        textwrap.dedent(
            """
            import os, numpy.linalg
            from scipy import ndimage
            from . import sibling
            try:
                import tensorboardX
            except ImportError:
                import clu.metrics
            if True:
                from PIL import Image
            def f():
                import torch
            class C:
                import av
            """
        )
    )
    assert gpu_env.module_level_imports(str(src)) == {
        "os",
        "numpy",
        "scipy",
        "tensorboardX",
        "clu",
        "PIL",
    }


def test_prepare_copies_the_carried_packages(tmp_path):
    copied = gpu_check.prepare(str(tmp_path))
    assert len(copied) == len(gpu_env.CARRIED)
    for name in gpu_env.CARRIED:
        assert (tmp_path / "py" / name / "__init__.py").exists()
        assert not list((tmp_path / "py" / name).rglob("__pycache__"))
    assert (tmp_path / "COMMIT").read_text().strip()


def test_report_of_a_run_that_stopped_early():
    results = {
        "started": "t",
        "commit": "c",
        "tiny": False,
        "budget_s": 470,
        "elapsed_s": 130,
        "parts": {
            "a": {"what": "versions", "status": "ok", "wall_s": 5, "guard_s": 20, "result": {}},
            "b": {
                "what": "inference",
                "status": "stopped by its time guard after 105 s",
                "wall_s": 105,
                "guard_s": 105,
                "result": {
                    "inference": {
                        "dets_reaching_stage2_mean": 16.0,
                        "end_to_end": {"detect() end to end": {"median_ms": 6.5}},
                        "split": {
                            "device: propose": {"median_ms": 2.0},
                            "h2d images": {"median_ms": 0.25},
                            "d2h stage1": {"median_ms": 0.5},
                            "h2d query": {"median_ms": 9.0},
                        },
                        "throughput": {"1": {"frames_per_s": 150.0}},
                        "timed_compilations": [],
                    }
                },
            },
        },
    }
    text = gpu_report.render(results)
    assert "| b: inference | stopped by its time guard after 105 s | 105 | 105 |" in text
    assert "| inference ms/frame, 900×1500 (detect() median) | 6.50 (16.0 boxes" in text
    assert "| — transfers (h2d + d2h) | 0.75 | — |" in text  # the query's h2d is not counted
    assert "| — device: propose / stage1 / stage2 | 2.00 / — / — | — / — / — |" in text
    assert "| gallery frames/s by batch | 1: 150.0 | — |" in text
    assert "| XLA compilations in the timed loops: inference | 0 | — |" in text
    assert "Part f" not in text


# The dry run in the default suite runs parts a, b, e and f (the benchmark's inference path, the
# host stages and a training run through the Trainer with a checkpoint); c and d (the benchmark's
# training path in float32 and both paths in bfloat16) cost 75 of its 125 s on the 2-core CI.
# SEQNET_FULL_DRY_RUN=1 runs every part.
DRY_RUN_PARTS = (
    gpu_check.PART_NAMES
    if os.environ.get("SEQNET_FULL_DRY_RUN")
    else tuple(p for p in gpu_check.PART_NAMES if p in ("a", "b", "e", "f"))
)


@pytest.mark.slow
def test_tiny_dry_run_writes_every_part(tmp_path):
    """The check on the CPU at tiny sizes, as on the device: every part runs in its own process
    under its guard and leaves its numbers in results.json and report.md."""
    out, work = tmp_path / "out", tmp_path / "work"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--tiny"]
        + ["--out", str(out), "--work", str(work), "--parts", *DRY_RUN_PARTS],
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.perf_counter() - t0
    log = (out / "gpu_check.log").read_text()
    assert proc.returncode == 0, proc.stdout[-3000:] + log[-5000:]
    assert sorted(os.listdir(out)) == sorted(gpu_check.OUT_FILES)
    res = json.loads((out / "results.json").read_text())
    assert res["tiny"] is True and res["elapsed_s"] <= wall
    parts = res["parts"]
    assert list(parts) == list(DRY_RUN_PARTS)
    assert all(p["status"] == "ok" and p["result"] for p in parts.values()), parts
    for name in DRY_RUN_PARTS:
        assert f"===== part {name}:" in log and f"----- part {name}: ok" in log

    a = parts["a"]["result"]
    assert a["import_errors"] == {} and a["not_on_the_device"] == {} and a["compile_events_seen"]
    assert {"jax", "flax", "optax", "orbax", "numpy", "ml_collections"} <= set(
        a["third_party_imports"]
    )
    assert a["env"]["cpu_count"] >= 1 and a["packages"]["jax"]
    for name, dtype in (("b", "float32"), ("d_infer", "bfloat16")):
        if name not in parts:
            continue
        r = parts[name]["result"]
        assert r["config"]["dtype"] == dtype and r["config"]["depth"] == 18
        inf = r["inference"]
        assert inf["end_to_end"]["detect() end to end"]["median_ms"] > 0
        assert inf["timed_compilations"] == [] and inf["dets_reaching_stage2_mean"] > 0
        assert set(inf["throughput"]) == ({"1", "2"} if name == "b" else {"1"})
        assert r["compilations"]["by_function"]  # compile seconds per stage
    for name, dtype in (("c", "float32"), ("d_train", "bfloat16")):
        if name not in parts:
            continue
        r = parts[name]["result"]
        assert r["config"]["dtype"] == dtype
        tr = r["train"]
        assert tr["end_to_end"]["Trainer.iteration end to end"]["n"] == 2
        assert tr["timed_compilations"] == [] and tr["first_iteration_s"] > 0
        assert "device: train step" in tr["split"]
    rows = parts["e"]["result"]["host"]["rows"]
    assert len(rows) == 9 and all(r["exact"] in (True, None) for r in rows)
    f = parts["f"]["result"]
    assert f["error"] is None and f["iterations_run"] == f["steps"] == 4
    assert f["all_losses_finite"] and isinstance(f["loss_falling"], bool)
    assert f["compilations_per_iteration"][0] > 0 and f["compilations_after_warmup"] == []
    assert f["canvases"] == [[96, 160]]
    assert f["checkpoint_saves"] and f["checkpoint_saves"][-1]["step"] == 4
    assert f["restored_step"] == 4 and f["restored_equals_trained_state"] is True

    report = (out / "report.md").read_text()
    assert "CPU dry run" in report and "Part f: 4 of 4 steps" in report
    for name in DRY_RUN_PARTS:
        assert f"| {name}: " in report
