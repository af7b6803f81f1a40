"""The gallery index: per-file detections and embeddings kept between searches.

Owns :class:`FileRecord` (one gallery file's frames and detections), :class:`GalleryIndex`
(``manifest.json`` + ``arrays.npz`` in the index folder, written atomically) and
:func:`fingerprint`, which ties an index to the weights and every config field that changes the
features: an index of another model is rebuilt, a file whose size or modification time changed is
processed again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Dict, Optional

import numpy as np
from absl import logging

from seqnet_jax.search.gallery import GalleryFile

INDEX_VERSION = 2  # 2: the manifest names its arrays file (written first, never overwritten)
INDEX_DIRNAME = "gallery_index"
_MANIFEST = "manifest.json"
_ARRAYS = "arrays.npz"


def fingerprint(config, model_id: str) -> str:
    """Identifies gallery features: the weights and every config field that changes them."""
    d = config.data
    blob = {
        "version": INDEX_VERSION,
        "model_id": model_id,
        "model": json.loads(json.dumps(config.model.to_dict(), default=list)),
        "resize": [int(d.min_size), int(d.max_size), [list(b) for b in d.buckets]],
    }
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


@dataclasses.dataclass
class FileRecord:
    """Everything the index keeps about one gallery file (frames and detections)."""

    key: str
    kind: str
    size: int
    mtime_ns: int
    video_fps: Optional[float] = None
    error: Optional[str] = None  # unreadable: why (the file is skipped)
    warning: Optional[str] = None  # e.g. a video that stopped decoding part way
    frame_index: np.ndarray = None  # (F,) int64
    frame_pts: np.ndarray = None  # (F,) int64, -1 = unknown
    frame_time: np.ndarray = None  # (F,) float64 seconds (video), NaN for images
    frame_hw: np.ndarray = None  # (F, 2) int32 original size
    det_frame: np.ndarray = None  # (M,) int32 row into this record's frames
    boxes: np.ndarray = None  # (M, 4) float32 original coordinates
    scores: np.ndarray = None  # (M,) float32
    embeddings: np.ndarray = None  # (M, D) float32, CWS-scaled (as the reference gallery)

    def meta(self) -> dict:
        """The record's manifest entry (everything but the arrays)."""
        return {
            "key": self.key,
            "kind": self.kind,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "video_fps": self.video_fps,
            "error": self.error,
            "warning": self.warning,
            "num_frames": int(len(self.frame_index)),
            "num_dets": int(len(self.det_frame)),
        }

    def up_to_date(self, f: GalleryFile, video_fps: float) -> bool:
        """Whether the record still describes ``f`` (same size, mtime and video sampling)."""
        return (
            self.kind == f.kind
            and self.size == f.size
            and self.mtime_ns == f.mtime_ns
            and (f.kind != "video" or self.video_fps == float(video_fps))
        )


def empty_record(f: GalleryFile, video_fps: float, dim: int) -> FileRecord:
    """A record of ``f`` with no frame and no detection yet (``dim``: embedding size)."""
    return FileRecord(
        f.key,
        f.kind,
        f.size,
        f.mtime_ns,
        float(video_fps) if f.kind == "video" else None,
        frame_index=np.zeros((0,), np.int64),
        frame_pts=np.zeros((0,), np.int64),
        frame_time=np.zeros((0,), np.float64),
        frame_hw=np.zeros((0, 2), np.int32),
        det_frame=np.zeros((0,), np.int32),
        boxes=np.zeros((0, 4), np.float32),
        scores=np.zeros((0,), np.float32),
        embeddings=np.zeros((0, dim), np.float32),
    )


_REC_ARRAYS = (
    ("frame_index", "F"),
    ("frame_pts", "F"),
    ("frame_time", "F"),
    ("frame_hw", "F"),
    ("det_frame", "M"),
    ("boxes", "M"),
    ("scores", "M"),
    ("embeddings", "M"),
)


