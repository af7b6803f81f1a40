"""The searcher: one loaded model answering searches, and the outputs of a search.

Owns :class:`PersonSearcher`: it keeps the jitted inference between searches, brings the gallery
index up to date (only new or changed files go through the model), embeds the query (and, for
CBGM, the query image's other people), ranks, and writes ``results.json``, ``overview.png``,
``frames/*.jpg`` and ``index.html``. The model comes from ``seqnet_jax.model_loading`` (the same
loader evaluation uses).
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

from seqnet_jax import distributed as dist
from seqnet_jax import model_loading
from seqnet_jax.data import transforms
from seqnet_jax.data.pipeline import collate, process_image
from seqnet_jax.search.extract import GalleryExtractor
from seqnet_jax.search.gallery import GalleryFile, read_image, read_video_frames
from seqnet_jax.search.index import INDEX_DIRNAME, FileRecord, GalleryIndex, fingerprint
from seqnet_jax.search.options import PreparedQuery, SearchOptions, prepare
from seqnet_jax.search.ranking import GalleryTable, gallery_table, rank_detections
from seqnet_jax.search.render import (
    annotate_frame,
    crop,
    format_time,
    frame_file_name,
    make_overview,
    write_html,
)

SAVE_EVERY_S = 10.0  # gallery index saves during a long extraction (see on_done below)


class PersonSearcher:
    """Runs searches with one model; keeps the jitted inference between searches."""

    def __init__(self, config, model, variables, model_id: str):
        from seqnet_jax.inference import SeqNetInference

        self.config = config
        self.model = model
        self.inference = SeqNetInference(model, variables, config.model)
        self.dim = int(model.emb_dim)
        self.fingerprint = fingerprint(config, model_id)
        d = config.data
        self.min_size, self.max_size = int(d.min_size), int(d.max_size)
        self.buckets = (
            [tuple(int(v) for v in b) for b in d.buckets]
            if len(d.buckets)
            else transforms.default_buckets(self.min_size, self.max_size)
        )
        self.num_workers = int(d.num_workers)
        self.last_stats: dict = {}

    @classmethod
    def from_config(cls, config, workdir: str) -> "PersonSearcher":
        """Loads the model named by ``config`` (see ``seqnet_jax.model_loading.load_model``:
        the workdir's orbax checkpoint or ``init.reference_checkpoint``)."""
        loaded = model_loading.load_model(config, workdir)
        return cls(config, loaded.model, loaded.variables, loaded.source_id)

    # -- gallery -----------------------------------------------------------------------------
    def update_index(
        self, root: str, files: List[GalleryFile], index_dir: str, video_fps: float, batch_size: int
    ) -> Tuple[GalleryIndex, dict]:
        """Load the index, process only new/changed files, drop vanished ones, save."""
        t0 = time.perf_counter()
        index = GalleryIndex.load(index_dir, self.fingerprint, self.dim)
        current = {f.key for f in files}
        vanished = [k for k in index.records if k not in current]
        for k in vanished:
            del index.records[k]
        todo = [
            f
            for f in files
            if not (f.key in index.records and index.records[f.key].up_to_date(f, video_fps))
        ]
        stats = {
            "files": len(files),
            "reused": len(files) - len(todo),
            "processed": len(todo),
            "dropped": len(vanished),
            "frames_processed": 0,
            "extract_frames_per_s": None,
            "load_s": time.perf_counter() - t0,
            "extract_s": 0.0,
        }
        logging.info(
            "gallery %s: %d file(s); index %s: %d up to date, %d to process, %d dropped",
            root,
            len(files),
            index.directory,
            stats["reused"],
            len(todo),
            len(vanished),
        )
        # Several processes: each extracts its contiguous share of the new files; process 0
        # gathers the records and alone writes the index.
        main = dist.is_main()
        mine = [todo[i] for i in dist.shard_range(len(todo))]
        if todo:
            t1 = time.perf_counter()
            last_save = [time.perf_counter(), 0.0]  # when, and how long the last save took

            def on_done(rec: FileRecord) -> None:
                # Keep progress if interrupted: save every SAVE_EVERY_S seconds, less often when
                # a save itself is slow (a large index), so saving costs at most ~1/5 of the time.
                index.records[rec.key] = rec
                if not main:
                    return
                now = time.perf_counter()
                if now - last_save[0] > max(SAVE_EVERY_S, 5 * last_save[1]):
                    index.save(root)
                    last_save[:] = [time.perf_counter(), time.perf_counter() - now]

            ex = GalleryExtractor(
                self.inference,
                mine,
                video_fps,
                batch_size,
                self.min_size,
                self.max_size,
                self.buckets,
                self.num_workers,
                self.dim,
            )
            try:
                if mine:
                    ex.run(on_done)
            finally:
                if main:
                    index.save(root)
            num_frames = ex.num_frames if mine else 0
            if jax.process_count() > 1:
                blobs = dist.allgather_bytes(pickle.dumps([index.records[f.key] for f in mine]))
                for blob in blobs:
                    for rec in pickle.loads(blob):
                        index.records[rec.key] = rec
                num_frames = int(dist.allgather(np.asarray([num_frames], np.int64)).sum())
                if main:
                    index.save(root)
            stats.update(
                frames_processed=num_frames,
                extract_frames_per_s=ex.frames_per_s if mine else None,
                extract_s=time.perf_counter() - t1,
            )
        elif vanished and main:
            index.save(root)
        return index, stats

    # -- query -------------------------------------------------------------------------------
    def embed_query(self, image: np.ndarray, box: np.ndarray, context: bool = False):
        """``(D,)`` unit query embedding, plus the query-as-gallery pass (``(K, D)`` features,
        row 0 = the query box, and ``(K, 4)`` boxes) when ``context``."""
        ex = process_image(image, box[None], min_size=self.min_size, max_size=self.max_size)
        batch = collate([ex], batch_size=1, buckets=self.buckets, max_boxes=1, compact_boxes=False)
        feat = self.inference.embed(batch, batch["boxes"][:, :1], batch["box_valid"][:, :1])[0, 0]
        if not context:
            return feat, None, None
        det = self.inference.detect(batch, query_boxes=batch["boxes"][:, 0])[0]
        return feat, det.embeddings, det.boxes

    # -- the whole search ----------------------------------------------------------------------
    def search(self, opts: SearchOptions, prepared: Optional[PreparedQuery] = None) -> dict:
        """Search ``opts.query`` in ``opts.gallery``; writes the outputs; returns results.json's
        content."""
        t_start = time.perf_counter()
        prepared = prepared or prepare(opts)
        out = os.path.abspath(opts.output)
        os.makedirs(out, exist_ok=True)
        index_dir = os.path.abspath(opts.index or os.path.join(out, INDEX_DIRNAME))
        timings = {"prepare_s": prepared.seconds}  # input checks + gallery listing (stat)

        t = time.perf_counter()
        if dist.is_main():  # several processes: they share the gallery, process 0 the rest
            query_feat, ctx_feats, ctx_boxes = self.embed_query(
                prepared.image, prepared.box, context=opts.cbgm
            )
        timings["query_s"] = time.perf_counter() - t

        index, stats = self.update_index(
            prepared.root, prepared.files, index_dir, opts.video_fps, opts.batch_size
        )
        if not dist.is_main():
            return dist.broadcast_object(None)  # process 0's results
        timings["index_load_s"] = stats["load_s"]
        timings["extract_s"] = stats["extract_s"]

        t = time.perf_counter()
        records = [index.records[f.key] for f in prepared.files]
        table = gallery_table(records, self.dim)
        sims = rank_detections(table, query_feat, ctx_feats, opts.cbgm_k1, opts.cbgm_k2)
        order = np.argsort(-sims, kind="stable")
        ranks = np.empty(len(sims), np.int64)
        ranks[order] = np.arange(1, len(sims) + 1)
        cos = table.embeddings @ query_feat / np.maximum(table.scores, 1e-12)
        timings["rank_s"] = time.perf_counter() - t
        answer_s = prepared.seconds + time.perf_counter() - t_start

        t = time.perf_counter()
        results = self._write_outputs(
            opts,
            prepared,
            out,
            index_dir,
            records,
            table,
            sims,
            cos,
            ranks,
            order,
            ctx_boxes,
            stats,
        )
        timings["render_s"] = time.perf_counter() - t
        timings["answer_s"] = answer_s
        timings["total_s"] = prepared.seconds + time.perf_counter() - t_start
        results["timings"] = {k: round(v, 4) for k, v in timings.items()}
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
        self.last_stats = {**stats, **timings}
        self._log_summary(results)
        return dist.broadcast_object(results)

    def _write_outputs(
        self,
        opts,
        prepared,
        out,
        index_dir,
        records,
        table,
        sims,
        cos,
        ranks,
        order,
        ctx_boxes,
        stats,
    ) -> dict:
        top_k = int(opts.top_k)
        n_frames = len(table.frame_index)
        frame_best = np.full(n_frames, -np.inf)
        frame_best_rank = np.full(n_frames, np.iinfo(np.int64).max)
        if len(sims):
            np.maximum.at(frame_best, table.det_frame, sims)
            np.minimum.at(frame_best_rank, table.det_frame, ranks)
        # Frames to draw: those holding the best matches first.
        frame_order = np.argsort(frame_best_rank, kind="stable")
        n_ann = n_frames if opts.annotate < 0 else min(int(opts.annotate), n_frames)
        if opts.annotate >= 0:
            frame_order = frame_order[np.isfinite(frame_best[frame_order])]
        ann_frames = [int(f) for f in frame_order[:n_ann]]
        top = order[:top_k]
        need_frames = sorted(set(ann_frames) | {int(table.det_frame[j]) for j in top})

        frames_dir = os.path.join(out, "frames")
        shutil.rmtree(frames_dir, ignore_errors=True)
        os.makedirs(frames_dir, exist_ok=True)
        annotated: Dict[int, str] = {}
        crops: Dict[int, np.ndarray] = {}
        top_set = {int(j) for j in top}
        ann_set = set(ann_frames)
        for fr, img in self._read_frames(prepared, table, need_frames):
            rows = np.flatnonzero(table.det_frame == fr)
            for j in rows:
                if int(j) in top_set and img is not None:
                    crops[int(j)] = crop(img, table.boxes[j])
            if fr in ann_set and img is not None:
                key = table.keys[table.frame_rec[fr]]
                kind = table.kinds[table.frame_rec[fr]]
                t = float(table.frame_time[fr])
                name = frame_file_name(key, kind, int(table.frame_index[fr]), t)
                title = key + (f" @ {format_time(t)}" if kind == "video" else "")
                im = annotate_frame(img, table.boxes[rows], sims[rows], ranks[rows], top_k, title)
                im.save(os.path.join(frames_dir, name), quality=90)
                annotated[fr] = "frames/" + name

        def det_entry(j: int) -> dict:
            fr = int(table.det_frame[j])
            kind = table.kinds[table.frame_rec[fr]]
            t = float(table.frame_time[fr])
            return {
                "rank": int(ranks[j]),
                "file": table.keys[table.frame_rec[fr]],
                "kind": kind,
                "frame": int(table.frame_index[fr]),
                "time": round(t, 4) if kind == "video" else None,
                "box": [round(float(v), 1) for v in table.boxes[j]],
                "score": round(float(table.scores[j]), 4),
                "similarity": round(float(sims[j]), 4),
                "cosine": round(float(cos[j]), 4),
                "annotated": annotated.get(fr),
            }

        detections = [det_entry(int(j)) for j in order]
        matches = []
        for d, j in zip(detections[:top_k], top, strict=False):
            where = (
                f"{d['file']} @ {format_time(d['time'])}" if d["time"] is not None else d["file"]
            )
            matches.append(
                (
                    crops.get(int(j)),
                    f"#{d['rank']}  {d['similarity']:.3f}",
                    os.path.basename(where)
                    if d["time"] is None
                    else f"{os.path.basename(d['file'])} {d['time']:.1f}s",
                )
            )
        overview = make_overview(crop(prepared.image, prepared.box, 0.0), matches)
        overview.save(os.path.join(out, "overview.png"))

        frames = []
        for fr in range(n_frames):
            kind = table.kinds[table.frame_rec[fr]]
            t = float(table.frame_time[fr])
            nd = int((table.det_frame == fr).sum()) if len(sims) else 0
            frames.append(
                {
                    "file": table.keys[table.frame_rec[fr]],
                    "kind": kind,
                    "frame": int(table.frame_index[fr]),
                    "time": round(t, 4) if kind == "video" else None,
                    "size": [int(table.frame_hw[fr, 1]), int(table.frame_hw[fr, 0])],
                    "num_detections": nd,
                    "best_similarity": (round(float(frame_best[fr]), 4) if nd else None),
                    "annotated": annotated.get(fr),
                }
            )
        skipped = [{"file": r.key, "kind": r.kind, "reason": r.error} for r in records if r.error]
        warnings = [{"file": r.key, "warning": r.warning} for r in records if r.warning]
        h, w = prepared.image.shape[:2]
        results = {
            "query": {
                "image": os.path.abspath(opts.query),
                "box": [round(float(v), 1) for v in prepared.box],
                "size": [w, h],
                "context_boxes": (
                    [[round(float(v), 1) for v in b] for b in ctx_boxes]
                    if ctx_boxes is not None
                    else None
                ),
            },
            "gallery": prepared.root
            if os.path.isdir(opts.gallery)
            else os.path.abspath(opts.gallery),
            "similarity": ("CBGM-re-ranked " if opts.cbgm else "")
            + "detection score x cosine(query, detection) (reference CWS similarity)",
            "cbgm": bool(opts.cbgm),
            "video_fps": float(opts.video_fps),
            "fingerprint": self.fingerprint,
            "index": {
                "directory": index_dir,
                **{
                    k: stats[k]
                    for k in (
                        "files",
                        "reused",
                        "processed",
                        "dropped",
                        "frames_processed",
                        "extract_frames_per_s",
                    )
                },
            },
            "summary": {
                "num_files": len(records),
                "num_frames": n_frames,
                "num_detections": len(detections),
                "num_skipped": len(skipped),
            },
            "overview": "overview.png",
            "top_k": detections[:top_k],
            "skipped": skipped,
            "warnings": warnings,
            "frames": frames,
            "detections": detections,
        }
        if not n_frames:
            results["message"] = "no gallery frame could be read"
        elif not len(detections):
            results["message"] = "no person was detected in the gallery"
        write_html(os.path.join(out, "index.html"), results)
        return results

    def _read_frames(self, prepared: PreparedQuery, table: GalleryTable, frames: Sequence[int]):
        """Yields ``(frame row, rgb or None)`` for the given frame rows, decoding each file once."""
        by_rec = collections.defaultdict(list)
        for fr in frames:
            by_rec[int(table.frame_rec[fr])].append(fr)
        paths = {f.key: f.path for f in prepared.files}
        for ri, frs in by_rec.items():
            key, kind = table.keys[ri], table.kinds[ri]
            try:
                if kind == "image":
                    img = read_image(paths[key])
                    for fr in frs:
                        yield fr, img
                else:
                    wanted = [
                        (
                            int(table.frame_index[fr]),
                            None if table.frame_pts[fr] < 0 else int(table.frame_pts[fr]),
                        )
                        for fr in frs
                    ]
                    imgs = read_video_frames(paths[key], wanted)
                    for fr in frs:
                        yield fr, imgs.get(int(table.frame_index[fr]))
            except Exception as e:  # noqa: BLE001 - the file changed since indexing
                logging.warning("could not re-read %s for drawing: %s", key, e)
                for fr in frs:
                    yield fr, None

    @staticmethod
    def _log_summary(results: dict) -> None:
        s, t = results["summary"], results["timings"]
        lines = [f"{'rank':>4} {'sim':>6} {'score':>5}  frame"]
        for d in results["top_k"]:
            where = d["file"] + (f" @ {d['time']:.2f}s" if d["time"] is not None else "")
            lines.append(
                f"{d['rank']:>4} {d['similarity']:6.3f} {d['score']:5.2f}  {where} "
                f"[{', '.join(f'{v:.0f}' for v in d['box'])}]"
            )
        for sk in results["skipped"]:
            lines.append(f"skipped {sk['file']}: {sk['reason']}")
        if results.get("message"):
            lines.append(results["message"])
        logging.info(
            "search: %d file(s), %d frame(s), %d detection(s), %d skipped; answered in %.3f s "
            "(listing %.3f s, query %.3f s, index %.3f s, extraction %.3f s, ranking %.3f s), "
            "pictures %.3f s\n%s",
            s["num_files"],
            s["num_frames"],
            s["num_detections"],
            s["num_skipped"],
            t["answer_s"],
            t["prepare_s"],
            t["query_s"],
            t["index_load_s"],
            t["extract_s"],
            t["rank_s"],
            t["render_s"],
            "\n".join(lines),
        )
