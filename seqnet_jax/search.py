"""Person search in your own photos and videos (``eval.mode=search``).

    python main.py --config configs/cuhk.py --workdir runs/cuhk --config.eval.mode=search \\
        --config.search.query=me.jpg --config.search.query_box=120,40,310,560 \\
        --config.search.gallery=holiday/ --config.search.output=found/

The query is one person, given as an image and a box ``x1,y1,x2,y2`` in its pixels ('' = the
whole image, e.g. an already cropped person). The gallery is a folder of images and/or videos
(searched recursively) or a single file; videos are decoded with PyAV and sampled at
``search.video_fps`` frames per second. Every person in every gallery frame is detected and embedded
by the model (batched, with a progress line), all detections are ranked by their similarity to the
query (the reference's score: detection-confidence-weighted embedding · query embedding, optionally
re-ranked by CBGM with the query image's other people as context), and the output folder gets:

* ``results.json``: every detection (file, frame, video time stamp, box, detection score,
  similarity, cosine, rank), the top-k, skipped files with the reason, timings;
* ``frames/*.jpg``: gallery frames with their detections labelled by similarity, the best match
  highlighted (the ``search.annotate`` frames with the best matches, or all of them);
* ``overview.png``: the query crop and the top-k matches side by side with their scores;
* ``index.html``: the overview, the top-k table and links to the annotated frames;
* ``gallery_index/``: the embeddings, boxes and scores of every gallery file, with each file's
  size/mtime and the model/config fingerprint. A later query against the same gallery re-uses it
  and only processes new or changed files.

Bad input is reported before any model work: an unreadable query image, a query box that is not
inside the image or has zero area, a missing or empty gallery, a checkpoint whose arrays do not
fit the config (the message names the arrays and, when the workdir has the training config, the
differing fields). Unreadable gallery files are skipped and listed in ``results.json`` and the log.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import html
import json
import math
import os
import queue
import shutil
import threading
import time
import urllib.parse
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging
from PIL import Image, ImageDraw, ImageFont, ImageOps

from seqnet_jax.data import transforms
from seqnet_jax.data.pipeline import collate, process_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".avi",
    ".mkv",
    ".webm",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".flv",
    ".ts",
    ".3gp",
)
INDEX_VERSION = 1
INDEX_DIRNAME = "gallery_index"
_MANIFEST = "manifest.json"
_ARRAYS = "arrays.npz"


class SearchInputError(ValueError):
    """Bad search input (query, box, gallery, options); raised before any model work."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the model built from the config."""


# ------------------------------------------------------------------------------------------------
# Input: images, the query box, the gallery listing
# ------------------------------------------------------------------------------------------------
def read_image(path: str) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB, rotated as its EXIF orientation says
    (so box coordinates refer to the picture as viewers show it)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


def parse_box(text, width: int, height: int) -> np.ndarray:
    """``'x1,y1,x2,y2'`` (pixels of a ``width × height`` image; '' = the whole image) → ``(4,)``.

    Raises ``SearchInputError`` unless ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height``.
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return np.asarray([0, 0, width, height], np.float32)
    parts = text.replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        box = [float(v) for v in parts]
    except (TypeError, ValueError):
        box = []
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise SearchInputError(
            f"search.query_box must be 'x1,y1,x2,y2' (four numbers, pixels) or '' for the whole "
            f"image; got {text!r}"
        )
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise SearchInputError(
            f"search.query_box {text!r} has zero area: it needs x2 > x1 and y2 > y1 "
            f"(width {x2 - x1:g}, height {y2 - y1:g})"
        )
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise SearchInputError(
            f"search.query_box {text!r} is not inside the query image, which is {width}x{height} "
            f"(width x height): it needs 0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}"
        )
    return np.asarray(box, np.float32)


@dataclasses.dataclass
class GalleryFile:
    """One gallery file: ``key`` is its path relative to the gallery root (posix separators)."""

    key: str
    path: str
    kind: str  # "image" | "video"
    size: int
    mtime_ns: int


def file_kind(path: str) -> Optional[str]:
    """``"image"``, ``"video"`` or None (not searched), from the file extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


