"""The GPU check's ``report.md``: BENCHMARKS.md's GPU-table rows filled from ``results.json``.

``render(results)`` reads what the parts wrote (a part that did not finish leaves '—'); it
computes nothing new: every number is one the benchmark or the training run measured.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

INFER_DEVICE = ("device: propose", "device: stage1", "device: stage2")
INFER_HOST = ("host: RPN NMS", "host: stage1 NMS", "host: stage2 NMS/CWS")
TRAIN_DEVICE = ("device: propose", "device: stage1", "device: train step")
TRAIN_HOST = (
    "host: RPN anchor sampling",
    "host: RPN NMS",
    "host: RoI sampling 1",
    "host: RoI sampling 2",
)
QUERY_ROWS = ("h2d query", "device: embed", "d2h embedding")


def get(d, *keys):
    """``d[k0][k1]...`` or None where a level is missing."""
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def ms(x) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def nbytes(n) -> str:
    if n is None:
        return "—"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def one(x) -> str:
    return "—" if x is None else f"{x:.1f}"


def count(x) -> str:
    return "—" if x is None else str(len(x))


def medians(split: Optional[dict], keys) -> str:
    return " / ".join(ms(get(split, k, "median_ms")) for k in keys)


def transfer_ms(split: Optional[dict]) -> Optional[float]:
    """Sum of the transfer rows (neither ``device:`` nor ``host:``), the query pass excluded."""
    if not split:
        return None
    return sum(v["median_ms"] for k, v in split.items() if ":" not in k and k not in QUERY_ROWS)


def slowest_compiles(*compilations: Optional[dict], n: int = 5) -> str:
    by: Dict[str, float] = {}
    for c in compilations:
        for k, v in (get(c, "by_function") or {}).items():
            by[k] = by.get(k, 0.0) + v["seconds"]
    top = sorted(by.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{k} {s:.1f} s" for k, s in top) or "—"


def render(results: dict) -> str:
    parts = results["parts"]
    res = {k: (v.get("result") or {}) for k, v in parts.items()}
    a, f = res.get("a", {}), res.get("f", {})
    env = a.get("env") or {}
    inf = {"fp32": get(res, "b", "inference"), "bf16": get(res, "d_infer", "inference")}
    tr = {"fp32": get(res, "c", "train"), "bf16": get(res, "d_train", "train")}
    mem = {"fp32": get(res, "c", "memory"), "bf16": get(res, "d_train", "memory")}
    title = "# GPU check"
    if results.get("tiny"):
        title += " — CPU dry run at tiny sizes (no performance numbers)"
    out: List[str] = [
        title,
        "",
        f"- commit {results['commit']}; started {results['started']}; "
        f"{results.get('elapsed_s', 0)} s of the {results['budget_s']:.0f} s budget",
        f"- device {env.get('device', '—')} (×{env.get('device_count', '—')}); "
        f"nvidia-smi: {a.get('nvidia_smi', '—')}; CPUs {env.get('cpu_count', '—')}",
        "- " + ", ".join(f"{k} {v}" for k, v in (a.get("packages") or {}).items() if v),
        "",
        "| part | status | wall s | guard s |",
        "| --- | --- | --- | --- |",
    ]
    out += [
        f"| {k}: {v['what']} | {v['status']} | {v.get('wall_s', '—')} | {v['guard_s']} |"
        for k, v in parts.items()
    ]
    out += ["", "| what | float32 | bfloat16 |", "| --- | --- | --- |"]

    def row(what: str, fn, table: dict) -> None:
        out.append(f"| {what} | {fn(table['fp32'])} | {fn(table['bf16'])} |")

    def detect(x):
        if not x:
            return "—"
        e2e = get(x, "end_to_end", "detect() end to end", "median_ms")
        return f"{ms(e2e)} ({x['dets_reaching_stage2_mean']:.1f} boxes reached stage 2)"

    def gallery(x):
        tp = get(x, "throughput") or {}
        return " / ".join(f"{b}: {v['frames_per_s']:.1f}" for b, v in tp.items()) or "—"

    def split(keys):
        return lambda x: medians(get(x, "split"), keys)

    def field(*path, fmt=one):
        return lambda x: fmt(get(x, *path))

    def transfers(x):
        return ms(transfer_ms(get(x, "split")))

    def peak(m):
        return nbytes(
            get(m, "after_train", "peak_bytes_in_use") or get(m, "latest", "peak_bytes_in_use")
        )

    e2e_train = ("end_to_end", "Trainer.iteration end to end", "median_ms")
    row("inference ms/frame, 900×1500 (detect() median)", detect, inf)
    row("— device: propose / stage1 / stage2", split(INFER_DEVICE), inf)
    row("— host: RPN NMS / stage-1 NMS / stage-2 NMS+CWS", split(INFER_HOST), inf)
    row("— transfers (h2d + d2h)", transfers, inf)
    row("query embed ms (device)", split(("device: embed",)), inf)
    row("gallery frames/s by batch", gallery, inf)
    row("training ms/iteration, batch 5 (Trainer.iteration median)", field(*e2e_train, fmt=ms), tr)
    row("— device: propose / stage1 / train step", split(TRAIN_DEVICE), tr)
    row("— host: anchor sampling / RPN NMS / RoI sampling 1 / 2", split(TRAIN_HOST), tr)
    row("— transfers", transfers, tr)
    row("peak device memory (training process)", peak, mem)
    row(
        "XLA compilations in the timed loops: inference",
        field("timed_compilations", fmt=count),
        inf,
    )
    row("XLA compilations in the timed loops: training", field("timed_compilations", fmt=count), tr)
    row("first detect() with compilation, s", field("first_detect_s"), inf)
    row("first Trainer.iteration with compilation, s", field("first_iteration_s"), tr)
    comp = {
        "fp32": (get(res, "b", "compilations"), get(res, "c", "compilations")),
        "bf16": (get(res, "d_infer", "compilations"), get(res, "d_train", "compilations")),
    }
    row("XLA compile time of the slowest functions", lambda c: slowest_compiles(*c), comp)

    rows = get(res, "e", "host", "rows") or []
    out += [
        "",
        "| host stage (part e) | input | ms/call | ms/image | plain greedy ms/image | speed-up | identical |",  # noqa: E501
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        speedup = f"{r['speedup']:.1f}×" if r.get("speedup") else "—"
        exact = {True: "yes", False: "NO", None: "—"}[r.get("exact")]
        out.append(
            f"| {r['stage']} | {r['input']} | {ms(r['fast_ms'])} | {ms(r['ms_per_image'])} | "
            f"{ms(r.get('plain_ms_per_image'))} | {speedup} | {exact} |"
        )
    if f:
        saves = [(s["step"], round(s["seconds"], 2)) for s in f.get("checkpoint_saves") or []]
        losses = " ".join(f"{x:.3f}" for x in f.get("loss_per_step") or []) or "—"
        out += [
            "",
            f"Part f: {f.get('iterations_run', 0)} of {f.get('steps')} steps of configs/cuhk.py "
            f"on a fake CUHK-SYSU, canvases {f.get('canvases')}:",
            "",
            f"- losses finite: {f.get('all_losses_finite')}; falling: {f.get('loss_falling')} "
            f"(mean of the first / last {f.get('loss_window')}: {f.get('loss_mean_first')} / "
            f"{f.get('loss_mean_last')}); total loss per step: {losses}",
            f"- compilations per iteration {f.get('compilations_per_iteration')}; after the "
            f"{f.get('warmup_iterations')} warm-up iteration(s): "
            f"{count(f.get('compilations_after_warmup'))}",
            f"- iteration median {ms(f.get('iteration_median_ms'))} ms "
            f"({one(f.get('images_per_s'))} images/s), waiting between iterations "
            f"{ms(f.get('between_iterations_median_ms'))} ms, first iteration "
            f"{one(f.get('first_iteration_s'))} s; peak device memory "
            f"{nbytes(get(f, 'memory', 'peak_bytes_in_use'))}",
            f"- checkpoint saves (step, s) {saves}; restore {one(f.get('restore_s'))} s; the "
            f"restored state equals the trained one: {f.get('restored_equals_trained_state')} "
            f"({f.get('checkpoint_arrays')} arrays, {one(f.get('checkpoint_mib'))} MiB)",
        ]
        if f.get("error"):
            out.append(f"- ERROR: {f['error']}")
    if a and not a.get("compile_events_seen"):
        out += ["", "No XLA compile events were seen (part a): the compilation counts are void."]
    if a.get("import_errors") or a.get("not_on_the_device"):
        out += [
            "",
            f"Import problems (part a): {a.get('import_errors')}; not on the GPU machine: "
            f"{sorted(a.get('not_on_the_device') or {})}",
        ]
    return "\n".join(out) + "\n"
