"""Training benchmark: ``Trainer.iteration`` end to end and the same iteration split stage by
stage, jit cache sizes and compilations (see ``benchmark.py``'s docstring)."""

from __future__ import annotations

import time

import jax
import numpy as np

from benchmarks.common import Samples, block, log, make_batch, ms, print_table, split_rows
from benchmarks.memory_bench import train_memory_analysis


def iteration_split(trainer, state, batch: dict, rec: Samples):
    """``Trainer.iteration`` stage by stage with a sync after every device call and explicit
    transfers (the library overlaps the RPN anchor sampling with the propose call)."""
    from seqnet_jax.train_lib.train import device_targets

    host = trainer.host
    t = time.perf_counter()
    step = int(state.step)
    t = rec.lap("d2h step counter", t)
    dev = block(trainer.shard({"images": batch["images"], "image_sizes": batch["image_sizes"]}))
    t = rec.lap("h2d images", t)
    variables = state.variables
    boxes, scores, cache = block(trainer.propose(variables, dev["images"], dev["image_sizes"]))
    t = rec.lap("device: propose", t)
    boxes, scores = jax.device_get((boxes, scores))
    t = rec.lap("d2h propose top-k", t)
    rpn_t = host.rpn_targets(batch, step, cache["feat"].shape[1:3])
    t = rec.lap("host: RPN anchor sampling", t)
    props, pvalid = host.proposals(boxes, scores)
    t = rec.lap("host: RPN NMS", t)
    s1 = host.roi_targets(props, pvalid, batch, step, stage=1)
    t = rec.lap("host: RoI sampling 1", t)
    s1_dev = block(trainer.shard(device_targets(s1)))  # sent once, as in Trainer.iteration
    t = rec.lap("h2d sampled RoIs 1", t)
    refined, cache = block(
        trainer.first_stage(variables, cache, s1_dev["boxes"], s1_dev["valid"], dev["image_sizes"])
    )
    t = rec.lap("device: stage1", t)
    refined = np.asarray(jax.device_get(refined))
    t = rec.lap("d2h stage1 boxes", t)
    s2 = host.roi_targets(refined, s1["valid"], batch, step, stage=2)
    t = rec.lap("host: RoI sampling 2", t)
    rpn_dev, s2_dev = block((trainer.shard(rpn_t), trainer.shard(device_targets(s2))))
    t = rec.lap("h2d targets", t)
    state, metrics = block(trainer.train_step(state, rpn_dev, s1_dev, s2_dev, cache))
    t = rec.lap("device: train step", t)
    jax.device_get(metrics)
    rec.lap("d2h metrics", t)
    return state


def bench_train(args, config, model, counter, progress=None) -> dict:
    """The training rows (see the module docstring). ``progress(out)``, if given, is called with
    the results so far after the timed loop (before ``--memory_analysis`` compiles again)."""
    from seqnet_jax.train_lib.train import Trainer, create_train_state

    config.data.batch_size = args.batch
    out: dict = {}
    t0 = time.perf_counter()
    state, tx = create_train_state(config, model, 1000, jax.random.PRNGKey(config.seed))
    trainer = Trainer(config, model, tx)
    state = jax.device_put(state, trainer.replicated)
    block(state)
    out["init_s"] = time.perf_counter() - t0
    log(f"train: state created in {out['init_s']:.1f} s")
    rng = np.random.default_rng(1)
    batches = [
        make_batch(
            rng,
            args.batch,
            args.height,
            args.width,
            config.data.max_boxes,
            args.gt_boxes,
            args.num_pids,
        )
        for _ in range(2)
    ]
    mark = counter.mark()
    t0 = time.perf_counter()
    state, _ = trainer.iteration(state, batches[0])
    out["first_iteration_s"] = time.perf_counter() - t0
    log(f"train: first iteration (with compilation) {out['first_iteration_s']:.1f} s")
    for i in range(args.warmup):
        state, _ = trainer.iteration(state, batches[i % 2])
        state = iteration_split(trainer, state, batches[(i + 1) % 2], Samples())
    out["warmup_compilations"] = len(counter.since(mark))
    log(f"train: {args.warmup} warm-up iterations done")
    trainer.timings.clear()
    mark = counter.mark()
    cache_before = trainer.num_compilations()
    split, e2e = Samples(), Samples()
    for i in range(args.iters):
        t = time.perf_counter()
        state, metrics = trainer.iteration(state, batches[i % 2])
        e2e.lap("Trainer.iteration end to end", t)
        state = iteration_split(trainer, state, batches[(i + 1) % 2], split)
    out["timed_compilations"] = counter.since(mark)
    out["jit_cache_growth_in_timed_loop"] = trainer.num_compilations() - cache_before
    out["split"] = split.summary()
    out["end_to_end"] = e2e.summary()
    out["last_loss"] = float(metrics["loss"])
    out["jit_cache_sizes"] = {
        name: int(f._cache_size())
        for name, f in (
            ("propose", trainer.propose),
            ("stage1", trainer.first_stage),
            ("train_step", trainer.train_step),
        )
    }
    out["library_timings_ms"] = {k: 1e3 * float(np.median(v)) for k, v in trainer.timings.items()}
    log(f"train: {args.iters} timed iterations done")
    if progress:
        progress(out)
    if args.memory_analysis:
        log("train: compiling the train step once more for its memory analysis")
        out["memory_analysis"] = train_memory_analysis(trainer, state, batches[0])
    trainer.host.close()
    return out


TRAIN_ORDER = (
    "d2h step counter",
    "h2d images",
    "device: propose",
    "d2h propose top-k",
    "host: RPN anchor sampling",
    "host: RPN NMS",
    "host: RoI sampling 1",
    "h2d sampled RoIs 1",
    "device: stage1",
    "d2h stage1 boxes",
    "host: RoI sampling 2",
    "h2d targets",
    "device: train step",
    "d2h metrics",
)


def print_train(args, tr: dict) -> None:
    """The training-iteration table of ``bench_train``'s result."""
    e2e = tr["end_to_end"]["Trainer.iteration end to end"]
    print_table(
        f"Training iteration, batch {args.batch}",
        split_rows(tr["split"], TRAIN_ORDER)
        + [
            (
                "**Trainer.iteration end to end (headline)**",
                ms(e2e["median_ms"]),
                ms(e2e["min_ms"]),
            )
        ],
        ("stage", "median ms", "min ms"),
    )
