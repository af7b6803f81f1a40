"""GPU check, part f: real training steps of ``configs/cuhk.py`` on a fake CUHK-SYSU, checkpoint.

    python benchmarks/train_run.py [--steps 30] [--work DIR] [--tiny] [--json OUT.json]

Writes a fake CUHK-SYSU folder in the official format (``seqnet_jax.data.fake_datasets``:
``Image/SSM`` JPEGs, ``annotation/Images.mat``, ``pool.mat``, ``Train.mat``, ``TestG50.mat``)
with ``steps × batch`` training images of 300×500, which the loader resizes to 900×1500 (the
full training size), then runs the library's training loop (``train_lib.train
.train_and_evaluate``, ``eval.mode=train``, ``solver.max_steps=steps``; one epoch, so the LR
warms up over these steps as over the reference's epoch 0) with the real dataset's 5532-row OIM
lookup table. ``Trainer.iteration`` and ``Checkpointer.save`` are observed (wrapped, not
changed) to record per step the seven losses and the total, the wall time and the XLA
compilations. Afterwards the checkpoint the loop saved at its end is restored into the abstract
train state and compared array by array with the state the last step returned.

Reports: losses finite and falling (mean of the last k total losses below the first k's,
k = min(5, steps // 3)), compilations after the ``--warmup`` first iterations (must be 0), the
median iteration time and the median wait between iterations (the loader / host side), peak
device memory, checkpoint save and restore seconds and whether the restore is exact.
"""

from __future__ import annotations

import argparse
import json
import logging as pylogging
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from benchmarks.common import CompileCounter, apply_overrides, fmt_bytes, memory  # noqa: E402
from benchmarks.gpu_check import TINY_SET  # noqa: E402
from seqnet_jax import checkpoints as ckpt_lib  # noqa: E402
from seqnet_jax.data.fake_datasets import write_fake_cuhk_sysu  # noqa: E402
from seqnet_jax.modeling import seqnet  # noqa: E402
from seqnet_jax.modeling.losses import LOSS_NAMES  # noqa: E402
from seqnet_jax.train_lib import train as train_lib  # noqa: E402

CUHK_SYSU_TRAIN_IDS = 5532  # labeled training identities of the real dataset: the LUT size


def fake_cuhk_config(root: str, steps: int, tiny: bool):
    """``configs/cuhk.py`` for ``steps`` training steps on the fake folder at ``root``: no
    evaluation, the real dataset's lookup-table size. ``tiny``: the dry run's model and sizes."""
    from configs import cuhk

    c = cuhk.get_config()
    c.data.root = root
    c.eval.mode = "train"
    c.solver.max_steps = steps
    c.log_every = 5
    c.checkpoint_every_steps = 0
    c.model.oim.lut_size = CUHK_SYSU_TRAIN_IDS
    if tiny:
        apply_overrides(c, list(TINY_SET))
        c.model.oim.lut_size = 8
        c.data.min_size, c.data.max_size, c.data.batch_size = 96, 160, 2
        c.log_every = 1
    return c


def tree_equal(a, b) -> tuple:
    """``(same, number of arrays, bytes)``: every leaf of ``a`` and ``b`` equal in shape, dtype
    and value."""
    la, lb = jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b))
    if len(la) != len(lb):
        return False, len(la), 0
    same = all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )
    return same, len(la), int(sum(np.asarray(x).nbytes for x in la))