class GalleryIndex:
    """Per-file gallery features stored in ``directory`` (``manifest.json`` + an arrays file).

    The manifest holds the fingerprint of the model/config, the gallery root and, per file, its
    size, mtime (ns), video sampling rate, error/warning and frame/detection counts; the npz holds
    the concatenated per-file arrays. A save is atomic as a whole: the arrays go to a new file
    ``arrays-<token>.npz`` (never overwritten), then the manifest naming that file and its size
    replaces the old one by a rename, and only then are older arrays files deleted. A kill at
    any point leaves a manifest with its own arrays; a load checks the name, size and row counts.
    """

    def __init__(self, directory: str, fp: str, dim: int):
        self.directory = os.path.abspath(directory)
        self.fingerprint = fp
        self.dim = int(dim)
        self.records: Dict[str, FileRecord] = {}

    @classmethod
    def load(cls, directory: str, fp: str, dim: int) -> "GalleryIndex":
        """The stored index, or an empty one when absent, unreadable or of another model."""
        index = cls(directory, fp, dim)
        mpath = os.path.join(index.directory, _MANIFEST)
        if not os.path.exists(mpath):
            return index
        try:
            with open(mpath) as f:
                manifest = json.load(f)
            if manifest.get("fingerprint") != fp or int(manifest.get("emb_dim", -1)) != dim:
                logging.warning(
                    "gallery index %s was built with another model or config: rebuilding it",
                    index.directory,
                )
                return index
            apath = os.path.join(index.directory, manifest.get("arrays", _ARRAYS))
            size = manifest.get("arrays_bytes")
            if size is not None and os.path.getsize(apath) != int(size):
                raise ValueError(f"{apath} has {os.path.getsize(apath)} bytes, manifest {size}")
            with np.load(apath) as z:
                arrays = {k: z[k] for k, _ in _REC_ARRAYS}
            metas = manifest["files"]
            counts = {
                "F": np.asarray([m["num_frames"] for m in metas], np.int64),
                "M": np.asarray([m["num_dets"] for m in metas], np.int64),
            }
            split = {}
            for k, n in _REC_ARRAYS:
                if len(arrays[k]) != counts[n].sum():
                    raise ValueError(f"{k}: {len(arrays[k])} rows, manifest {counts[n].sum()}")
                split[k] = np.split(arrays[k], np.cumsum(counts[n])[:-1]) if metas else []
            for i, m in enumerate(metas):
                rec = FileRecord(
                    m["key"],
                    m["kind"],
                    int(m["size"]),
                    int(m["mtime_ns"]),
                    m.get("video_fps"),
                    m.get("error"),
                    m.get("warning"),
                    **{k: split[k][i] for k, _ in _REC_ARRAYS},
                )
                index.records[rec.key] = rec
        except (OSError, ValueError, KeyError) as e:
            logging.warning(
                "gallery index %s is unreadable (%s): rebuilding it", index.directory, e
            )
            index.records = {}
        return index

    def save(self, root: str = "") -> None:
        """Writes the arrays and then the manifest (each atomically); ``root`` is informative."""
        os.makedirs(self.directory, exist_ok=True)
        recs = [self.records[k] for k in sorted(self.records)]
        arrays = {}
        for k, _ in _REC_ARRAYS:
            parts = [getattr(r, k) for r in recs]
            arrays[k] = (
                np.concatenate(parts, 0)
                if parts
                else getattr(empty_record(GalleryFile("", "", "image", 0, 0), 0, self.dim), k)
            )
        token = f"{time.time_ns():x}-{os.getpid()}"
        name = f"arrays-{token}.npz"
        tmp = os.path.join(self.directory, name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.directory, name))
        manifest = {
            "version": INDEX_VERSION,
            "fingerprint": self.fingerprint,
            "emb_dim": self.dim,
            "gallery": root,
            "saved": time.time(),
            "arrays": name,
            "arrays_bytes": os.path.getsize(os.path.join(self.directory, name)),
            "files": [r.meta() for r in recs],
        }
        tmp = os.path.join(self.directory, _MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.directory, _MANIFEST))
        for old in os.listdir(self.directory):  # arrays no manifest names any more
            if old != name and (old == _ARRAYS or old.startswith("arrays-")):
                try:
                    os.remove(os.path.join(self.directory, old))
                except OSError:
                    pass
