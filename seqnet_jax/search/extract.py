"""Gallery feature extraction: decoding on threads, the model on batches of frames, progress.

Owns :class:`GalleryExtractor`: a producer thread walks the files (videos decoded frame by
frame), a thread pool reads and resizes the pictures, and the calling thread groups frames by
padded size bucket into batches of ``batch_size`` for ``SeqNetInference.detect``; each finished
file becomes a :class:`~seqnet_jax.search.index.FileRecord`. Unreadable files and videos that
stop decoding part way are recorded with their reason, not raised. Progress (frames done of the
frames the headers announce, frames/s, ETA) goes through :func:`seqnet_jax.progress.progress`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import queue
import threading
from typing import Dict, List

import numpy as np
from absl import logging

from seqnet_jax import progress as progress_lib
from seqnet_jax.data import transforms
from seqnet_jax.data.pipeline import collate, process_image
from seqnet_jax.search.gallery import GalleryFile, iter_video_frames, probe_video, read_image
from seqnet_jax.search.index import FileRecord, empty_record

_END = object()


class GalleryExtractor:
    """Decodes gallery files on threads and runs the model on batches of frames."""

    def __init__(
        self,
        inference,
        files: List[GalleryFile],
        video_fps: float,
        batch_size: int,
        min_size: int,
        max_size: int,
        buckets,
        num_workers: int,
        dim: int,
    ):
        self.inference, self.files, self.video_fps = inference, files, float(video_fps)
        self.batch_size, self.min_size, self.max_size = int(batch_size), min_size, max_size
        self.buckets = buckets
        self.num_workers = max(1, int(num_workers))
        self.dim = dim
        self.pool = concurrent.futures.ThreadPoolExecutor(
            self.num_workers, thread_name_prefix="search-decode"
        )
        self.q: queue.Queue = queue.Queue(maxsize=2 * self.batch_size + 2 * self.num_workers)
        self.stop = threading.Event()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _load_image(self, path: str):
        img = read_image(path)
        return img.shape[:2], process_image(img, min_size=self.min_size, max_size=self.max_size)

    def _process_frame(self, img: np.ndarray):
        return img.shape[:2], process_image(img, min_size=self.min_size, max_size=self.max_size)

    def _produce(self) -> None:
        try:
            for fi, f in enumerate(self.files):
                if self.stop.is_set():
                    return
                if f.kind == "image":
                    if not self._put(
                        ("frame", fi, (0, -1, math.nan), self.pool.submit(self._load_image, f.path))
                    ):
                        return
                else:
                    try:
                        for idx, pts, t, img in iter_video_frames(f.path, self.video_fps):
                            pts = -1 if pts is None else int(pts)
                            fut = self.pool.submit(self._process_frame, img)
                            if not self._put(("frame", fi, (idx, pts, t), fut)):
                                return
                    except Exception as e:  # noqa: BLE001 - reported per file
                        if not self._put(("video_error", fi, f"{type(e).__name__}: {e}")):
                            return
                if not self._put(("end", fi, None)):
                    return
        except Exception:  # noqa: BLE001 - the consumer marks the files left as not processed
            logging.exception("gallery decoding thread failed")
        finally:
            self._put(_END)

    def run(self, on_file_done) -> Dict[str, FileRecord]:
        """Processes every file; ``on_file_done(record)`` is called as each file completes."""
        recs = [empty_record(f, self.video_fps, self.dim) for f in self.files]
        parts = [collections.defaultdict(list) for _ in self.files]
        pending = [0] * len(self.files)
        closed = [False] * len(self.files)
        done = [False] * len(self.files)
        buckets: Dict[tuple, list] = collections.defaultdict(list)
        expected = [1] * len(self.files)  # frames per file (videos: from the header, 0 = unknown)
        for fi, f in enumerate(self.files):
            if f.kind == "video":
                try:
                    expected[fi] = probe_video(f.path, self.video_fps)
                except Exception:  # noqa: BLE001 - reported when decoding
                    expected[fi] = 0
        progress = progress_lib.progress(
            desc="gallery", total=sum(expected) or None, unit="frame", summary=True
        )
        producer = threading.Thread(target=self._produce, name="search-produce", daemon=True)
        producer.start()

        def finish(fi: int) -> None:
            done[fi] = True
            rec, p = recs[fi], parts[fi]
            if p:
                order = np.argsort(np.asarray(p["frame_index"]), kind="stable")
                remap = np.empty(len(order), np.int32)
                remap[order] = np.arange(len(order), dtype=np.int32)
                rec.frame_index = np.asarray(p["frame_index"], np.int64)[order]
                rec.frame_pts = np.asarray(p["frame_pts"], np.int64)[order]
                rec.frame_time = np.asarray(p["frame_time"], np.float64)[order]
                rec.frame_hw = np.asarray(p["frame_hw"], np.int32).reshape(-1, 2)[order]
                dets = p["dets"]
                rec.det_frame = (
                    remap[np.concatenate([d[0] for d in dets])]
                    if dets
                    else np.zeros((0,), np.int32)
                ).astype(np.int32)
                if dets:
                    rec.boxes = np.concatenate([d[1] for d in dets]).astype(np.float32)
                    rec.scores = np.concatenate([d[2] for d in dets]).astype(np.float32)
                    rec.embeddings = np.concatenate([d[3] for d in dets]).astype(np.float32)
            if rec.kind == "video" and not len(rec.frame_index) and rec.error is None:
                rec.error = "no frame could be decoded"
            n, n_exp = len(rec.frame_index), expected[fi]
            if rec.kind == "video" and n and rec.warning is None and n < 0.8 * n_exp - 1:
                rec.warning = (
                    f"decoded {n} of the ~{n_exp} frames its header announces (truncated?)"
                )
            if rec.error:
                logging.warning("skipped gallery file %s: %s", rec.key, rec.error)
            elif rec.warning:
                logging.warning("gallery file %s: %s", rec.key, rec.warning)
            on_file_done(rec)

        def run_batch(items) -> None:
            exs = [it[2] for it in items]
            batch = collate(
                exs,
                batch_size=self.batch_size,
                buckets=self.buckets,
                max_boxes=1,
                compact_boxes=False,
            )
            dets = self.inference.detect(batch)
            for j, (fi, (idx, pts, t, hw), _) in enumerate(items):
                p = parts[fi]
                row = len(p["frame_index"])
                p["frame_index"].append(idx)
                p["frame_pts"].append(pts)
                p["frame_time"].append(t)
                p["frame_hw"].append(hw)
                d = dets[j]
                if len(d.boxes):
                    p["dets"].append(
                        (np.full(len(d.boxes), row, np.int64), d.boxes, d.scores, d.embeddings)
                    )
                pending[fi] -= 1
                if closed[fi] and pending[fi] == 0:
                    finish(fi)
            progress.update(len(items))

        try:
            while True:
                item = self.q.get()
                if item is _END:
                    break
                tag, fi, payload = item[0], item[1], item[2]
                if tag == "frame":
                    try:
                        hw, ex = item[3].result()
                    except Exception as e:  # noqa: BLE001 - an unreadable image is skipped
                        recs[fi].error = f"{type(e).__name__}: {e}"
                        continue
                    try:
                        bkey = transforms.choose_bucket([tuple(ex["image_size"])], self.buckets)
                    except ValueError as e:  # custom data.buckets too small for this picture
                        recs[fi].error = str(e)
                        continue
                    pending[fi] += 1
                    buckets[bkey].append((fi, (*payload, tuple(int(v) for v in hw)), ex))
                    if len(buckets[bkey]) == self.batch_size:
                        run_batch(buckets.pop(bkey))
                elif tag == "video_error":
                    if pending[fi] or parts[fi]:
                        recs[fi].warning = f"decoding stopped part way ({payload})"
                    else:
                        recs[fi].error = payload
                elif tag == "end":
                    closed[fi] = True
                    if pending[fi] == 0:
                        finish(fi)
            for bkey in list(buckets):
                run_batch(buckets.pop(bkey))
            for fi in range(len(self.files)):
                if not done[fi]:  # the decoding thread died (its error is logged)
                    recs[fi].error = recs[fi].error or "not processed: the decoding thread failed"
                    finish(fi)
        finally:
            self.stop.set()
            producer.join(timeout=5)
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.frames_per_s = progress_lib.rate(progress)
        self.num_frames = int(progress.n)
        progress.close()
        return {r.key: r for r in recs}