class Observer:
    """Wraps ``Trainer.iteration`` and ``Checkpointer.save`` for the duration of a ``with``
    block, recording each call; the wrapped methods run unchanged."""

    def __init__(self, counter: CompileCounter, on_iteration=None):
        self.counter = counter
        self.on_iteration = on_iteration  # called after every iteration (partial results)
        self.iterations: list = []
        self.saves: list = []
        self.trainer = None
        self.state = None

    def __enter__(self):
        self._iteration = iteration = train_lib.Trainer.iteration
        self._save = save = ckpt_lib.Checkpointer.save
        obs = self

        def observed_iteration(trainer, state, batch):
            mark, t = obs.counter.mark(), time.perf_counter()
            state, metrics = iteration(trainer, state, batch)
            obs.iterations.append(
                {
                    "start": t,
                    "wall_s": time.perf_counter() - t,
                    "compilations": obs.counter.since(mark),
                    "compile_s": obs.counter.seconds_since(mark),
                    "canvas": list(np.shape(batch["images"])[1:3]),
                    "losses": {k: float(metrics[k]) for k in LOSS_NAMES + ("loss",)},
                }
            )
            obs.trainer, obs.state = trainer, state
            if obs.on_iteration:
                obs.on_iteration(obs)
            return state, metrics

        def observed_save(ckpt, step, state, meta, force=True):
            t = time.perf_counter()
            save(ckpt, step, state, meta, force)
            obs.saves.append({"step": int(step), "seconds": time.perf_counter() - t})

        train_lib.Trainer.iteration = observed_iteration
        ckpt_lib.Checkpointer.save = observed_save
        return self

    def __exit__(self, *exc):
        train_lib.Trainer.iteration = self._iteration
        ckpt_lib.Checkpointer.save = self._save
        return False


