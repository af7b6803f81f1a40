"""main.py on a dataset in our format: 2 training steps + evaluation, then eval.mode=eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from seqnet_jax.data import convert, custom
from tests.tiny import tiny_config

REPO = Path(__file__).resolve().parents[1]

CONFIG = """
from tests.tiny import tiny_config


def get_config():
    c = tiny_config(max_steps=2)
    c.data.dataset = "custom"
    c.data.synthetic = type(c.data.synthetic)()
    c.data.custom.gallery_sizes = (4,)
    c.eval.mode = "train_and_eval"
    c.eval.max_queries = -1
    return c
"""


def _main(tmp_path: Path, *flags: str) -> str:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        # share compiled programs with the rest of the suite (tests/conftest.py)
        JAX_COMPILATION_CACHE_DIR=str(REPO / ".pytest_cache" / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
    )
    out = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "--config", str(tmp_path / "cfg.py"), *flags],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr


def test_main_trains_and_evaluates_a_custom_dataset(tmp_path):
    params = tiny_config().data.synthetic.to_dict()
    report = convert.convert_synthetic(tmp_path / "data", params=params, seed=0)
    assert report.ok
    (tmp_path / "cfg.py").write_text(textwrap.dedent(CONFIG))
    work = tmp_path / "work"
    flags = [f"--workdir={work}", f"--config.data.root={tmp_path / 'data'}"]
    log = _main(tmp_path, *flags)
    assert "validated" in log and "0 errors" in log  # the validator ran first
    results = json.loads((work / "eval" / "step2" / "results.json").read_text())
    ds = custom.read_custom(tmp_path / "data", gallery_sizes=(4,))
    assert results["num_queries"] == len(ds.queries) == 4  # one per test identity
    assert {r["protocol"] for r in results["search"]} == {"all", "cross-camera", "TestG4"}
    assert (work / "checkpoints" / "2").exists()
    cached = sorted((work / "eval_cache").iterdir())
    assert len(cached) == 1
    # eval mode restores step 2; another protocol seed is other queries: new features
    log = _main(tmp_path, *flags, "--config.eval.mode=eval", "--config.data.custom.protocol_seed=3")
    assert len(list((work / "eval_cache").iterdir())) == 2
    again = json.loads((work / "eval" / "step2" / "results.json").read_text())
    assert again["num_queries"] == 4 and again["dataset"] == results["dataset"]
    # A dataset with an error stops before any model work, naming the problem.
    doc = json.loads((tmp_path / "data" / "annotations.json").read_text())
    doc["annotations"][3]["bbox"][2] = 0
    (tmp_path / "data" / "annotations.json").write_text(json.dumps(doc))
    env_fail = subprocess.run(
        [
            sys.executable,
            str(REPO / "main.py"),
            "--config",
            str(tmp_path / "cfg.py"),
            *flags,
            "--config.eval.mode=train",
        ],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert env_fail.returncode != 0
    assert "annotations[3].bbox" in env_fail.stderr and "zero area" in env_fail.stderr
