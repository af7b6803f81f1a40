"""Context Bipartite Graph Matching (CBGM), as the reference codes it (§6.4).

For one query and one gallery image: the query side is the first ``k2`` detections of the query
image from the query-as-gallery pass (element 0 is the query's own GT box, the others are the most
confident co-occurring people; unit-norm features), the gallery side is every detection of the
gallery image (confidence-weighted features). The edge weights are the dot products. A
maximum-weight matching that covers the smaller side (the reference's Kuhn-Munkres; here
``scipy.optimize.linear_sum_assignment(maximize=True)`` on the rectangular matrix) is found;
``max_val`` is the largest weight among the matched edges. If the query (row 0) is matched to
gallery detection ``j``, ``sim[j]`` becomes ``max_val``; otherwise (possible only when the gallery
image has fewer detections than the query side) nothing changes.

When several matchings have the same total weight the chosen one may differ from the reference's
Kuhn-Munkres (which breaks such ties by its own visiting order); with real-valued features such
ties do not occur.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def cbgm_match(weights: np.ndarray) -> tuple[int, float]:
    """Maximum-weight bipartite matching of one query-context x gallery-image graph.

    Args:
      weights: ``(K, N)`` edge weights; row 0 is the query person, rows ``1..K-1`` its context,
        columns the gallery image's detections. ``K, N >= 1``.

    Returns:
      ``(j, max_val)``: the gallery detection matched to the query (``-1`` when the query is left
      unmatched) and the largest weight among the matched edges.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[0] == 0 or weights.shape[1] == 0:
        raise ValueError(f"cbgm_match: weights must be a non-empty (K, N) matrix: {weights.shape}")
    rows, cols = linear_sum_assignment(weights, maximize=True)
    max_val = float(weights[rows, cols].max())
    hit = np.flatnonzero(rows == 0)
    j = int(cols[hit[0]]) if hit.size else -1
    return j, max_val


def cbgm_rescore(
    sims: np.ndarray, context_feats: np.ndarray, gallery_feats: np.ndarray, k2: int
) -> np.ndarray:
    """Applies CBGM to the similarities of one gallery image.

    Args:
      sims: ``(N,)`` query-to-detection similarities of the gallery image.
      context_feats: ``(K, D)`` features of the query image's detections from the
        query-as-gallery pass, row 0 = the query box; only the first ``k2`` rows are used.
      gallery_feats: ``(N, D)`` features of the gallery image's detections.
      k2: number of query-side nodes (query + context).

    Returns:
      A copy of ``sims`` with the query's matched detection set to ``max_val``.
    """
    sims = np.array(sims, copy=True)
    if sims.shape[0] == 0:
        return sims
    weights = np.asarray(context_feats)[:k2] @ np.asarray(gallery_feats).T
    j, max_val = cbgm_match(weights)
    if j >= 0:
        sims[j] = max_val
    return sims
