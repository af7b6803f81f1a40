"""CBGM (§6.4): matching on one graph, against brute-force enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from seqnet_jax.evaluation.cbgm import cbgm_match, cbgm_rescore


def _brute_force(w: np.ndarray):
    """All matchings covering the smaller side; the best total -> (j of row 0 or -1, max edge)."""
    k, n = w.shape
    best = None
    if k <= n:
        for cols in itertools.permutations(range(n), k):
            pairs = list(zip(range(k), cols, strict=True))
            total = sum(w[i, j] for i, j in pairs)
            if best is None or total > best[0]:
                best = (total, pairs)
    else:
        for rows in itertools.permutations(range(k), n):
            pairs = list(zip(rows, range(n), strict=True))
            total = sum(w[i, j] for i, j in pairs)
            if best is None or total > best[0]:
                best = (total, pairs)
    total, pairs = best
    j = next((j for i, j in pairs if i == 0), -1)
    return j, max(w[i, j] for i, j in pairs), total


def test_spec_example_query_takes_largest_matched_weight():
    # Query (row 0) matches det 0 with 0.5, a context person matches det 1 with 0.9.
    w = np.array([[0.5, 0.1], [0.2, 0.9]])
    assert cbgm_match(w) == (0, pytest.approx(0.9))
    sims = np.array([0.5, 0.3], np.float32)
    out = cbgm_rescore(sims, np.eye(2), w.T, k2=2)  # weights = context @ gallery.T = w
    np.testing.assert_allclose(out, [0.9, 0.3])
    np.testing.assert_array_equal(sims, np.float32([0.5, 0.3]))  # input untouched


def test_query_unmatched_when_gallery_side_smaller():
    # One gallery detection, three query-side nodes: it goes to the context row 2.
    w = np.array([[0.3], [0.1], [0.8]])
    j, max_val = cbgm_match(w)
    assert j == -1 and max_val == pytest.approx(0.8)
    sims = np.array([0.3], np.float32)
    ctx = np.array([[0.3], [0.1], [0.8]])  # 1-d features: weights = ctx @ [[1]]
    np.testing.assert_array_equal(cbgm_rescore(sims, ctx, np.ones((1, 1)), k2=3), sims)


def test_k2_limits_query_side():
    ctx = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    gal = np.array([[0.5, 0.0], [0.0, 0.9]])
    # k2=2: rows (query, ctx1); ctx row 2 (weight 4.5) ignored -> max 0.9.
    np.testing.assert_allclose(cbgm_rescore(np.array([0.5, 0.0]), ctx, gal, k2=2), [0.9, 0.0])
    # k2=1: only the query: its best edge, unchanged value.
    np.testing.assert_allclose(cbgm_rescore(np.array([0.5, 0.0]), ctx, gal, k2=1), [0.5, 0.0])


def test_negative_weights_still_cover_the_smaller_side():
    w = np.array([[-0.2, -0.9, -0.5]])
    assert cbgm_match(w) == (0, pytest.approx(-0.2))


@pytest.mark.parametrize("seed", range(60))
def test_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 5))
    n = int(rng.integers(1, 6))
    w = rng.normal(size=(k, n))
    j, max_val = cbgm_match(w)
    bj, bmax, btotal = _brute_force(w)
    assert j == bj
    assert max_val == pytest.approx(bmax)
    # And the matching found is optimal in total weight.
    r, c = linear_sum_assignment(w, maximize=True)
    assert w[r, c].sum() == pytest.approx(btotal)


def test_errors():
    with pytest.raises(ValueError, match="non-empty"):
        cbgm_match(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="non-empty"):
        cbgm_match(np.zeros((3,)))
    assert cbgm_rescore(np.zeros((0,)), np.eye(2), np.zeros((0, 2)), k2=2).shape == (0,)
