"""Host NMS: the fast version returns exactly the keep list of the plain greedy loop."""

import numpy as np
import pytest

from benchmarks.host_nms_bench import rpn_like_boxes
from seqnet_jax.host.nms import batched_nms_padded, nms, nms_reference, process_pool


def _clustered(rng, n, width=1500.0, height=900.0, n_obj=12, near_frac=0.6):
    """RPN-like boxes: jittered copies of a few person boxes plus anchor-like background."""
    return rpn_like_boxes(
        rng, n, width, height, n_obj, near_frac, min_height=40.0, size_range=(16.0, 600.0)
    )


def _uniform(rng, n, size=200.0):
    xy = rng.uniform(0, size, (n, 2))
    wh = rng.uniform(1, size / 3, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.uniform(size=n).astype(np.float32)


def _assert_same(boxes, scores, thr, max_output=None):
    ref = nms_reference(boxes, scores, thr, max_output)
    out = nms(boxes, scores, thr, max_output)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, ref)
    return ref


def test_hand_example_and_strict_threshold():
    boxes = np.array([[0, 0, 2, 1], [0, 0, 1, 1], [10, 10, 11, 11]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    # IoU(0, 1) = 1 / 2 exactly: suppressed only if IoU > threshold.
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 1, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.49), [0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.49, max_output=1), [0])


def test_threshold_compared_in_float64_like_torchvision():
    # IoU = 2/5 in float32 is 0.4000000059604645 > 0.4 as a double: suppressed.
    boxes = np.array([[0, 0, 5, 1], [0, 0, 2, 1]], np.float32)
    scores = np.array([1.0, 0.5], np.float32)
    np.testing.assert_array_equal(nms_reference(boxes, scores, 0.4), [0])
    np.testing.assert_array_equal(nms(boxes, scores, 0.4), [0])


def test_stable_tie_order_and_duplicates():
    boxes = np.tile(np.array([[0, 0, 10, 10]], np.float32), (5, 1))
    scores = np.ones(5, np.float32)
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0])  # lowest index wins the tie
    scores = np.array([0.0, -0.0, 0.0, 0.5, 0.5], np.float32)  # -0.0 ties with 0.0
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [3])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), nms_reference(boxes, scores, 0.5))


