"""Reader of the official, unpacked PRW (Person Re-identification in the Wild) dataset.

Reads exactly the files the reference loader reads (``seqnet_reference.md`` §5.2)::

    ROOT/frames/<frame>.jpg           video frames
    ROOT/annotations/<frame>.jpg.mat  ``box_new`` (fallbacks ``anno_file``, ``anno_previous``):
                                      (N, 5) rows ``[id, x, y, w, h]``
    ROOT/frame_train.mat              ``img_index_train``: training frame names (no ``.jpg``)
    ROOT/frame_test.mat               ``img_index_test``: test (gallery) frame names
    ROOT/query_info.txt               ``pid x y w h frame`` per line (CRLF in the release)

Conventions (see ``seqnet_jax/data/types.py``):

* Boxes as the reference: ``x, y, w, h`` clipped at >= 0, ``x2 = x + w``, ``y2 = y + h``, then
  truncated to int32; returned as float32. Unlike the reference, degenerate boxes (``x2 <= x1`` or
  ``y2 <= y1``) are dropped and counted.
* Identities: id -2 (and any other id <= 0) is ``UNLABELED_PID``. Training ids are mapped to the
  contiguous range ``1..L`` in increasing raw-id order (``L = 483`` on the official data; the
  reference keeps the raw ids 1..478, 480..483, 932 with a 482-row lookup table). Gallery and
  query ids keep the raw test ids (they only need to agree with each other).
* Camera id: the first ``c<digit>`` in the frame name (-1 when absent, counted).
* Queries from ``query_info.txt``; CRLF and LF line endings both read right (the reference cuts the
  last two characters of each line). Query box: ``int32([x, y, x+w, y+h])`` then clipped at >= 0.
* Protocols: ``"PRW"`` (rule ``"all_but_query_frame"``: every test frame except the query's own,
  the reported setting) and ``"PRW-multiview"`` (rule ``"other_cameras"``: only frames from other
  cameras).
* A training frame without any valid box is skipped and counted; a test frame without boxes is
  kept (it is still a gallery frame, as in the reference) and counted.
* Bad images (missing / unreadable): ``ImageReadError`` naming the file, or with
  ``skip_bad_images=True`` the frame (and queries on it) is dropped and counted.

Nothing is ever written into the dataset folder.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from seqnet_jax.data import _reader_utils as ru
from seqnet_jax.data.types import (
    UNLABELED_PID,
    ImageAnnotation,
    PersonSearchDataset,
    Query,
    SearchProtocol,
)

logger = logging.getLogger(__name__)

DATASET_NAME = "PRW"
# Protocol names (SearchProtocol.name) of this dataset.
PROTOCOL = "PRW"  # every other test frame is gallery (the reported setting)
MULTIVIEW_PROTOCOL = "PRW-multiview"  # only frames of other cameras
PROTOCOL_NAMES = (PROTOCOL, MULTIVIEW_PROTOCOL)
# CBGM parameters of the reference for this dataset (eval_search_prw: k1 = 30, k2 = 4).
CBGM_K1 = 30
CBGM_K2 = 4
DOWNLOAD_HINT = (
    "Download the official PRW dataset (PRW-v16.04.20, linked from "
    "https://github.com/liangzheng06/PRW-baseline and the SeqNet README) and unpack it; the "
    "folder passed here must contain frames/, annotations/, frame_train.mat, frame_test.mat "
    "and query_info.txt."
)
_MARKERS = ("frames", "annotations", "frame_train.mat")
_BOX_KEYS = ("box_new", "anno_file", "anno_previous")
_CAM_RE = re.compile(r"c(\d)")

__all__ = [
    "CBGM_K1",
    "CBGM_K2",
    "DATASET_NAME",
    "DOWNLOAD_HINT",
    "ImageReadError",
    "MULTIVIEW_PROTOCOL",
    "PROTOCOL",
    "PROTOCOL_NAMES",
    "cam_id_of",
    "load_prw",
    "read_prw",
]

ImageReadError = ru.ImageReadError


def cam_id_of(frame_name: str) -> int:
    """Camera index of a PRW frame name (first ``c<digit>``), or -1 when there is none."""
    m = _CAM_RE.search(frame_name)
    return int(m.group(1)) if m else -1


def _frame_names(path: Path, var: str) -> list:
    mat = ru.loadmat(path, DATASET_NAME, DOWNLOAD_HINT)
    if var not in mat:
        raise ValueError(f"{DATASET_NAME}: {path} has no variable {var!r} (found {sorted(mat)})")
    names = []
    for v in np.asarray(mat[var]).reshape(-1):
        name = ru.mat_str(v)
        names.append(name if name.endswith(".jpg") else name + ".jpg")
    return list(dict.fromkeys(names))


def _read_annotation(path: Path) -> tuple:
    """``annotations/<frame>.jpg.mat`` → (int32 (N, 4) x1y1x2y2, int32 (N,) raw ids, N dropped)."""
    mat = ru.loadmat(path, DATASET_NAME, DOWNLOAD_HINT)
    key = next((k for k in _BOX_KEYS if k in mat), None)
    if key is None:
        raise ValueError(f"{DATASET_NAME}: {path} has none of the variables {_BOX_KEYS}")
    arr = np.asarray(mat[key], dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), np.int32), np.zeros((0,), np.int32), 0
    if arr.ndim != 2 or arr.shape[1] != 5:
        raise ValueError(f"{DATASET_NAME}: {path}:{key} must be (N, 5), got {arr.shape}")
    ids = arr[:, 0]
    rois = np.clip(arr[:, 1:], 0, None)  # several coordinates are negative in the release
    rois[:, 2:] += rois[:, :2]
    keep = ru.valid_box_mask(rois) & np.isfinite(ids)
    rois = rois[keep].astype(np.int32)
    keep2 = ru.valid_box_mask(rois)  # truncation can empty a sub-pixel box
    return rois[keep2], ids[keep][keep2].astype(np.int32), int(len(arr) - keep2.sum())


def _read_queries(path: Path, stats: dict) -> list:
    """``query_info.txt`` → ``[(pid, int32 (4,) x1y1x2y2, frame name), ...]`` (CRLF or LF)."""
    ru.require(path, DATASET_NAME, DOWNLOAD_HINT)
    text = path.read_bytes().decode("utf-8-sig")
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) != 6:
            raise ValueError(
                f"{DATASET_NAME}: {path}:{lineno}: expected 'pid x y w h frame', got {line!r}"
            )
        try:
            pid = int(float(tokens[0]))
            x, y, w, h = (float(t) for t in tokens[1:5])
        except ValueError as e:
            raise ValueError(f"{DATASET_NAME}: {path}:{lineno}: {e}") from e
        box = np.clip(np.array([x, y, x + w, y + h]).astype(np.int32), 0, None)
        name = tokens[5] if tokens[5].endswith(".jpg") else tokens[5] + ".jpg"
        out.append((pid, box, name))
    if not out:
        raise ValueError(f"{DATASET_NAME}: {path} lists no query")
    return out


def read_prw(
    root: os.PathLike | str,
    *,
    skip_bad_images: bool = False,
    check_images: str = "header",
) -> PersonSearchDataset:
    """Reads the unpacked official PRW folder.

    Args:
      root: the folder holding ``frames/``, ``annotations/`` and the ``.mat`` / ``.txt`` index
        files (or its single parent folder).
      skip_bad_images: drop (and count) missing / corrupt frames instead of raising.
      check_images: ``"none"``, ``"header"`` (default; records each frame's size) or
        ``"decode"`` (full decode of every frame), as in ``read_cuhk_sysu``.

    Returns:
      A ``PersonSearchDataset`` named ``"PRW"``; ``stats`` holds the drop / skip counts and the
      raw training ids (contiguous id ``k`` is raw id ``stats["train_raw_ids"][k - 1]``).

    Raises:
      FileNotFoundError: a required folder or file is missing (names it and what to download).
      ImageReadError: a bad frame while ``skip_bad_images`` is False (names the file).
      ValueError: malformed annotation files.
    """
    root = ru.resolve_root(root, _MARKERS, DATASET_NAME, DOWNLOAD_HINT)
    frame_dir = ru.require(root / "frames", DATASET_NAME, DOWNLOAD_HINT)
    anno_dir = ru.require(root / "annotations", DATASET_NAME, DOWNLOAD_HINT)
    for f in ("frame_train.mat", "frame_test.mat", "query_info.txt"):
        ru.require(root / f, DATASET_NAME, DOWNLOAD_HINT)
    stats = {
        "dropped_degenerate_boxes": 0,
        "skipped_train_images_without_valid_box": 0,
        "gallery_images_without_valid_box": 0,
        "skipped_bad_images": 0,
        "bad_images": [],
        "skipped_queries": 0,
        "frames_without_cam_id": 0,
    }
    train_names = _frame_names(root / "frame_train.mat", "img_index_train")
    test_names = _frame_names(root / "frame_test.mat", "img_index_test")
    raw_queries = _read_queries(root / "query_info.txt", stats)

    sizes, bad = ru.check_images(
        frame_dir,
        train_names + test_names + [q[2] for q in raw_queries],
        check_images,
        skip_bad_images,
    )
    stats["skipped_bad_images"] = len(bad)
    stats["bad_images"] = sorted(bad)

    def annotate(names: list, is_train: bool) -> list:
        out = []
        for name in names:
            if name in bad:
                continue
            boxes, ids, dropped = _read_annotation(anno_dir / (name + ".mat"))
            stats["dropped_degenerate_boxes"] += dropped
            if len(boxes) == 0:
                if is_train:
                    stats["skipped_train_images_without_valid_box"] += 1
                    logger.warning(
                        "%s: skipping training frame %s: no valid box", DATASET_NAME, name
                    )
                    continue
                stats["gallery_images_without_valid_box"] += 1
            pids = np.where(ids > 0, ids, UNLABELED_PID).astype(np.int32)
            cam = cam_id_of(name)
            stats["frames_without_cam_id"] += int(cam < 0)
            h, w = sizes.get(name, (0, 0))
            out.append(ImageAnnotation(name, boxes.astype(np.float32), pids, cam, h, w))
        return out

    train = annotate(train_names, True)
    pid_map = ru.contiguous_pid_map(int(p) for a in train for p in a.pids)
    for a in train:
        a.pids = np.array([pid_map.get(int(p), UNLABELED_PID) for p in a.pids], np.int32)
    stats["train_raw_ids"] = sorted(pid_map)
    gallery = annotate(test_names, False)

    queries = []
    for pid, box, name in raw_queries:
        if name in bad or pid <= 0 or not ru.valid_box_mask(box)[0]:
            stats["skipped_queries"] += 1
            logger.warning("%s: skipping query pid %d in %s", DATASET_NAME, pid, name)
            continue
        queries.append(Query(name, box.astype(np.float32), pid, cam_id_of(name)))

    protocols = [
        SearchProtocol(PROTOCOL, -1, rule="all_but_query_frame"),
        SearchProtocol(MULTIVIEW_PROTOCOL, -1, rule="other_cameras"),
    ]
    logger.info(
        "%s: %d train frames (%d ids), %d gallery frames, %d queries; %s",
        DATASET_NAME,
        len(train),
        len(pid_map),
        len(gallery),
        len(queries),
        {k: v for k, v in stats.items() if isinstance(v, int) and v},
    )
    return PersonSearchDataset(
        name=DATASET_NAME,
        train=train,
        gallery=gallery,
        queries=queries,
        protocols=protocols,
        num_train_pids=len(pid_map),
        load_image=ru.FolderImageLoader(frame_dir),
        stats=stats,
        cbgm_k1=CBGM_K1,
        cbgm_k2=CBGM_K2,
    )


# The name ``seqnet_jax.data.build_dataset`` imports.
load_prw = read_prw