def list_gallery(gallery: str, exclude: Sequence[str] = ()) -> Tuple[str, List[GalleryFile]]:
    """The image and video files of ``gallery`` (a folder, searched recursively, or one file).

    Hidden files/folders and everything under ``exclude`` (e.g. the output folder) are left out.
    Returns ``(root, files)`` sorted by key. Raises ``SearchInputError`` if ``gallery`` does not
    exist or holds no image/video file.
    """
    if not gallery:
        raise SearchInputError("set --config.search.gallery=FOLDER_OR_VIDEO (the images to search)")
    gallery = os.path.abspath(gallery)
    if not os.path.exists(gallery):
        raise SearchInputError(f"search.gallery {gallery} does not exist")
    excl = [os.path.realpath(e) + os.sep for e in exclude if e]
    if os.path.isfile(gallery):
        root, paths = os.path.dirname(gallery), [gallery]
        if file_kind(gallery) is None:
            raise SearchInputError(
                f"search.gallery {gallery} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor "
                f"a video ({', '.join(VIDEO_EXTENSIONS)})"
            )
    else:
        root, paths = gallery, []
        for d, dirs, names in os.walk(gallery, followlinks=True):
            dirs[:] = sorted(
                x
                for x in dirs
                if not x.startswith(".")
                and not any(
                    (os.path.realpath(os.path.join(d, x)) + os.sep).startswith(e) for e in excl
                )
            )
            paths += [os.path.join(d, n) for n in names if not n.startswith(".")]
    files, others = [], 0
    for p in paths:
        kind = file_kind(p)
        if kind is None:
            others += 1
            continue
        try:
            st = os.stat(p)
        except OSError as e:  # a dangling link: skipped later with its reason
            logging.warning("gallery file %s: %s", p, e)
            continue
        key = os.path.relpath(p, root).replace(os.sep, "/")
        files.append(GalleryFile(key, p, kind, int(st.st_size), int(st.st_mtime_ns)))
    files.sort(key=lambda f: f.key)
    if others:
        logging.info("gallery: ignored %d file(s) that are neither images nor videos", others)
    if not files:
        raise SearchInputError(
            f"the gallery {gallery} is empty: it holds no image ({', '.join(IMAGE_EXTENSIONS)}) "
            f"or video ({', '.join(VIDEO_EXTENSIONS)}) file; nothing to search"
        )
    return root, files


# ------------------------------------------------------------------------------------------------
# Video (PyAV)
# ------------------------------------------------------------------------------------------------
def _av():
    try:
        import av
    except ImportError as e:  # pragma: no cover - av is in requirements.txt
        raise ImportError("video galleries need PyAV: pip install 'av>=12'") from e
    return av


def probe_video(path: str, fps: float) -> int:
    """Estimated number of frames sampled at ``fps`` (0 = all frames); 0 when unknown."""
    av = _av()
    with av.open(path) as c:
        s = c.streams.video[0]
        dur = float(s.duration * s.time_base) if s.duration and s.time_base else 0.0
        if not dur and c.duration:
            dur = c.duration / 1e6
        if fps > 0:
            return int(math.ceil(dur * fps)) if dur else 0
        if s.frames:
            return int(s.frames)
        rate = float(s.average_rate) if s.average_rate else 0.0
        return int(round(dur * rate))


def iter_video_frames(
    path: str, fps: float
) -> Iterator[Tuple[int, Optional[int], float, np.ndarray]]:
    """Decode a video, keeping the first frame of every ``1 / fps`` s slot (``fps <= 0``: all).

    Yields ``(frame_index, pts, time_s, rgb uint8 (H, W, 3))``; ``frame_index`` counts decoded
    frames from 0, ``time_s`` is the presentation time stamp in seconds.
    """
    av = _av()
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        rate = float(s.average_rate) if s.average_rate else 25.0
        next_t = -math.inf
        for i, frame in enumerate(c.decode(s)):
            t = float(frame.time) if frame.time is not None else i / rate
            if fps > 0:
                if t + 1e-6 < next_t:
                    continue
                next_t = (math.floor(t * fps + 1e-6) + 1) / fps
            yield i, frame.pts, t, frame.to_ndarray(format="rgb24")


