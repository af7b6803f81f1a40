"""Host NMS speed: exact fast ``nms`` vs the plain greedy numpy loop (``nms_reference``).

Boxes imitate RPN output after the pre-NMS top-k on a 900×1500 image: 60 % are jittered copies
of a dozen person boxes (high scores), 40 % anchor-like boxes anywhere (low scores).

    python benchmarks/host_nms_bench.py [--repeats 15]

Prints the median wall time and the median CPU time (ms) of each and the speed-up, and checks
that the keep lists are equal.
Also times ``batched_nms_padded`` on a batch of 5 images (threads) against 5 sequential calls.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqnet_jax.host.nms import batched_nms_padded, nms, nms_reference  # noqa: E402


def rpn_like_boxes(
    rng,
    n,
    width=1500.0,
    height=900.0,
    n_obj=15,
    near_frac=0.6,
    min_height=60.0,
    size_range=(32.0, 512.0),
):
    """``(n, 4)`` float32 boxes clipped to the image and ``(n,)`` float32 scores: jittered copies
    of ``n_obj`` person boxes (``near_frac`` of them) plus anchor-like background boxes."""
    cx = rng.uniform(50, width - 50, n_obj)
    cy = rng.uniform(100, height - 100, n_obj)
    h = rng.uniform(min_height, 500, n_obj)
    w = h * rng.uniform(0.3, 0.5, n_obj)
    n_near = int(n * near_frac)
    k = rng.integers(0, n_obj, n_near)
    s = np.exp(rng.normal(0, 0.25, (n_near, 2)))
    bcx = cx[k] + rng.normal(0, 0.15, n_near) * w[k]
    bcy = cy[k] + rng.normal(0, 0.15, n_near) * h[k]
    bw, bh = w[k] * s[:, 0], h[k] * s[:, 1]
    near = np.stack([bcx - bw / 2, bcy - bh / 2, bcx + bw / 2, bcy + bh / 2], 1)
    nf = n - n_near
    size = np.exp(rng.uniform(np.log(size_range[0]), np.log(size_range[1]), nf))
    ar = rng.choice([0.5, 1.0, 2.0], nf)
    fw, fh = size / np.sqrt(ar), size * np.sqrt(ar)
    fcx, fcy = rng.uniform(0, width, nf), rng.uniform(0, height, nf)
    far = np.stack([fcx - fw / 2, fcy - fh / 2, fcx + fw / 2, fcy + fh / 2], 1)
    boxes = np.concatenate([near, far])
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    scores = np.concatenate([rng.uniform(0.5, 1.0, n_near), rng.uniform(0.0, 0.7, nf)])
    return boxes.astype(np.float32), scores.astype(np.float32)


def median_ms(fn, repeats, clock=time.perf_counter):
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return 1e3 * float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"numpy {np.__version__}, {os.cpu_count()} CPUs, median of {args.repeats} runs")
    cases = [(12000, 2000, 0.7), (6000, 300, 0.7), (6000, 300, 0.5)]
    for n, k, thr in cases:
        boxes, scores = rpn_like_boxes(rng, n)
        keep = nms(boxes, scores, thr, k)
        ref = nms_reference(boxes, scores, thr, k)
        assert np.array_equal(keep, ref), "fast NMS differs from the reference loop"
        run_fast = functools.partial(nms, boxes, scores, thr, k)
        run_plain = functools.partial(nms_reference, boxes, scores, thr, k)
        n_plain = max(3, args.repeats // 3)
        fast = median_ms(run_fast, args.repeats)
        plain = median_ms(run_plain, n_plain)
        # CPU time of this process: less sensitive to other load on a shared machine
        fast_cpu = median_ms(run_fast, args.repeats, time.process_time)
        plain_cpu = median_ms(run_plain, n_plain, time.process_time)
        print(
            f"{n:6d} -> {k:5d} @ IoU {thr}: plain {plain:8.2f} ms   fast {fast:7.2f} ms   "
            f"x{plain / fast:5.1f}   | CPU time: plain {plain_cpu:8.2f} fast {fast_cpu:7.2f} "
            f"x{plain_cpu / fast_cpu:5.1f}   (kept {keep.size}, identical)"
        )
    b = 5
    data = [rpn_like_boxes(rng, 12000) for _ in range(b)]
    boxes = np.stack([d[0] for d in data])
    scores = np.stack([d[1] for d in data])
    valid = np.ones(scores.shape, bool)
    seq = median_ms(lambda: [nms(boxes[i], scores[i], 0.7, 2000) for i in range(b)], 5)
    par = median_ms(lambda: batched_nms_padded(boxes, scores, valid, 0.7, 2000), 5)
    print(f"batch of {b} × (12000 -> 2000 @ 0.7): sequential {seq:.1f} ms, threaded {par:.1f} ms")


if __name__ == "__main__":
    main()
