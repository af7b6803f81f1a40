"""Model side of evaluation: gallery/query feature extraction (cached) and the metric report.

The metrics themselves are numpy code in ``seqnet_jax.evaluation`` (no jax there).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Optional

import jax
import numpy as np
from absl import logging

from seqnet_jax import distributed as dist
from seqnet_jax import progress
from seqnet_jax.data.pipeline import EvalLoader
from seqnet_jax.data.types import ImageAnnotation, PersonSearchDataset
from seqnet_jax.inference import SeqNetInference


def _loader(config, dataset, items, split):
    d = config.data
    buckets = [tuple(b) for b in d.buckets] if len(d.buckets) else None
    return EvalLoader(
        items,
        functools.partial(dataset.load_image, split),
        batch_size=d.eval_batch_size,
        min_size=d.min_size,
        max_size=d.max_size,
        buckets=buckets,
        max_boxes=d.max_boxes,
        num_workers=d.num_workers,
        skip_bad_images=bool(d.skip_bad_images),
    )


def query_items(dataset: PersonSearchDataset, queries=None):
    queries = dataset.queries if queries is None else queries
    return [
        (
            q.name,
            ImageAnnotation(
                q.name, np.asarray(q.box, np.float32).reshape(1, 4), np.asarray([q.pid], np.int32)
            ),
        )
        for q in queries
    ]


def extract_features(
    config,
    inference: SeqNetInference,
    dataset: PersonSearchDataset,
    queries=None,
    need_context: bool = True,
    failed: Optional[set] = None,
) -> dict:
    """Runs the model over the gallery and the queries.

    Returns the keyword arguments of ``evaluation.evaluate_all``: ``gallery_dets`` (list of
    (N_i, 5) x1,y1,x2,y2,score, original coordinates), ``gallery_feats`` (list of (N_i, D),
    CWS-scaled), ``query_box_feats`` (Q, D) unit, ``query_context_dets`` /
    ``query_context_feats`` (query-as-gallery pass, for CBGM).

    With several processes each runs its contiguous share of the gallery and of the queries
    (``distributed.shard_range``) and every process returns the gathered whole, in order.

    ``data.skip_bad_images``: an image that fails to decode gets no detections (its query no
    feature); its name is added to ``failed`` (of every process), for :func:`drop_images`.
    """
    dim = inference.model.emb_dim
    n_gal = len(dataset.gallery)
    gallery_dets = [None] * n_gal
    gallery_feats = [None] * n_gal
    use_gt = config.eval.use_gt
    mine = dist.shard_range(n_gal)  # this process's gallery images
    items = [(dataset.gallery[i].name, dataset.gallery[i]) for i in mine]
    loader = _loader(config, dataset, items, "gallery")
    bad: set = set()  # names of the images that could not be decoded (skip_bad_images)
    for batch in progress.progress(loader, desc="gallery", unit="batch"):
        if use_gt:
            emb = inference.embed(batch, batch["boxes"], batch["box_valid"])
        else:
            dets = inference.detect(batch)
        for j, idx in enumerate(batch["index"]):
            if batch["load_failed"][j]:
                idx = mine[idx]
                bad.add(dataset.gallery[idx].name)
                gallery_dets[idx] = np.zeros((0, 5), np.float32)
                gallery_feats[idx] = np.zeros((0, dim), np.float32)
                continue
            if not batch["image_valid"][j]:
                continue
            idx = mine[idx]
            if use_gt:
                ann = dataset.gallery[idx]
                v = batch["box_valid"][j]
                boxes = np.asarray(ann.boxes, np.float32).reshape(-1, 4)[v[: len(ann.boxes)]]
                gallery_dets[idx] = np.concatenate([boxes, np.ones((len(boxes), 1), np.float32)], 1)
                gallery_feats[idx] = emb[j][v]
            else:
                det = dets[j]
                gallery_dets[idx] = np.concatenate([det.boxes, det.scores[:, None]], 1)
                gallery_feats[idx] = det.embeddings

    q_items = query_items(dataset, queries)
    nq = len(q_items)
    query_box_feats = np.zeros((nq, dim), np.float32)
    ctx_dets, ctx_feats = [None] * nq, [None] * nq
    q_mine = dist.shard_range(nq)
    loader = _loader(config, dataset, [q_items[i] for i in q_mine], "query")
    for batch in progress.progress(loader, desc="queries", unit="batch"):
        emb = inference.embed(batch, batch["boxes"][:, :1], batch["box_valid"][:, :1])
        ctx = inference.detect(batch, query_boxes=batch["boxes"][:, 0]) if need_context else None
        for j, idx in enumerate(batch["index"]):
            if batch["load_failed"][j]:
                idx = q_mine[idx]
                bad.add(q_items[idx][0])
                ctx_dets[idx] = np.zeros((0, 5), np.float32)
                ctx_feats[idx] = np.zeros((0, dim), np.float32)
                continue
            if not batch["image_valid"][j]:
                continue
            idx = q_mine[idx]
            query_box_feats[idx] = emb[j, 0]
            if ctx is not None:
                ctx_dets[idx] = np.concatenate([ctx[j].boxes, ctx[j].scores[:, None]], 1)
                ctx_feats[idx] = ctx[j].embeddings
    if jax.process_count() > 1:  # every process's share, gathered in order
        g, q = slice(mine.start, mine.stop), slice(q_mine.start, q_mine.stop)
        gallery_dets = dist.gather_ragged(gallery_dets[g], 5)
        gallery_feats = dist.gather_ragged(gallery_feats[g], dim)
        query_box_feats = dist.allgather_rows(query_box_feats[q])
        if need_context:
            ctx_dets = dist.gather_ragged(ctx_dets[q], 5)
            ctx_feats = dist.gather_ragged(ctx_feats[q], dim)
        parts = dist.allgather_bytes(json.dumps(sorted(bad)).encode())
        bad = {name for part in parts for name in json.loads(part.decode())}
    if failed is not None:
        failed.update(bad)
    return {
        "gallery_dets": gallery_dets,
        "gallery_feats": gallery_feats,
        "query_box_feats": query_box_feats,
        "query_context_dets": ctx_dets if need_context else None,
        "query_context_feats": ctx_feats if need_context else None,
    }


def drop_images(dataset: PersonSearchDataset, names) -> tuple:
    """``(dataset, keep_gallery, keep_queries)``: ``dataset`` without the gallery images named
    ``names`` and the queries on them, as a reader's ``skip_bad_images`` drops them at start-up:
    their entries leave the explicit protocols (the remaining gallery indices renumbered), the
    rule-based ones derive from the smaller gallery; ``stats`` counts them. ``keep_*``: bool
    masks over the original ``gallery`` / ``queries``."""
    names = set(names)
    keep_g = np.asarray([a.name not in names for a in dataset.gallery], bool)
    keep_q = np.asarray([q.name not in names for q in dataset.queries], bool)
    renumber = np.cumsum(keep_g) - 1
    stats = dict(dataset.stats)
    dropped_entries = 0
    protocols = []
    for p in dataset.protocols:
        if p.gallery_indices is None:
            protocols.append(p)
            continue
        indices, gts = [], [] if p.gt_boxes is not None else None
        for qi in np.flatnonzero(keep_q):
            idx = np.asarray(p.gallery_indices[qi], np.int64).reshape(-1)
            k = keep_g[idx]
            dropped_entries += int((~k).sum())
            indices.append(renumber[idx[k]].astype(np.int32))
            if gts is not None:
                gts.append(np.asarray(p.gt_boxes[qi], np.float32).reshape(-1, 4)[k])
        protocols.append(dataclasses.replace(p, gallery_indices=indices, gt_boxes=gts))
    stats["skipped_bad_images"] = int(stats.get("skipped_bad_images", 0)) + int((~keep_g).sum())
    stats["bad_images"] = sorted(set(stats.get("bad_images", [])) | names)
    stats["skipped_queries"] = int(stats.get("skipped_queries", 0)) + int((~keep_q).sum())
    stats["dropped_protocol_entries"] = int(stats.get("dropped_protocol_entries", 0)) + (
        dropped_entries
    )
    out = dataclasses.replace(
        dataset,
        gallery=[a for a, k in zip(dataset.gallery, keep_g) if k],
        queries=[q for q, k in zip(dataset.queries, keep_q) if k],
        protocols=protocols,
        stats=stats,
    )
    return out, keep_g, keep_q


def _without(feats: dict, keep_g: np.ndarray, keep_q: np.ndarray) -> dict:
    """The features of the kept gallery images and queries (``keep_q`` over ``feats``' queries)."""
    out = dict(feats)
    for k in ("gallery_dets", "gallery_feats"):
        out[k] = [x for x, keep in zip(feats[k], keep_g) if keep]
    out["query_box_feats"] = np.asarray(feats["query_box_feats"])[keep_q]
    for k in ("query_context_dets", "query_context_feats"):
        if feats.get(k) is not None:
            out[k] = [x for x, keep in zip(feats[k], keep_q) if keep]
    return out


def cache_key(config, checkpoint_id: str, dataset: PersonSearchDataset, nq: int) -> str:
    """Identifies the features: checkpoint, dataset, and every config field that changes them."""
    relevant = {
        "checkpoint": checkpoint_id,
        "dataset": dataset.name,
        "n_gallery": len(dataset.gallery),
        "n_queries": nq,
        "data": {k: config.data[k] for k in ("dataset", "root", "min_size", "max_size", "buckets")},
        "model": config.model.to_dict(),
        "use_gt": config.eval.use_gt,
        "synthetic": config.data.synthetic.to_dict(),
    }
    if dataset.stats.get("fingerprint"):  # custom datasets: the annotation file + protocol params
        relevant["fingerprint"] = dataset.stats["fingerprint"]
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def _save_features(path: str, feats: dict) -> None:
    arrays = {}
    for k, v in feats.items():
        if v is None:
            continue
        if isinstance(v, list):
            arrays[k + "__lens"] = np.asarray([len(x) for x in v], np.int64)
            arrays[k] = np.concatenate(v, 0) if len(v) else np.zeros((0,))
        else:
            arrays[k] = v
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_features(path: str) -> dict:
    z = np.load(path)
    out = {"query_context_dets": None, "query_context_feats": None}
    for k in z.files:
        if k.endswith("__lens"):
            continue
        if k + "__lens" in z.files:
            lens = z[k + "__lens"]
            out[k] = np.split(z[k], np.cumsum(lens)[:-1]) if len(lens) else []
        else:
            out[k] = z[k]
    if "query_feats" in out:  # a cache written before the rename to query_box_feats
        out["query_box_feats"] = out.pop("query_feats")
    return out


def evaluate(
    config,
    workdir: str,
    model,
    variables,
    dataset: PersonSearchDataset,
    checkpoint_id: str,
    writer=None,
    step: Optional[int] = None,
) -> dict:
    """Extract (or re-use cached) features, compute every metric, write the reports.

    Several processes: each extracts its share of the gallery and queries, process 0 computes
    the metrics from the gathered features and writes the cache, the reports and TensorBoard;
    every process returns the same results."""
    from seqnet_jax.evaluation import evaluator

    variables = dist.host_local(variables)  # each process runs inference on its own share
    queries = dataset.queries
    if config.eval.max_queries > 0:
        queries = queries[: config.eval.max_queries]
    key = cache_key(config, checkpoint_id, dataset, len(queries))
    cache_dir = os.path.join(workdir, "eval_cache")
    main = dist.is_main()
    if main:
        os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"features_{key}.npz")
    logging.info(
        "evaluating %s: %d gallery images, %d queries",
        checkpoint_id,
        len(dataset.gallery),
        len(queries),
    )
    failed: set = set()
    if dist.broadcast_object(main and os.path.exists(path)):  # process 0 decides for all
        logging.info("re-using cached features %s", path)
        feats = _load_features(path) if main else None
    else:
        t0 = time.time()
        inference = SeqNetInference(model, variables, config.model)
        feats = extract_features(config, inference, dataset, queries, failed=failed)
        logging.info(
            "feature extraction %.1f s, %d compilations",
            time.time() - t0,
            inference.num_compilations(),
        )
        if main and not failed:  # with failures the next run decodes (and drops) them again
            _save_features(path, feats)
    if not main:
        return dist.broadcast_object(None)  # process 0's results
    if failed:
        n_queries = len(queries)
        dataset, keep_g, keep_q = drop_images(dataset, failed)
        keep_q = keep_q[: len(queries)]  # the evaluated queries are a prefix of dataset.queries
        queries = [q for q, k in zip(queries, keep_q) if k]
        feats = _without(feats, keep_g, keep_q)
        logging.warning(
            "evaluation of %s without %d image(s) that could not be decoded "
            "(data.skip_bad_images): %s; %d gallery images and %d of %d queries left",
            checkpoint_id,
            len(failed),
            ", ".join(sorted(failed)),
            len(dataset.gallery),
            len(queries),
            n_queries,
        )
    t0 = time.time()
    e = config.eval
    results = evaluator.evaluate_all(
        dataset,
        **feats,
        cbgm_k1=int(e.cbgm_k1) if e.cbgm_k1 > 0 else None,  # None: the dataset's
        cbgm_k2=int(e.cbgm_k2) if e.cbgm_k2 > 0 else None,
        use_cbgm_variants=(False, True) if e.use_cbgm else (False,),
        queries=queries,
    )
    if failed:
        results["skipped_bad_images"] = sorted(failed)
    logging.info("metrics computed in %.1f s", time.time() - t0)
    out_dir = os.path.join(workdir, "eval", checkpoint_id)
    evaluator.write_results(results, out_dir)
    table = evaluator.format_table(results)
    logging.info("evaluation (%s):\n%s", checkpoint_id, table)
    if writer is not None and step is not None:
        writer.scalars(step, evaluator.scalar_summary(results))
    return dist.broadcast_object(results)