def summarize(obs: Observer, warmup: int, batch_size: int) -> dict:
    its = obs.iterations
    n = len(its)
    losses = np.asarray([[it["losses"][k] for k in LOSS_NAMES + ("loss",)] for it in its])
    total = losses[:, -1] if n else np.zeros(0)
    k = max(1, min(5, n // 3))
    walls = [it["wall_s"] for it in its[warmup:]]
    gaps = [its[i + 1]["start"] - its[i]["start"] - its[i]["wall_s"] for i in range(warmup, n - 1)]
    median_ms = 1e3 * float(np.median(walls)) if walls else None
    res = {
        "iterations_run": n,
        "loss_per_step": [float(x) for x in total],
        "losses_first": its[0]["losses"] if n else None,
        "losses_last": its[-1]["losses"] if n else None,
        "all_losses_finite": bool(n and np.isfinite(losses).all()),
        "loss_window": k,
        "loss_mean_first": float(total[:k].mean()) if n else None,
        "loss_mean_last": float(total[-k:].mean()) if n else None,
        "loss_falling": bool(n >= 2 and total[-k:].mean() < total[:k].mean()),
        "canvases": sorted({tuple(it["canvas"]) for it in its}),
        "compilations_per_iteration": [len(it["compilations"]) for it in its],
        "compile_s_per_iteration": [round(it["compile_s"], 3) for it in its],
        "compilations_after_warmup": [c for it in its[warmup:] for c in it["compilations"]],
        "first_iteration_s": its[0]["wall_s"] if n else None,
        "iteration_median_ms": median_ms,
        "between_iterations_median_ms": 1e3 * float(np.median(gaps)) if gaps else None,
        "images_per_s": batch_size * 1e3 / median_ms if median_ms else None,
        "checkpoint_saves": obs.saves,
    }
    if obs.trainer is not None:
        res["jit_cache_sizes"] = {
            "propose": int(obs.trainer.propose._cache_size()),
            "stage1": int(obs.trainer.first_stage._cache_size()),
            "train_step": int(obs.trainer.train_step._cache_size()),
        }
    return res


def run(steps: int, warmup: int, work: str, tiny: bool, json_path: str = "") -> dict:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(  # as main.py: orbax's INFO lines are noise here
        lambda r: r.levelno >= pylogging.WARNING or "orbax" not in r.pathname
    )
    counter = CompileCounter()
    res: dict = {"steps": steps, "warmup_iterations": warmup, "error": None}

    def save_json():
        if json_path:
            tmp = f"{json_path}.tmp"
            with open(tmp, "w") as f:
                json.dump(res, f, indent=2, default=str)
            os.replace(tmp, json_path)

    shutil.rmtree(work, ignore_errors=True)
    root, workdir = os.path.join(work, "CUHK-SYSU"), os.path.join(work, "run")
    config = fake_cuhk_config(root, steps, tiny)
    b = config.data.batch_size
    t0 = time.perf_counter()
    write_fake_cuhk_sysu(
        root,
        num_train_images=steps * b,  # one epoch of `steps` batches
        num_gallery_images=2,
        num_train_ids=min(50, steps * b),
        num_queries=1,
        people_per_image=5,
        image_size=(48, 80) if tiny else (300, 500),  # resized ×2 / ×3 by the loader
        gallery_sizes=(50,),
        edge_cases=False,
    )
    res["write_dataset_s"] = time.perf_counter() - t0
    print(f"wrote {steps * b} fake CUHK-SYSU training images in {res['write_dataset_s']:.1f} s")
    save_json()

    def partial(obs: Observer) -> None:  # every 5 steps: a run stopped later keeps them
        if len(obs.iterations) % 5 == 0:
            res.update(summarize(obs, warmup, b))
            save_json()

    t0 = time.perf_counter()
    with Observer(counter, partial) as obs:
        try:
            train_lib.train_and_evaluate(config, workdir)
        except Exception as e:  # noqa: BLE001 - recorded with what ran before it
            res["error"] = f"{type(e).__name__}: {e}"
    res["loop_s"] = time.perf_counter() - t0
    res["memory"] = memory()
    res.update(summarize(obs, warmup, b))
    res["compilation_summary"] = counter.summary()
    save_json()

    if obs.state is not None and obs.saves:
        model = seqnet.build_model(config.model, int(config.model.oim.lut_size))
        target = train_lib.abstract_train_state(config, model)
        ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
        t0 = time.perf_counter()
        restored, meta, step = ckpt.restore(target)
        jax.block_until_ready(restored)
        res["restore_s"] = time.perf_counter() - t0
        ckpt.close()
        same, leaves, nbytes = tree_equal(restored, obs.state)
        res["restored_step"], res["restored_meta_step"] = step, meta.get("step")
        res["restored_equals_trained_state"] = same
        res["checkpoint_arrays"], res["checkpoint_mib"] = leaves, nbytes / 2**20
    res["memory_after_restore"] = memory()
    save_json()
    print_summary(res)
    return res


def print_summary(res: dict) -> None:
    print(
        f"\n## {res['iterations_run']} of {res['steps']} training steps, canvases {res['canvases']}"
    )
    print("- total loss per step: " + " ".join(f"{x:.3f}" for x in res["loss_per_step"]))
    print(
        f"- losses finite: {res['all_losses_finite']}; falling: {res['loss_falling']} (mean of "
        f"the first / last {res['loss_window']}: {res['loss_mean_first']} / "
        f"{res['loss_mean_last']})"
    )
    print(
        f"- compilations per iteration {res['compilations_per_iteration']}; after the "
        f"{res['warmup_iterations']} warm-up iterations: {len(res['compilations_after_warmup'])}"
    )
    print(
        f"- iteration median {res['iteration_median_ms']} ms, waiting between iterations "
        f"{res['between_iterations_median_ms']} ms, first iteration {res['first_iteration_s']} s; "
        f"peak device memory {fmt_bytes(res['memory'].get('peak_bytes_in_use'))}"
    )
    print(
        f"- checkpoint saves {res['checkpoint_saves']}; restore {res.get('restore_s')} s, equal "
        f"to the trained state: {res.get('restored_equals_trained_state')}"
    )
    if res["error"]:
        print(f"ERROR: {res['error']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=0, help="training steps (default 30; tiny 4)")
    p.add_argument(
        "--warmup", type=int, default=-1, help="iterations allowed to compile (default 1)"
    )
    p.add_argument("--work", default="", help="scratch folder (default: a temporary one)")
    p.add_argument("--tiny", action="store_true", help="CPU dry run: small model and images")
    p.add_argument("--json", default="", help="write the results to this JSON file as it goes")
    args = p.parse_args(argv)
    steps = args.steps or (4 if args.tiny else 30)
    warmup = args.warmup if args.warmup >= 0 else 1
    work = os.path.join(args.work or tempfile.mkdtemp(prefix="seqnet_train_run_"), "train_run")
    res = run(steps, warmup, work, args.tiny, args.json)
    return 1 if res["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
