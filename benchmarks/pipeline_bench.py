"""Input pipeline throughput on 1920x1080 JPEGs (decode + flip + resize to 843x1500 + pad).

Writes synthetic 1920x1080 JPEGs to a temporary folder, then times ``TrainLoader`` (batch 5,
900 / 1500 resize rule, default buckets) with 1 and 2 worker threads, and the single-image stages
on their own. "per core" divides by the process CPU time actually used (all threads), so it is
the throughput one fully busy core delivers.

    python benchmarks/pipeline_bench.py [--images 60] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from seqnet_jax.data import pipeline, transforms  # noqa: E402
from seqnet_jax.data.types import ImageAnnotation  # noqa: E402


def write_jpegs(folder: str, n: int, seed: int = 0) -> list[ImageAnnotation]:
    """``n`` photo-like 1920x1080 JPEGs (smooth gradients, rectangles, mild noise), quality 90."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:1080, 0:1920].astype(np.float32)
    annotations = []
    for i in range(n):
        base = np.stack(
            [
                128 + 100 * np.sin(xx / rng.uniform(80, 300) + rng.uniform(0, 6)),
                128 + 100 * np.cos(yy / rng.uniform(80, 300) + rng.uniform(0, 6)),
                128 + 60 * np.sin((xx + yy) / rng.uniform(50, 200)),
            ],
            axis=-1,
        )
        boxes = []
        for _ in range(8):
            x1, y1 = int(rng.integers(0, 1800)), int(rng.integers(0, 900))
            x2, y2 = x1 + int(rng.integers(40, 120)), y1 + int(rng.integers(100, 180))
            base[y1:y2, x1:x2] = rng.uniform(0, 255, 3)
            boxes.append((x1, y1, min(x2, 1920), min(y2, 1080)))
        base += rng.normal(0, 6, base.shape).astype(np.float32)
        image = np.clip(base, 0, 255).astype(np.uint8)
        name = f"frame{i:04d}.jpg"
        Image.fromarray(image).save(os.path.join(folder, name), quality=90)
        annotations.append(
            ImageAnnotation(
                name,
                np.array(boxes, np.int32),
                np.arange(1, 9, dtype=np.int32),
                height=1080,
                width=1920,
            )
        )
    return annotations


def make_loader(folder: str):
    def load_image(name: str) -> np.ndarray:
        with Image.open(os.path.join(folder, name)) as im:
            return np.asarray(im.convert("RGB"))

    return load_image


def time_stages(folder: str, annotations, repeats: int = 10) -> None:
    load = make_loader(folder)
    name = annotations[0].name
    t_dec, t_res, t_col = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        image = load(name)
        t1 = time.perf_counter()
        ex = pipeline.process_image(image, annotations[0].boxes, annotations[0].pids, flip=True)
        t2 = time.perf_counter()
        pipeline.collate(
            [ex] * 5, batch_size=5, buckets=transforms.default_buckets(900, 1500), max_boxes=32
        )
        t3 = time.perf_counter()
        t_dec.append(t1 - t0)
        t_res.append(t2 - t1)
        t_col.append(t3 - t2)
    ms = lambda ts: 1e3 * float(np.median(ts))  # noqa: E731
    print(
        f"single thread, median of {repeats}: decode {ms(t_dec):.1f} ms, flip+resize 1080x1920 "
        f"-> 843x1500 {ms(t_res):.1f} ms; collate 5 images into (5, 928, 1504, 3) by copying "
        f"{ms(t_col):.1f} ms (the loaders skip this copy when annotations carry image sizes: "
        f"workers resize straight into the batch canvas)"
    )


def time_loader(folder: str, annotations, workers: int, batches: int) -> None:
    loader = pipeline.TrainLoader(
        annotations, make_loader(folder), batch_size=5, max_boxes=32, seed=0, num_workers=workers
    )
    it = iter(loader)
    next(it)  # warm-up: thread start, first batch
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(it)
        n += int(batch["image_valid"].sum())
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    it.close()
    print(
        f"TrainLoader workers={workers}: {n} images in {wall:.2f} s wall, {cpu:.2f} s CPU -> "
        f"{n / wall:.1f} images/s, {n / cpu:.1f} images/s per CPU core "
        f"(CPU use {cpu / wall:.2f} cores)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"os.cpu_count() = {os.cpu_count()}, affinity = {len(os.sched_getaffinity(0))} cores")
    with tempfile.TemporaryDirectory() as folder:
        annotations = write_jpegs(folder, args.images)
        time_stages(folder, annotations)
        for workers in args.workers:
            time_loader(folder, annotations, workers, batches=args.images // 5 - 1)


if __name__ == "__main__":
    main()