def read_video_frames(
    path: str, frames: Sequence[Tuple[int, Optional[int]]]
) -> Dict[int, np.ndarray]:
    """Re-decode given ``(frame_index, pts)`` frames of a video → ``{frame_index: rgb}``.

    Seeks to each frame's pts when every pts is known; otherwise decodes sequentially.
    """
    av = _av()
    wanted = {int(i): p for i, p in frames}
    out: Dict[int, np.ndarray] = {}
    if wanted and all(p is not None for p in wanted.values()):
        try:
            with av.open(path) as c:
                s = c.streams.video[0]
                for idx, pts in sorted(wanted.items(), key=lambda kv: kv[1]):
                    c.seek(int(pts), stream=s, backward=True)
                    for fr in c.decode(s):
                        if fr.pts is not None and fr.pts >= pts:
                            if fr.pts == pts:
                                out[idx] = fr.to_ndarray(format="rgb24")
                            break
            if len(out) == len(wanted):
                return out
        except Exception as e:  # noqa: BLE001 - fall back to decoding in order
            logging.info("seeking in %s failed (%s): decoding in order", path, e)
        out = {}
    last = max(wanted) if wanted else -1
    with av.open(path) as c:
        s = c.streams.video[0]
        for i, fr in enumerate(c.decode(s)):
            if i in wanted:
                out[i] = fr.to_ndarray(format="rgb24")
            if i >= last:
                break
    return out


