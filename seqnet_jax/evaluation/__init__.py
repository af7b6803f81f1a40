"""Evaluation: detection metrics, person-search ranking metrics, CBGM (numpy/scipy, no jax).

See ``shared/spec/seqnet_reference.md`` §6 for the reference definitions reproduced here.
"""

from seqnet_jax.evaluation.cbgm import cbgm_match, cbgm_rescore
from seqnet_jax.evaluation.detection import eval_detection
from seqnet_jax.evaluation.evaluator import (
    EvaluationResults,
    evaluate_all,
    format_table,
    gt_detections,
    scalar_summary,
    write_results,
)
from seqnet_jax.evaluation.metrics import average_precision
from seqnet_jax.evaluation.protocols import (
    explicit,
    explicit_from_names,
    full_set_protocol,
    prw_protocol,
    to_explicit,
)
from seqnet_jax.evaluation.search import SearchConfig, SearchEvaluator, eval_search

__all__ = [
    "EvaluationResults",
    "SearchConfig",
    "SearchEvaluator",
    "average_precision",
    "cbgm_match",
    "cbgm_rescore",
    "eval_detection",
    "eval_search",
    "evaluate_all",
    "explicit",
    "explicit_from_names",
    "format_table",
    "full_set_protocol",
    "gt_detections",
    "prw_protocol",
    "scalar_summary",
    "to_explicit",
    "write_results",
]
