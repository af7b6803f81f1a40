"""XLA's buffer sizes of the compiled stages (arguments / temp / outputs), nothing executed:
``--memory_analysis`` (the train step after the timed loop) and ``--compile_only`` (every stage
at a size the machine may not be able to run)."""

from __future__ import annotations

import functools

import jax
import numpy as np

from benchmarks.common import (
    compiled_memory,
    fake_proposals,
    fmt_bytes,
    log,
    make_batch,
    print_table,
)
from benchmarks.inference_bench import set_dets
from seqnet_jax.host import postprocess as post
from seqnet_jax.modeling import seqnet


def train_memory_analysis(trainer, state, batch: dict) -> dict:
    """The compiled train step's buffers (one extra compile, nothing executed; works on CPU).
    Targets come from the real host stages run on RPN-like proposals, so shapes are exact."""
    from seqnet_jax.train_lib.train import device_targets

    cfg = trainer.config.model
    host = trainer.host
    h, w = (int(x) for x in batch["image_sizes"][0])
    dev = trainer.shard({"images": batch["images"], "image_sizes": batch["image_sizes"]})
    cache = jax.eval_shape(trainer.propose, state.variables, dev["images"], dev["image_sizes"])[2]
    rpn_t = host.rpn_targets(batch, 0, cache["feat"].shape[1:3])
    boxes, scores = fake_proposals(
        np.random.default_rng(0), batch["images"].shape[0], cfg.rpn.pre_nms_topn_train, h, w
    )
    props, pvalid = host.proposals(boxes, scores)
    s1 = host.roi_targets(props, pvalid, batch, 0, stage=1)
    s2 = host.roi_targets(s1["boxes"], s1["valid"], batch, 0, stage=2)
    s1_dev = trainer.shard(device_targets(s1))
    stage1_args = (state.variables, cache, s1_dev["boxes"], s1_dev["valid"], dev["image_sizes"])
    out = {
        "propose": compiled_memory(
            trainer.propose, state.variables, dev["images"], dev["image_sizes"]
        ),
        "stage1": compiled_memory(trainer.first_stage, *stage1_args),
    }
    cache = jax.eval_shape(trainer.first_stage, *stage1_args)[1]
    out["train_step"] = compiled_memory(
        trainer.train_step,
        state,
        trainer.shard(rpn_t),
        s1_dev,
        trainer.shard(device_targets(s2)),
        cache,
    )
    return out


def inference_memory_analysis(inf, batch: dict, dets: int) -> dict:
    """Compiled buffers of the inference stages for one frame (nothing executed)."""
    images, sizes = batch["images"], batch["image_sizes"]
    v = inf.variables
    feat, _, _ = jax.eval_shape(inf._propose, v, images, sizes)
    p = inf.cfg.rpn.post_nms_topn_test
    b = images.shape[0]
    nb = post.pad_to_bucket(max(dets, 1), inf.stage2_buckets)
    box = functools.partial(jax.ShapeDtypeStruct, dtype=np.float32)
    mask = functools.partial(jax.ShapeDtypeStruct, dtype=np.bool_)
    return {
        "propose": compiled_memory(inf._propose, v, images, sizes),
        "stage1": compiled_memory(inf._first, v, feat, box((b, p, 4)), mask((b, p)), sizes),
        "stage2": compiled_memory(inf._second, v, feat, box((b, nb, 4)), mask((b, nb)), sizes),
    }


def compile_only(args, config, model) -> dict:
    """Memory analysis of every jitted stage at the requested size without running them."""
    from seqnet_jax.inference import SeqNetInference
    from seqnet_jax.train_lib.train import Trainer, create_train_state

    out: dict = {}
    rng = np.random.default_rng(0)
    mb, g, pids = config.data.max_boxes, args.gt_boxes, args.num_pids
    if not args.skip_inference:
        set_dets(config.model, args.dets)
        variables = seqnet.init_variables(model, jax.random.PRNGKey(0))
        inf = SeqNetInference(model, variables, config.model)
        one = make_batch(rng, 1, args.height, args.width, mb, g, pids)
        out["inference"] = inference_memory_analysis(inf, one, max(args.dets, 1))
        log("compile_only: inference stages compiled")
        del variables, inf
    if not args.skip_train:
        config.data.batch_size = args.batch
        state, tx = create_train_state(config, model, 1000, jax.random.PRNGKey(config.seed))
        trainer = Trainer(config, model, tx)
        state = jax.device_put(state, trainer.replicated)
        batch = make_batch(rng, args.batch, args.height, args.width, mb, g, pids)
        out["train"] = train_memory_analysis(trainer, state, batch)
        log("compile_only: training stages compiled")
        trainer.host.close()
    return out


def print_compile_only(args, env, res: dict) -> None:
    cfg = res["config"]
    print("\n## SeqNet compiled-buffer analysis (nothing executed)\n")
    print(f"- device: {env['device']}; jax {env['jax']}")
    print(
        f"- config {args.config}: ResNet-{cfg['depth']}, {args.dtype}, image "
        f"{args.height}×{args.width} on canvas {cfg['canvas']}, train batch {args.batch}"
    )
    rows = []
    for phase, stages in res["compiled"].items():
        for name, ma in stages.items():
            if not ma:
                continue
            rows.append(
                (
                    f"{phase}: {name}",
                    fmt_bytes(ma.get("argument_size_in_bytes")),
                    fmt_bytes(ma.get("temp_size_in_bytes")),
                    fmt_bytes(ma.get("output_size_in_bytes")),
                    fmt_bytes(ma.get("alias_size_in_bytes")),
                )
            )
    print_table(
        "XLA buffer sizes per compiled stage",
        rows,
        ("stage", "arguments", "temp", "outputs", "aliased (donated)"),
    )
