"""One call that evaluates a dataset: detection, search for every protocol, with/without CBGM.

    results = evaluate_all(dataset, gallery_dets, gallery_feats, query_box_feats,
                           query_context_dets, query_context_feats)
    results["TestG100", True]["mAP"]       # a search result by (protocol, CBGM on/off)
    results["detection"]["all"]["ap"]

CBGM's ``k1``/``k2`` default to the dataset's (``dataset.cbgm_k1/k2``: CUHK-SYSU 10/3, PRW 30/4).
Also the outputs: a console table, ``results.json``, ``per_query_top10.json`` and a plot of mAP
against gallery size (the paper's Figure 5).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Optional, Sequence

import numpy as np

from seqnet_jax.data.types import ImageAnnotation, PersonSearchDataset, SearchProtocol
from seqnet_jax.evaluation.deprecation import renamed_arguments
from seqnet_jax.evaluation.detection import eval_detection
from seqnet_jax.evaluation.search import SearchConfig, SearchEvaluator
from seqnet_jax.fileio import write_text_atomic

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query_top10.json"
PLOT_FILE = "map_vs_gallery_size.png"


def gt_detections(gallery: list[ImageAnnotation]) -> list:
    """Ground-truth boxes as detections with score 1 (the ``use_gt`` upper bound's gallery)."""
    out = []
    for a in gallery:
        boxes = np.asarray(a.boxes, dtype=np.float32).reshape(-1, 4)
        out.append(np.concatenate([boxes, np.ones((boxes.shape[0], 1), np.float32)], axis=1))
    return out


def variant_name(result: dict) -> str:
    """``"TestG100"`` / ``"TestG100 + CBGM"``: the label of one search result."""
    return result["protocol"] + (" + CBGM" if result["cbgm"] else "")


class EvaluationResults(dict):
    """What :func:`evaluate_all` returns: the ``results.json`` dict, with look-ups by protocol.

    ``results["TestG50", False]`` (or ``results.search_result("TestG50", cbgm=False)``) is the
    search result of protocol ``TestG50`` without CBGM: ``{"mAP", "top1", "top5", "top10",
    "protocol", "cbgm", "k1", "k2", ...}``; ``("TestG50", True) in results`` says whether it was
    run. String keys work as on any dict (``results["detection"]["all"]["ap"]``,
    ``results["search"]`` = every search result in run order), and it serialises as the plain
    dict it is (``json.dump`` writes the same ``results.json``).
    """

    def search_result(self, protocol, cbgm: bool = False) -> dict:
        """The search result of ``protocol`` (a name or a ``SearchProtocol``) with CBGM on/off.

        Raises ``KeyError`` naming the ``(protocol, cbgm)`` pairs there are."""
        name = getattr(protocol, "name", protocol)
        for r in dict.get(self, "search", []):
            if r["protocol"] == name and bool(r["cbgm"]) == bool(cbgm):
                return r
        raise KeyError(
            f"no search result for protocol {name!r} {'with' if cbgm else 'without'} CBGM; "
            f"there are {self.variants}"
        )

    @property
    def protocols(self) -> list:
        """The protocol names searched, in run order."""
        return list(dict.fromkeys(r["protocol"] for r in dict.get(self, "search", [])))

    @property
    def variants(self) -> list:
        """Every ``(protocol name, cbgm)`` pair searched, in run order."""
        return [(r["protocol"], bool(r["cbgm"])) for r in dict.get(self, "search", [])]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self.search_result(*key)
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        if isinstance(key, tuple):
            try:
                self.search_result(*key)
            except KeyError:
                return False
            return True
        return super().__contains__(key)

    def get(self, key, default=None):
        if isinstance(key, tuple):
            return self[key] if key in self else default
        return super().get(key, default)


@renamed_arguments(query_feats="query_box_feats")
def evaluate_all(
    dataset: PersonSearchDataset,
    gallery_dets: Sequence,
    gallery_feats: Sequence,
    query_box_feats,
    query_context_dets: Optional[Sequence] = None,
    query_context_feats: Optional[Sequence] = None,
    cbgm_k1: Optional[int] = None,
    cbgm_k2: Optional[int] = None,
    use_cbgm_variants: Sequence[bool] = (False, True),
    detection_thresh: float = 0.01,
    search_thresh: float = 0.5,
    protocols: Optional[Sequence] = None,
    record_per_query: bool = True,
    queries: Optional[Sequence] = None,
) -> EvaluationResults:
    """Detection (all and labeled-only) and search for every protocol and CBGM variant.

    Args:
      dataset: the dataset (its ``gallery``, ``queries`` and ``protocols`` are used).
      gallery_dets: per gallery image ``(N_i, 5)`` ``x1, y1, x2, y2, score``.
      gallery_feats: per gallery image ``(N_i, D)`` confidence-weighted embeddings.
      query_box_feats: ``(Q, D)`` unit embeddings of the query boxes (the reference's
        ``query_box_feats``; the old name ``query_feats`` still works, deprecated).
      query_context_dets, query_context_feats: the query-as-gallery pass for CBGM (per query
        ``(K_i, 5)`` / ``(K_i, D)``, row 0 = the query box; the reference's ``query_dets`` /
        ``query_feats``). Without them the CBGM variants are skipped with a warning.
      cbgm_k1, cbgm_k2: CBGM parameters; ``None``: the dataset's (``dataset.cbgm_k1/k2``:
        CUHK-SYSU 10/3, PRW 30/4).
      use_cbgm_variants: which of CBGM off/on to run.
      detection_thresh, search_thresh: minimum detection score for the detection metrics (0.01)
        and for search (0.5).
      protocols: protocols to run (default: all of ``dataset.protocols``).
      record_per_query: keep the per-query top-10 lists.
      queries: evaluate only these queries (objects taken from ``dataset.queries``, e.g. a prefix
        for a quick run); ``query_box_feats`` and the context then follow this list.

    Returns:
      An :class:`EvaluationResults` dict ``{"dataset", "num_gallery_images", "num_queries",
      "detection": {"all": {...}, "labeled_only": {...}}, "search": [result of eval_search per
      protocol x variant]}``; ``results[protocol_name, cbgm]`` picks one search result.

    Raises:
      ValueError: (from the metrics) on count mismatches, NaN values or an empty gallery.
    """
    cbgm_k1 = int(dataset.cbgm_k1 if cbgm_k1 is None else cbgm_k1)
    cbgm_k2 = int(dataset.cbgm_k2 if cbgm_k2 is None else cbgm_k2)
    protocols = list(dataset.protocols if protocols is None else protocols)
    if queries is None:
        queries = list(dataset.queries)
    else:
        queries = list(queries)
        positions = _query_positions(dataset.queries, queries)
        protocols = [_subset_protocol(p, positions) for p in protocols]
    variants = [bool(v) for v in use_cbgm_variants]
    if True in variants and (query_context_dets is None or query_context_feats is None):
        logger.warning("no query context detections/features given: skipping the CBGM variants")
        variants = [v for v in variants if not v]
    results = EvaluationResults(
        {
            "dataset": dataset.name,
            "num_gallery_images": len(dataset.gallery),
            "num_queries": len(queries),
            "detection": {
                "all": eval_detection(dataset.gallery, gallery_dets, det_thresh=detection_thresh),
                "labeled_only": eval_detection(
                    dataset.gallery, gallery_dets, det_thresh=detection_thresh, labeled_only=True
                ),
            },
            "search": [],
        }
    )
    configs = [SearchConfig(p, cbgm=v, k1=cbgm_k1, k2=cbgm_k2) for p in protocols for v in variants]
    if configs:
        evaluator = SearchEvaluator(
            dataset.gallery,
            queries,
            gallery_dets,
            gallery_feats,
            query_box_feats,
            det_thresh=search_thresh,
            query_context_dets=query_context_dets,
            query_context_feats=query_context_feats,
        )
        results["search"] = evaluator.evaluate(configs, record_per_query=record_per_query)
    return results


def _query_positions(all_queries: Sequence, subset: Sequence) -> list:
    """Position in ``all_queries`` of each query of ``subset`` (by identity, else by value)."""
    by_id = {id(q): i for i, q in enumerate(all_queries)}
    out = []
    for q in subset:
        i = by_id.get(id(q))
        if i is None:
            i = next(
                (
                    j
                    for j, r in enumerate(all_queries)
                    if r.name == q.name and r.pid == q.pid and np.array_equal(r.box, q.box)
                ),
                None,
            )
        if i is None:
            raise ValueError(f"query {q.name} (pid {q.pid}) is not one of the dataset's queries")
        out.append(i)
    return out


def _subset_protocol(protocol: SearchProtocol, positions: list) -> SearchProtocol:
    """``protocol`` restricted to the queries at ``positions`` (per-query lists re-indexed)."""
    if protocol.gallery_indices is None and protocol.gt_boxes is None:
        return protocol
    return dataclasses.replace(
        protocol,
        gallery_indices=[protocol.gallery_indices[i] for i in positions],
        gt_boxes=[protocol.gt_boxes[i] for i in positions],
    )


def scalar_summary(results: dict) -> dict:
    """Flat ``{name: float}`` of the headline numbers (for TensorBoard-style writers)."""
    out = {}
    for key, d in results.get("detection", {}).items():
        out[f"detection/{key}/recall"] = d["recall"]
        out[f"detection/{key}/ap"] = d["ap"]
    for r in results.get("search", []):
        tag = r["protocol"] + ("_cbgm" if r["cbgm"] else "")
        for m in ("mAP", "top1", "top5", "top10"):
            out[f"search/{tag}/{m}"] = r[m]
    return out


def format_table(results: dict) -> str:
    """A console table of detection and search results (percentages)."""
    lines = [f"dataset: {results.get('dataset', '?')}"]
    det = results.get("detection", {})
    for key in ("all", "labeled_only"):
        if key in det:
            d = det[key]
            lines.append(
                f"{key.replace('_', ' ')} detection: recall = {d['recall']:.2%}  ap = {d['ap']:.2%}"
            )
    rows = results.get("search", [])
    if rows:
        cols = ("mAP", "top-1", "top-5", "top-10")
        header = f"{'protocol':<24} {'gallery':>7} " + " ".join(f"{c:>7}" for c in cols)
        lines += ["search ranking:", header, "-" * len(header)]
        for r in rows:
            size = "all" if r["gallery_size"] < 0 else str(r["gallery_size"])
            lines.append(
                f"{variant_name(r):<24} {size:>7} {r['mAP']:>7.2%} {r['top1']:>7.2%} "
                f"{r['top5']:>7.2%} {r['top10']:>7.2%}"
            )
    return "\n".join(lines)


def _plot(rows: list, path: str, title: str = "") -> Optional[str]:
    """mAP vs gallery size, one line per CBGM variant (explicit gallery sizes only)."""
    sized = [r for r in rows if r["gallery_size"] > 0]
    sizes = sorted({r["gallery_size"] for r in sized})
    if len(sizes) < 2:
        logger.warning("mAP-vs-gallery-size plot skipped: fewer than two gallery sizes")
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("mAP-vs-gallery-size plot skipped: matplotlib is not installed")
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for cbgm in (False, True):
        pts = sorted((r["gallery_size"], r["mAP"]) for r in sized if r["cbgm"] == cbgm)
        if pts:
            xs, ys = zip(*pts, strict=True)
            label = "SeqNet + CBGM" if cbgm else "SeqNet"
            ax.plot(xs, [100 * y for y in ys], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.set_xlabel("gallery size")
    ax.set_ylabel("mAP (%)")
    ax.grid(True, alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(results: dict, out_dir: str) -> dict:
    """Writes ``per_query_top10.json``, the mAP-vs-gallery-size PNG and ``results.json``, the
    last (each file written whole, then renamed): ``results.json`` exists only once every
    output is complete (training's rerun evaluates again when it is missing).

    Returns:
      ``{"results", "per_query", "plot"}`` paths (``plot`` is ``None`` when skipped).
    """
    os.makedirs(out_dir, exist_ok=True)
    rows = results.get("search", [])
    summary = dict(results)
    summary["search"] = [{k: v for k, v in r.items() if k != "per_query"} for r in rows]
    paths = {
        "results": os.path.join(out_dir, RESULTS_FILE),
        "per_query": os.path.join(out_dir, PER_QUERY_FILE),
    }
    per_query = {variant_name(r): r["per_query"] for r in rows if "per_query" in r}
    # C encoder: much faster than dump
    write_text_atomic(paths["per_query"], json.dumps(per_query, separators=(",", ":")))
    paths["plot"] = _plot(rows, os.path.join(out_dir, PLOT_FILE), str(results.get("dataset", "")))
    write_text_atomic(paths["results"], json.dumps(summary, indent=2))
    return paths