# ------------------------------------------------------------------------------------------------
# Model loading
# ------------------------------------------------------------------------------------------------
def _keystr(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def _flat_shapes(tree) -> Dict[str, tuple]:
    import jax

    return {
        _keystr(p): tuple(int(d) for d in leaf.shape)
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _flat_dict(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _trained_config_diff(workdir: str, config) -> str:
    """Model fields where ``WORKDIR/config.json`` (written by training) differs from ``config``."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            trained = json.load(f).get("model", {})
    except (OSError, ValueError):
        return ""
    ours = json.loads(json.dumps(config.model.to_dict(), default=list))
    a, b = _flat_dict(trained), _flat_dict(ours)
    diffs = [
        f"model.{k}={a.get(k)!r} (config: {b.get(k)!r})"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    if not diffs:
        return ""
    return (
        f" The checkpoint was trained with {', '.join(diffs[:8])}"
        f"{' ...' if len(diffs) > 8 else ''} [from {path}]."
    )


def check_variables_fit(ckpt_tree: dict, abstract: dict, source: str, hint: str = "") -> None:
    """Raise ``CheckpointMismatchError`` naming every ``params``/``batch_stats`` array whose
    presence or shape differs between a checkpoint and the model built from the config.

    ``hint`` (e.g. the differing fields of the training config) is put first in the message.
    """
    cols = ("params", "batch_stats")
    want = _flat_shapes({k: abstract[k] for k in cols})
    have = _flat_shapes({k: ckpt_tree.get(k, {}) for k in cols})

    def order(k: str):  # parameters before BN statistics, then alphabetical
        return (not k.startswith("params/"), k)

    wrong = [
        f"{k}: checkpoint {have[k]} vs config {want[k]}"
        for k in sorted(want, key=order)
        if k in have and have[k] != want[k]
    ]
    missing = sorted(set(want) - set(have), key=order)
    extra = sorted(set(have) - set(want), key=order)
    if not (wrong or missing or extra):
        return
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} array(s) have another shape, e.g. " + "; ".join(wrong[:3]))
    if missing:
        parts.append(
            f"{len(missing)} array(s) of the model are not in the checkpoint, e.g. "
            + ", ".join(missing[:3])
        )
    if extra:
        parts.append(
            f"{len(extra)} checkpoint array(s) are not in the model, e.g. " + ", ".join(extra[:3])
        )
    raise CheckpointMismatchError(
        f"the checkpoint {source} does not fit the model built from the config.{hint} "
        + ". ".join(parts)
        + ". Search with the config the checkpoint was trained with (model.backbone.depth/width, "
        "model.emb_dim, model.roi_head.bn_neck, ...)."
    )


def load_model(config, workdir: str):
    """The model and inference variables for ``config``: the workdir's latest orbax checkpoint
    (or step ``eval.checkpoint``), or an imported reference checkpoint
    (``init.reference_checkpoint``). Returns ``(model, variables, model_id)``; ``model_id`` names
    the weights (path, step, modification time) for the gallery-index fingerprint."""
    import jax

    from seqnet_jax.modeling import seqnet

    ref = config.init.reference_checkpoint
    if ref:
        from seqnet_jax.weights import OIM_KEYS, load_reference_checkpoint, read_state_dict

        ref = os.path.abspath(ref)
        if not os.path.exists(ref):
            raise FileNotFoundError(f"init.reference_checkpoint {ref} does not exist")
        sd = read_state_dict(ref)
        num_pids = int(config.model.oim.lut_size)
        lut = sd.get(OIM_KEYS[0])
        if num_pids <= 0:
            num_pids = int(lut.shape[0]) if lut is not None else 1
        model = seqnet.build_model(config.model, num_pids)
        variables = seqnet.init_variables(model, jax.random.PRNGKey(config.seed))
        variables = load_reference_checkpoint(variables, sd)
        st = os.stat(ref)
        return model, variables, f"reference:{ref}:{st.st_size}:{st.st_mtime_ns}"

    import orbax.checkpoint as ocp
    from jax.sharding import SingleDeviceSharding

    from seqnet_jax import checkpoints as ckpt_lib

    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    step = None
    if os.path.isdir(directory):
        ckpt = ckpt_lib.Checkpointer(directory, read_only=True)
        step = int(config.eval.checkpoint) if config.eval.checkpoint else ckpt.latest_step()
        if step is not None and step not in ckpt.all_steps():
            raise FileNotFoundError(f"no checkpoint step {step} in {directory}: {ckpt.all_steps()}")
        ckpt.close()
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {directory}: train first, or set "
            "--config.init.reference_checkpoint=PATH to search with a released PyTorch model"
        )
    state_dir = os.path.join(directory, str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    meta = checkpointer.metadata(state_dir).item_metadata
    dev = SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev), meta)
    lut = dict(target.get("oim_state", {})).get("reid_loss", {}).get("lut")
    num_pids = int(lut.shape[0]) if lut is not None else max(int(config.model.oim.lut_size), 1)
    if 0 < int(config.model.oim.lut_size) != num_pids:
        logging.warning(
            "model.oim.lut_size=%d but the checkpoint has %d identities (only used in "
            "training; search is unaffected)",
            config.model.oim.lut_size,
            num_pids,
        )
    model = seqnet.build_model(config.model, num_pids)
    abstract = jax.eval_shape(lambda r: seqnet.init_variables(model, r), jax.random.PRNGKey(0))
    check_variables_fit(
        dict(target),
        abstract,
        os.path.join(directory, str(step)),
        _trained_config_diff(workdir, config),
    )
    tree = checkpointer.restore(state_dir, target)
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    mtime = os.stat(os.path.join(directory, str(step))).st_mtime_ns
    return model, variables, f"orbax:{directory}:{step}:{mtime}"


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


# ------------------------------------------------------------------------------------------------
# Gallery index
# ------------------------------------------------------------------------------------------------
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


def _empty_record(f: GalleryFile, video_fps: float, dim: int) -> FileRecord:
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
    """Per-file gallery features stored in ``directory`` (``manifest.json`` + ``arrays.npz``).

    The manifest holds the fingerprint of the model/config, the gallery root and, per file, its
    size, mtime (ns), video sampling rate, error/warning and frame/detection counts; the npz holds
    the concatenated per-file arrays. Writes are atomic (temporary file + rename).
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
            with np.load(os.path.join(index.directory, _ARRAYS)) as z:
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
                else getattr(_empty_record(GalleryFile("", "", "image", 0, 0), 0, self.dim), k)
            )
        tmp = os.path.join(self.directory, _ARRAYS + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, os.path.join(self.directory, _ARRAYS))
        manifest = {
            "version": INDEX_VERSION,
            "fingerprint": self.fingerprint,
            "emb_dim": self.dim,
            "gallery": root,
            "saved": time.time(),
            "files": [r.meta() for r in recs],
        }
        tmp = os.path.join(self.directory, _MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f)
        os.replace(tmp, os.path.join(self.directory, _MANIFEST))


# ------------------------------------------------------------------------------------------------
# Gallery extraction (batched, threaded decoding, progress line)
# ------------------------------------------------------------------------------------------------
class _Progress:
    """Logs ``done/total frames [bar] frames/s ETA`` at most every ``interval`` seconds."""

    def __init__(self, total: int, interval: float = 2.0, what: str = "gallery"):
        self.total, self.interval, self.what = max(int(total), 0), interval, what
        self.done, self.t0, self.last = 0, time.perf_counter(), -math.inf

    def update(self, n: int, final: bool = False) -> None:
        """Counts ``n`` more frames; logs at most every ``interval`` s (always when ``final``)."""
        self.done += n
        now = time.perf_counter()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        el = max(now - self.t0, 1e-9)
        rate = self.done / el
        total = max(self.total, self.done)
        frac = self.done / total if total else 1.0
        bar = "#" * int(round(20 * frac)) + "-" * (20 - int(round(20 * frac)))
        eta = (total - self.done) / rate if rate > 0 else float("nan")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        logging.info(
            "%s: %d/%s frames [%s] %.2f frames/s, elapsed %.1f s, ETA %s",
            self.what,
            self.done,
            f"~{total}" if self.total != total else total,
            bar,
            rate,
            el,
            "done" if final else eta_s,
        )

    @property
    def rate(self) -> float:
        """Frames per second since the start."""
        return self.done / max(time.perf_counter() - self.t0, 1e-9)


_END = object()


class _Extractor:
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
        recs = [_empty_record(f, self.video_fps, self.dim) for f in self.files]
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
        progress = _Progress(sum(expected))
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
        progress.update(0, final=True)
        self.frames_per_s = progress.rate
        self.num_frames = progress.done
        return {r.key: r for r in recs}


# ------------------------------------------------------------------------------------------------
# Ranking
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GalleryTable:
    """All detections of the (ok) gallery files, concatenated in file order."""

    keys: List[str]  # per record
    kinds: List[str]
    frame_rec: np.ndarray  # (F,) record of each frame
    frame_index: np.ndarray
    frame_pts: np.ndarray
    frame_time: np.ndarray
    frame_hw: np.ndarray
    det_frame: np.ndarray  # (M,) global frame row
    boxes: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray


def gallery_table(records: Sequence[FileRecord], dim: int) -> GalleryTable:
    """Concatenates the readable records' frames and detections into one table."""
    recs = [r for r in records if r.error is None]
    nf = np.asarray([len(r.frame_index) for r in recs], np.int64)
    offs = np.concatenate([[0], np.cumsum(nf)[:-1]]).astype(np.int64)

    def cat(name, empty):
        parts = [getattr(r, name) for r in recs]
        return np.concatenate(parts, 0) if parts else empty

    det_frame = (
        np.concatenate([r.det_frame.astype(np.int64) + o for r, o in zip(recs, offs, strict=True)])
        if recs
        else np.zeros((0,), np.int64)
    )
    return GalleryTable(
        keys=[r.key for r in recs],
        kinds=[r.kind for r in recs],
        frame_rec=np.repeat(np.arange(len(recs)), nf),
        frame_index=cat("frame_index", np.zeros((0,), np.int64)),
        frame_pts=cat("frame_pts", np.zeros((0,), np.int64)),
        frame_time=cat("frame_time", np.zeros((0,), np.float64)),
        frame_hw=cat("frame_hw", np.zeros((0, 2), np.int32)),
        det_frame=det_frame,
        boxes=cat("boxes", np.zeros((0, 4), np.float32)),
        scores=cat("scores", np.zeros((0,), np.float32)),
        embeddings=cat("embeddings", np.zeros((0, dim), np.float32)),
    )


def rank_detections(
    table: GalleryTable,
    query_feat: np.ndarray,
    context_feats: Optional[np.ndarray] = None,
    k1: int = 10,
    k2: int = 3,
) -> np.ndarray:
    """Similarity of every gallery detection to the query (reference: CWS gallery feature · unit
    query feature), with CBGM (§6.4) over the frames of the ``k1`` best detections when
    ``context_feats`` (query-as-gallery pass, row 0 = the query box) is given."""
    sims = table.embeddings @ np.asarray(query_feat, np.float32)
    if context_feats is None or not len(sims):
        return sims
    from seqnet_jax.evaluation.cbgm import cbgm_rescore  # scipy: imported only when used

    top = np.argsort(-sims, kind="stable")[:k1]
    out = sims.copy()
    for fr in dict.fromkeys(table.det_frame[top].tolist()):
        rows = np.flatnonzero(table.det_frame == fr)
        out[rows] = cbgm_rescore(sims[rows], context_feats, table.embeddings[rows], k2)
    return out


# ------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------
_TOP1 = (0, 230, 0)
_TOPK = (255, 200, 0)
_OTHER = (80, 170, 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=max(int(size), 8))
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _label(draw: ImageDraw.ImageDraw, xy, text: str, colour, font) -> None:
    x, y = xy
    x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
    draw.rectangle([x0 - 2, y0 - 2, x1 + 2, y1 + 2], fill=colour)
    draw.text((x, y), text, fill=(0, 0, 0), font=font)


def annotate_frame(
    image: np.ndarray,
    boxes: np.ndarray,
    sims: np.ndarray,
    ranks: np.ndarray,
    top_k: int,
    title: str,
) -> Image.Image:
    """The frame with every detection boxed and labelled with its similarity: the overall best
    match thick green ``#1``, the other top-k yellow ``#r``, the rest thin blue. Frames whose
    shorter side is below 480 pixels are enlarged by an integer factor to keep labels legible."""
    im = Image.fromarray(image)
    h, w = image.shape[:2]
    up = max(1, math.ceil(480 / max(min(h, w), 1)))
    if up > 1:
        im = im.resize((w * up, h * up), Image.NEAREST)
        boxes = np.asarray(boxes, np.float32) * up
        h, w = h * up, w * up
    draw = ImageDraw.Draw(im)
    font = _font(max(12, min(h, w) // 45))
    small = _font(max(10, min(h, w) // 65))
    lw = max(2, min(h, w) // 300)
    order = np.argsort(-ranks)  # best last: drawn on top
    for j in order:
        r = int(ranks[j])
        colour = _TOP1 if r == 1 else (_TOPK if r <= top_k else _OTHER)
        width = lw * (3 if r == 1 else 2 if r <= top_k else 1)
        f = font if r <= top_k else small
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        text = f"#{r} {sims[j]:.2f}" if r <= top_k else f"{sims[j]:.2f}"
        ty = y1 - f.size - 6 if y1 - f.size - 6 >= 0 else y1 + width + 2
        _label(draw, (x1 + 2, ty), text, colour, f)
    _label(draw, (4, h - small.size - 6), title, (255, 255, 255), small)
    return im


def _fit(im: Image.Image, w: int, h: int) -> Image.Image:
    s = min(w / max(im.width, 1), h / max(im.height, 1))
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)


def make_overview(
    query_crop: np.ndarray,
    matches: Sequence[Tuple[np.ndarray, str, str]],
    cell: Tuple[int, int] = (160, 320),
    per_row: int = 6,
) -> Image.Image:
    """Query crop + top-k crops side by side; ``matches`` = ``(crop, line1, line2)`` each."""
    cw, ch = cell
    font = _font(15)
    small = _font(12)
    text_h = 44
    n = 1 + len(matches)
    cols = min(n, per_row + 1)
    rows = int(math.ceil(n / cols))
    pad = 8
    sheet = Image.new(
        "RGB", (cols * (cw + pad) + pad, rows * (ch + text_h + pad) + pad), (245, 245, 245)
    )
    draw = ImageDraw.Draw(sheet)
    tiles = [(query_crop, "query", "", (40, 90, 220))]
    for k, (crop, l1, l2) in enumerate(matches):
        tiles.append((crop, l1, l2, _TOP1 if k == 0 else _TOPK))
    for i, (crop, l1, l2, colour) in enumerate(tiles):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (cw + pad), pad + r * (ch + text_h + pad)
        draw.rectangle([x0 - 3, y0 - 3, x0 + cw + 2, y0 + ch + text_h + 2], outline=colour, width=3)
        if crop is not None and crop.size:
            t = _fit(Image.fromarray(crop), cw, ch)
            sheet.paste(t, (x0 + (cw - t.width) // 2, y0 + (ch - t.height) // 2))
        else:
            draw.text((x0 + 8, y0 + ch // 2), "(no picture)", fill=(0, 0, 0), font=small)
        draw.text((x0 + 2, y0 + ch + 4), l1, fill=(0, 0, 0), font=font)
        draw.text((x0 + 2, y0 + ch + 24), l2[:26], fill=(60, 60, 60), font=small)
    if not matches:
        draw.text(
            (pad + cw + 2 * pad, pad + ch // 2),
            "no person detected in the gallery",
            fill=(200, 0, 0),
            font=font,
        )
    return sheet


def _crop(image: np.ndarray, box, margin: float = 0.05) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    xa, ya = int(max(0, math.floor(x1 - mx))), int(max(0, math.floor(y1 - my)))
    xb, yb = int(min(w, math.ceil(x2 + mx))), int(min(h, math.ceil(y2 + my)))
    return image[ya:yb, xa:xb]


def _frame_name(key: str, kind: str, index: int, t: float) -> str:
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in key.replace("/", "__"))
    if kind == "video":
        return f"{safe}__t{t:010.3f}s_f{index:07d}.jpg"
    return f"{safe}.jpg"


def _fmt_time(t: float) -> str:
    if not math.isfinite(t):
        return ""
    m, s = divmod(t, 60.0)
    return f"{int(m) // 60:d}:{int(m) % 60:02d}:{s:06.3f}"


def write_html(path: str, results: dict) -> None:
    """``index.html``: the overview, the top-k table, links to the annotated frames, skips."""
    e = html.escape

    def link(p):
        return urllib.parse.quote(p) if p else ""

    q = results["query"]
    rows = []
    for d in results["top_k"]:
        where = e(d["file"]) + (f" @ {e(_fmt_time(d['time']))}" if d["time"] is not None else "")
        frame = f'<a href="{link(d["annotated"])}">{where}</a>' if d["annotated"] else where
        rows.append(
            f"<tr><td>{d['rank']}</td><td>{d['similarity']:.3f}</td>"
            f"<td>{d['score']:.3f}</td><td>{frame}</td>"
            f"<td>{', '.join(f'{v:.0f}' for v in d['box'])}</td></tr>"
        )
    frames = [
        f'<li><a href="{link(f["annotated"])}">{e(f["file"])}'
        + (f" @ {e(_fmt_time(f['time']))}" if f["time"] is not None else "")
        + "</a>"
        + (
            f" (best {f['best_similarity']:.3f})"
            if f["best_similarity"] is not None
            else " (nobody detected)"
        )
        + "</li>"
        for f in sorted(
            (f for f in results["frames"] if f["annotated"]),
            key=lambda f: np.inf if f["best_similarity"] is None else -f["best_similarity"],
        )
    ]
    skipped = [f"<li>{e(s['file'])}: {e(s['reason'])}</li>" for s in results["skipped"]]
    skipped += [
        f"<li>{e(w['file'])} (searched): {e(w['warning'])}</li>" for w in results["warnings"]
    ]
    s = results["summary"]
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Person search: {e(os.path.basename(q["image"]))}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #bbb;padding:2px 8px;text-align:left}} img{{max-width:100%}}</style>
</head><body>
<h1>Person search</h1>
<p>Query <code>{e(q["image"])}</code>, box {e(", ".join(f"{v:.0f}" for v in q["box"]))};
gallery <code>{e(results["gallery"])}</code>: {s["num_files"]} file(s), {s["num_frames"]} frame(s),
{s["num_detections"]} detection(s), {len(results["skipped"])} skipped.
Ranked by {e(results["similarity"])}.</p>
<p><img src="{link(results["overview"])}" alt="query and top matches"></p>
<h2>Top {len(results["top_k"])}</h2>
<table><tr><th>rank</th><th>similarity</th><th>detection score</th><th>frame</th><th>box</th>
</tr>
{"".join(rows) or '<tr><td colspan="5">no person detected in the gallery</td></tr>'}
</table>
<h2>Annotated frames</h2><ul>{"".join(frames) or "<li>none</li>"}</ul>
<h2>Skipped files and warnings</h2><ul>{"".join(skipped) or "<li>none</li>"}</ul>
<p>Every detection: <a href="results.json">results.json</a>.</p>
</body></html>
"""
    with open(path, "w") as f:
        f.write(doc)


# ------------------------------------------------------------------------------------------------
# The searcher
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SearchOptions:
    """What to search and how (the fields of ``config.search``)."""

    query: str
    gallery: str
    output: str
    query_box: str = ""
    index: str = ""
    video_fps: float = 1.0
    top_k: int = 10
    annotate: int = 50
    cbgm: bool = False
    cbgm_k1: int = 10
    cbgm_k2: int = 3
    batch_size: int = 4
    jax_cache: bool = True

    @classmethod
    def from_config(cls, search_cfg, workdir: str = "") -> "SearchOptions":
        """Options from ``config.search``; an empty ``output`` becomes ``WORKDIR/search``."""
        d = dict(search_cfg.to_dict() if hasattr(search_cfg, "to_dict") else search_cfg)
        if not d.get("output") and workdir:
            d["output"] = os.path.join(workdir, "search")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def validate(self) -> None:
        """Raises ``SearchInputError`` for a missing query/output or an out-of-range option."""
        if not self.query:
            raise SearchInputError("set --config.search.query=IMAGE (the picture of the person)")
        if not self.output:
            raise SearchInputError("set --config.search.output=FOLDER (where results are written)")
        if not self.video_fps >= 0:
            raise SearchInputError(f"search.video_fps must be >= 0, got {self.video_fps}")
        if self.top_k < 1:
            raise SearchInputError(f"search.top_k must be >= 1, got {self.top_k}")
        if self.batch_size < 1:
            raise SearchInputError(f"search.batch_size must be >= 1, got {self.batch_size}")
        if self.cbgm and (self.cbgm_k1 < 1 or self.cbgm_k2 < 1):
            raise SearchInputError("search.cbgm_k1 and search.cbgm_k2 must be >= 1")


@dataclasses.dataclass
class PreparedQuery:
    """A validated query: its pixels and box, the gallery listing."""

    image: np.ndarray
    box: np.ndarray
    root: str
    files: List[GalleryFile]
    seconds: float = 0.0  # time spent checking the inputs and listing the gallery


def prepare(opts: SearchOptions) -> PreparedQuery:
    """Every input check that needs no model: options, query image and box, gallery listing."""
    t0 = time.perf_counter()
    opts.validate()
    if not os.path.isfile(opts.query):
        raise SearchInputError(f"search.query {opts.query} is not a file")
    try:
        image = read_image(opts.query)
    except Exception as e:  # noqa: BLE001 - any decoder error means unreadable
        raise SearchInputError(f"cannot read the query image {opts.query}: {e}") from e
    h, w = image.shape[:2]
    box = parse_box(opts.query_box, w, h)
    root, files = list_gallery(opts.gallery, exclude=[opts.output, opts.index])
    return PreparedQuery(image, box, root, files, time.perf_counter() - t0)


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
        """Loads the model named by ``config`` (see :func:`load_model`)."""
        model, variables, model_id = load_model(config, workdir)
        return cls(config, model, variables, model_id)

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
        if todo:
            t1 = time.perf_counter()
            last_save = [time.perf_counter()]

            def on_done(rec: FileRecord) -> None:
                index.records[rec.key] = rec
                if time.perf_counter() - last_save[0] > 60.0:  # keep progress if interrupted
                    index.save(root)
                    last_save[0] = time.perf_counter()

            ex = _Extractor(
                self.inference,
                todo,
                video_fps,
                batch_size,
                self.min_size,
                self.max_size,
                self.buckets,
                self.num_workers,
                self.dim,
            )
            try:
                ex.run(on_done)
            finally:
                index.save(root)
            stats.update(
                frames_processed=ex.num_frames,
                extract_frames_per_s=ex.frames_per_s,
                extract_s=time.perf_counter() - t1,
            )
        elif vanished:
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
        query_feat, ctx_feats, ctx_boxes = self.embed_query(
            prepared.image, prepared.box, context=opts.cbgm
        )
        timings["query_s"] = time.perf_counter() - t

        index, stats = self.update_index(
            prepared.root, prepared.files, index_dir, opts.video_fps, opts.batch_size
        )
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
        return results

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
                    crops[int(j)] = _crop(img, table.boxes[j])
            if fr in ann_set and img is not None:
                key = table.keys[table.frame_rec[fr]]
                kind = table.kinds[table.frame_rec[fr]]
                t = float(table.frame_time[fr])
                name = _frame_name(key, kind, int(table.frame_index[fr]), t)
                title = key + (f" @ {_fmt_time(t)}" if kind == "video" else "")
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
            where = f"{d['file']} @ {_fmt_time(d['time'])}" if d["time"] is not None else d["file"]
            matches.append(
                (
                    crops.get(int(j)),
                    f"#{d['rank']}  {d['similarity']:.3f}",
                    os.path.basename(where)
                    if d["time"] is None
                    else f"{os.path.basename(d['file'])} {d['time']:.1f}s",
                )
            )
        overview = make_overview(_crop(prepared.image, prepared.box, 0.0), matches)
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


def enable_compilation_cache(directory: str) -> None:
    """Keep compiled XLA programs in ``directory`` (JAX's persistent compilation cache), so a later
    search process skips compiling the model. A cache the user configured already
    (``JAX_COMPILATION_CACHE_DIR``) is left alone."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def search_from_config(config, workdir: str) -> dict:
    """``eval.mode=search``: check the inputs, load the model, search, write the outputs."""
    opts = SearchOptions.from_config(config.search, workdir)
    prepared = prepare(opts)  # every input error before loading anything
    if opts.jax_cache:
        index_dir = opts.index or os.path.join(opts.output, INDEX_DIRNAME)
        enable_compilation_cache(os.path.abspath(os.path.join(index_dir, "jax_cache")))
    t = time.perf_counter()
    searcher = PersonSearcher.from_config(config, workdir)
    logging.info("model loaded in %.1f s", time.perf_counter() - t)
    results = searcher.search(opts, prepared)
    out = os.path.abspath(opts.output)
    print(
        f"search results: {os.path.join(out, 'index.html')} (results.json, overview.png, frames/)",
        flush=True,
    )
    return results