def test_edge_cases():
    empty = np.zeros((0, 4), np.float32)
    assert nms(empty, np.zeros(0, np.float32), 0.5).shape == (0,)
    b, s = _uniform(np.random.default_rng(0), 300)
    assert nms(b, s, 0.5, max_output=0).shape == (0,)
    np.testing.assert_array_equal(nms(b[:1], s[:1], 0.5), [0])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        nms(np.zeros((3, 5)), np.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(np.zeros((3, 4)), np.zeros(4), 0.5)
    # non-finite boxes and odd thresholds go through the reference loop
    b2 = b.copy()
    b2[5] = np.nan
    _assert_same(b2, s, 0.5)
    _assert_same(b, s, 0.0)
    _assert_same(b, s, 1.0)
    # float64 and integer inputs
    _assert_same(b.astype(np.float64), s.astype(np.float64), 0.5)
    _assert_same(np.round(b).astype(np.int32), s, 0.5)


@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7, 0.9])
def test_random_sets_match_reference(thr):
    rng = np.random.default_rng(int(thr * 100))
    for trial in range(8):
        n = int(rng.integers(129, 1500))
        if trial % 2:
            boxes, scores = _clustered(rng, n)
        else:
            boxes, scores = _uniform(rng, n, size=float(rng.choice([50, 200, 2000])))
        if trial % 3 == 0:  # exact duplicates and score ties
            dup = rng.integers(0, n, n // 5)
            boxes[rng.integers(0, n, n // 5)] = boxes[dup]
            scores = np.round(scores * 20) / 20
        if trial % 4 == 1:  # degenerate boxes
            z = rng.integers(0, n, 10)
            boxes[z, 2] = boxes[z, 0]
        for m in (None, 5, 50, n // 3):
            _assert_same(boxes, scores, thr, m)


def test_rpn_sized_inputs():
    rng = np.random.default_rng(7)
    boxes, scores = _clustered(rng, 6000)
    for thr, m in ((0.7, 300), (0.5, 300), (0.7, 2000)):
        _assert_same(boxes, scores, thr, m)


def test_heavy_suppression_extends_the_prefix():
    # Nearly identical boxes: the keep rate is tiny, so the ranking prefix is extended often.
    rng = np.random.default_rng(3)
    base = np.array([100, 100, 200, 300], np.float32)
    boxes = (base + rng.normal(0, 1.5, (5000, 4))).astype(np.float32)
    boxes[::50] += rng.uniform(-300, 300, (100, 1)).astype(np.float32)
    scores = rng.uniform(size=5000).astype(np.float32)
    for m in (3, 40, None):
        _assert_same(boxes, scores, 0.7, m)


def _assert_padded_keeps(idx, ok, boxes, scores, valid, thr, k):
    """Each image's row: the reference keeps of its valid boxes, then -1 / False padding."""
    for i in range(boxes.shape[0]):
        vi = np.flatnonzero(valid[i])
        expect = vi[nms_reference(boxes[i, vi], scores[i, vi], thr, k)]
        np.testing.assert_array_equal(idx[i, : expect.size], expect)
        assert ok[i].sum() == expect.size
        assert (idx[i, expect.size :] == -1).all() and not ok[i, expect.size :].any()


def _random_batch(seed, make_boxes, b, n, valid_fraction):
    """``(B, N, 4)`` boxes from ``make_boxes(rng, n)``, uniform scores, a random valid mask."""
    rng = np.random.default_rng(seed)
    boxes = np.stack([make_boxes(rng, n)[0] for _ in range(b)])
    scores = rng.uniform(size=(b, n)).astype(np.float32)
    return boxes, scores, rng.uniform(size=(b, n)) < valid_fraction


def test_batched_nms_padded():
    b, k = 4, 60
    boxes, scores, valid = _random_batch(11, _clustered, b, 700, 0.8)
    valid[3] = False  # an image without candidates
    idx, ok = batched_nms_padded(boxes, scores, valid, 0.7, k)
    assert idx.shape == (b, k) and idx.dtype == np.int32 and ok.dtype == bool
    _assert_padded_keeps(idx, ok, boxes, scores, valid, 0.7, k)
    assert not ok[3].any()
    for threads in (1, 2):
        idx2, ok2 = batched_nms_padded(boxes, scores, valid, 0.7, k, num_threads=threads)
        np.testing.assert_array_equal(idx2, idx)
        np.testing.assert_array_equal(ok2, ok)
    idx3, _ = batched_nms_padded(boxes, scores, None, 0.7, k)
    np.testing.assert_array_equal(idx3[0], nms(boxes[0], scores[0], 0.7, k))


def test_batched_nms_in_worker_processes():
    """The training RPN NMS can run the images in spawned worker processes: same keeps."""
    k = 500
    boxes, scores, valid = _random_batch(5, rpn_like_boxes, 3, 3000, 0.9)
    pool = process_pool(2)
    try:
        idx, ok = batched_nms_padded(boxes, scores, valid, 0.7, k, executor=pool)
    finally:
        pool.shutdown()
    _assert_padded_keeps(idx, ok, boxes, scores, valid, 0.7, k)
    with pytest.raises(ValueError, match="num_workers"):
        process_pool(0)


def test_host_stages_rpn_nms_in_worker_processes():
    from configs import default
    from seqnet_jax.train_lib.host_stages import HostStages

    cfg = default.get_config().model
    cfg.rpn.nms_processes = 0
    rng = np.random.default_rng(9)
    boxes = np.stack([rpn_like_boxes(rng, 3000)[0] for _ in range(2)])
    scores = -np.sort(-rng.normal(size=(2, 3000)), axis=1).astype(np.float32)
    want = HostStages(cfg, seed=0, num_threads=1).proposals(boxes, scores)
    cfg.rpn.nms_processes = 2
    host = HostStages(cfg, seed=0, num_threads=1)
    try:
        got = host.proposals(boxes, scores)
    finally:
        host.close()
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    cfg.rpn.nms_processes = -1
    with pytest.raises(ValueError, match="model.rpn.nms_processes"):
        HostStages(cfg, seed=0)
