"""Reader of the official, unpacked CUHK-SYSU person search dataset.

Reads exactly the files the reference loader reads (``seqnet_reference.md`` §5.1)::

    ROOT/Image/SSM/<imname>                      images (imname includes ``.jpg``)
    ROOT/annotation/Images.mat                   ``Img``: every image with all person boxes
    ROOT/annotation/pool.mat                     ``pool``: the test (gallery) image names
    ROOT/annotation/test/train_test/Train.mat    ``Train``: the 5,532 labeled training identities
    ROOT/annotation/test/train_test/TestG50.mat  ``TestG50``: queries + 50-image galleries
    ROOT/annotation/test/train_test/TestG{100,500,1000,2000,4000}.mat   optional, larger galleries

Conventions (see ``seqnet_jax/data/types.py``):

* Boxes: ``x, y, w, h`` are truncated to int32 and converted to ``x1, y1, x2, y2 = x, y, x+w, y+h``
  (the reference's order of operations); returned as float32. Degenerate boxes (``w <= 0`` or
  ``h <= 0``, or non-finite) are dropped and counted.
* Training ids: person ``p`` of ``Train.mat`` is written onto the image box exactly equal (int32
  ``x, y, w, h``) to its ``idlocate``, like the reference; the ids that end up on a training box are
  then mapped to the contiguous range ``1..L`` in ``Train.mat`` order (``L = 5532`` on the official
  data, identical to the reference's ids). Other boxes are ``UNLABELED_PID``.
* Test ids: query ``q`` (0-based, ``TestG50.mat`` order) is test identity ``q + 1``, written onto
  its query box and onto its gallery boxes (from ``TestG50.mat``, as the reference).
  ``Query.pid`` is this test identity (the reference uses a dummy -100 for the query split).
* Protocols: one explicit ``SearchProtocol`` per ``TestG{N}.mat`` present (``TestG50`` required),
  with per-query gallery indices into ``dataset.gallery`` and the query person's box per entry (NaN
  row where absent), entries kept exactly as listed (duplicates included: the evaluator decides);
  plus ``"TestG-full"`` (``gallery_size=-1``, rule ``"all_but_query_frame"``): the whole gallery
  except the query's own image, ground truth from the gallery pids (= TestG50's positives), the
  reference's intended ``gallery_size=-1`` setting.
* Train split = ``sorted(all images - pool)``; gallery split = pool order.
* A training image without any valid box is skipped and counted (the reference asserts). A gallery
  image without valid boxes is kept (it is still a search gallery entry) and counted.
* Bad images (missing / unreadable): ``ImageReadError`` naming the file, or with
  ``skip_bad_images=True`` the image (and queries on it, and protocol entries pointing at it) is
  dropped and counted.

Nothing is ever written into the dataset folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

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

DATASET_NAME = "CUHK-SYSU"
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000)


def protocol_name(gallery_size: int) -> str:
    """``"TestG{N}"``: the protocol of gallery size ``N`` (read from ``TestG{N}.mat``)."""
    return f"TestG{int(gallery_size)}"


# Protocol names (SearchProtocol.name) of this dataset.
TESTG50 = protocol_name(50)  # always present: every image of each query person, 50-image galleries
TESTG100 = protocol_name(100)  # the gallery size the paper and the reference report
FULL_PROTOCOL_NAME = "TestG-full"  # every other gallery image (gallery_size -1)
PROTOCOL_NAMES = tuple(protocol_name(s) for s in GALLERY_SIZES) + (FULL_PROTOCOL_NAME,)
# CBGM parameters of the reference for this dataset (eval_search_cuhk: k1 = 10, k2 = 3).
CBGM_K1 = 10
CBGM_K2 = 3
DOWNLOAD_HINT = (
    "Download the official CUHK-SYSU person search dataset (the archive linked from the authors' "
    "page http://www.ee.cuhk.edu.hk/~xgwang/PS/dataset.html, also linked in the OIM / SeqNet "
    "READMEs) and unpack it; the folder passed here must contain Image/SSM/*.jpg and "
    "annotation/{Images.mat,pool.mat,test/train_test/Train.mat,test/train_test/TestG50.mat}."
)
_MARKERS = ("Image/SSM", "annotation/Images.mat")
_PROTO_DIR = Path("annotation/test/train_test")

__all__ = [
    "CBGM_K1",
    "CBGM_K2",
    "DATASET_NAME",
    "DOWNLOAD_HINT",
    "FULL_PROTOCOL_NAME",
    "GALLERY_SIZES",
    "ImageReadError",
    "PROTOCOL_NAMES",
    "TESTG100",
    "TESTG50",
    "load_cuhk_sysu",
    "protocol_name",
    "read_cuhk_sysu",
]

ImageReadError = ru.ImageReadError


def _mat_var(mat: dict, var: str, path: Path):
    if var not in mat:
        raise ValueError(f"{DATASET_NAME}: {path} has no variable {var!r} (found {sorted(mat)})")
    return mat[var]


def _box_xywh(value) -> np.ndarray | None:
    """A 1×4 ``idlocate`` → int32 ``(4,)`` ``x, y, w, h``; ``None`` when empty (shape (1, 0))."""
    arr = np.asarray(value)
    if arr.size == 0:
        return None
    if arr.size != 4:
        raise ValueError(f"{DATASET_NAME}: a box must have 4 numbers, got shape {arr.shape}")
    return arr.astype(np.float64).reshape(4).astype(np.int32)


def _read_images_mat(path: Path, stats: dict) -> dict:
    """``Images.mat`` → ``{imname: int32 (N, 4) x, y, w, h}`` (valid boxes only)."""
    img = _mat_var(ru.loadmat(path, DATASET_NAME, DOWNLOAD_HINT), "Img", path)
    name_to_xywh: dict = {}
    for rec in ru.mat_records(img):
        name = ru.mat_str(ru.record_field(rec, "imname", 0))
        box_struct = ru.record_field(rec, "box", 2)
        raw = [np.asarray(b[0], dtype=np.float64).reshape(-1) for b in ru.mat_records(box_struct)]
        raw = [b for b in raw if b.size == 4]
        xywh = np.stack(raw) if raw else np.zeros((0, 4), np.float64)
        keep = np.all(np.isfinite(xywh), axis=1) & (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        boxes = np.zeros((0, 4), np.int32)
        if keep.any():
            boxes = xywh[keep].astype(np.int32)
            # Truncation can make a sub-pixel box empty: drop those as well.
            boxes = boxes[ru.valid_box_mask(ru.xywh_to_int_xyxy(boxes))]
        stats["dropped_degenerate_boxes"] += len(xywh) - len(boxes)
        if name in name_to_xywh:
            stats["duplicate_image_records"] += 1
            continue
        name_to_xywh[name] = boxes
    return name_to_xywh


def _set_pid(xywh: np.ndarray, pids: np.ndarray, box: np.ndarray, pid: int) -> bool:
    """Writes ``pid`` on the first box exactly equal to ``box`` (the reference's set_box_pid)."""
    hits = np.nonzero(np.all(xywh == box[None, :], axis=1))[0]
    if hits.size == 0:
        return False
    pids[hits[0]] = pid
    return True


def _query_key(rec) -> tuple:
    q = ru.mat_records(ru.record_field(rec, "Query", 0))[0]
    name = ru.mat_str(ru.record_field(q, "imname", 0))
    box = _box_xywh(ru.record_field(q, "idlocate", 1))
    return name, None if box is None else tuple(int(v) for v in box)


def _gallery_entries(rec) -> list:
    """``[(imname, int32 xywh or None), ...]`` of one protocol record's ``Gallery``."""
    out = []
    for g in ru.mat_records(ru.record_field(rec, "Gallery", 1)):
        out.append(
            (
                ru.mat_str(ru.record_field(g, "imname", 0)),
                _box_xywh(ru.record_field(g, "idlocate", 1)),
            )
        )
    return out


def read_cuhk_sysu(
    root: os.PathLike | str,
    *,
    skip_bad_images: bool = False,
    check_images: str = "header",
    gallery_sizes: Sequence[int] = GALLERY_SIZES,
) -> PersonSearchDataset:
    """Reads the unpacked official CUHK-SYSU folder.

    Args:
      root: the folder holding ``Image/`` and ``annotation/`` (or its single parent folder).
      skip_bad_images: drop (and count) missing / corrupt images instead of raising.
      check_images: ``"none"`` (trust the files, height/width stay 0), ``"header"`` (open every
        image, record its size; catches missing and non-image files) or ``"decode"`` (decode every
        image fully; also catches truncated JPEG data; slow on the full dataset).
      gallery_sizes: which ``TestG{N}.mat`` protocols to read when present (50 is required).

    Returns:
      A ``PersonSearchDataset`` named ``"CUHK-SYSU"``; ``stats`` holds the drop / skip counts.

    Raises:
      FileNotFoundError: a required folder or file is missing (the message names it and the
        archive to download).
      ImageReadError: a bad image while ``skip_bad_images`` is False (names the file).
      ValueError: malformed annotation files.
    """
    root = ru.resolve_root(root, _MARKERS, DATASET_NAME, DOWNLOAD_HINT)
    image_dir = ru.require(root / "Image" / "SSM", DATASET_NAME, DOWNLOAD_HINT)
    paths = {
        "images": root / "annotation" / "Images.mat",
        "pool": root / "annotation" / "pool.mat",
        "train": root / _PROTO_DIR / "Train.mat",
        "TestG50": root / _PROTO_DIR / "TestG50.mat",
    }
    for p in paths.values():
        ru.require(p, DATASET_NAME, DOWNLOAD_HINT)
    stats = {
        "dropped_degenerate_boxes": 0,
        "duplicate_image_records": 0,
        "skipped_train_images_without_valid_box": 0,
        "gallery_images_without_valid_box": 0,
        "skipped_bad_images": 0,
        "bad_images": [],
        "skipped_queries": 0,
        "unmatched_train_boxes": 0,
        "unmatched_test_boxes": 0,
        "dropped_protocol_entries": 0,
        "protocol_files": [],
    }

    name_to_xywh = _read_images_mat(paths["images"], stats)
    pool_mat = ru.loadmat(paths["pool"], DATASET_NAME, DOWNLOAD_HINT)
    pool_cells = np.asarray(_mat_var(pool_mat, "pool", paths["pool"])).reshape(-1)
    pool = [ru.mat_str(v) for v in pool_cells]
    gallery_names = list(dict.fromkeys(pool))
    for name in gallery_names:
        if name not in name_to_xywh:
            raise ValueError(f"{DATASET_NAME}: {name} of {paths['pool']} is not in Images.mat")
    pool_set = set(gallery_names)
    train_names = sorted(n for n in name_to_xywh if n not in pool_set)

    # Protocol records (needed before the image check: query images are probed too).
    testg50_path = paths["TestG50"]
    testg50 = ru.mat_records(
        _mat_var(
            ru.loadmat(testg50_path, DATASET_NAME, DOWNLOAD_HINT, squeeze_me=True),
            "TestG50",
            testg50_path,
        )
    )
    query_keys = [_query_key(rec) for rec in testg50]

    sizes, bad = ru.check_images(
        image_dir,
        train_names + gallery_names + [k[0] for k in query_keys],
        check_images,
        skip_bad_images,
    )
    stats["skipped_bad_images"] = len(bad)
    stats["bad_images"] = sorted(bad)
    name_to_pids = {n: np.full(len(b), UNLABELED_PID, np.int32) for n, b in name_to_xywh.items()}

    # ---- training identities (Train.mat), then the contiguous mapping --------------------------
    train_mat = ru.loadmat(paths["train"], DATASET_NAME, DOWNLOAD_HINT)
    train_cells = np.asarray(_mat_var(train_mat, "Train", paths["train"])).reshape(-1)
    train_set = set(train_names)
    for index, cell in enumerate(train_cells):
        person = ru.mat_records(cell)[0]
        for scene in ru.mat_records(ru.record_field(person, "scene", 2)):
            name = ru.mat_str(ru.record_field(scene, "imname", 0))
            box = _box_xywh(ru.record_field(scene, "idlocate", 1))
            if (
                box is None
                or name not in train_set
                or not _set_pid(name_to_xywh[name], name_to_pids[name], box, index + 1)
            ):
                stats["unmatched_train_boxes"] += 1

    train: list = []
    for name in train_names:
        if name in bad:
            continue
        xywh = name_to_xywh[name]
        if len(xywh) == 0:
            stats["skipped_train_images_without_valid_box"] += 1
            logger.warning("%s: skipping training image %s: no valid box", DATASET_NAME, name)
            continue
        h, w = sizes.get(name, (0, 0))
        train.append(
            ImageAnnotation(
                name,
                ru.xywh_to_int_xyxy(xywh).astype(np.float32),
                name_to_pids[name].copy(),
                -1,
                h,
                w,
            )
        )
    pid_map = ru.contiguous_pid_map(int(p) for a in train for p in a.pids)
    for a in train:
        a.pids = np.array([pid_map.get(int(p), UNLABELED_PID) for p in a.pids], np.int32)
    stats["train_raw_ids"] = sorted(pid_map)  # contiguous id k <-> Train.mat person raw_ids[k-1]

    # ---- test identities (TestG50.mat, as the reference), queries, gallery ---------------------
    for q, rec in enumerate(testg50):
        name, box = query_keys[q]
        entries = [(name, None if box is None else np.array(box, np.int32))]
        for g_name, g_box in _gallery_entries(rec):
            if g_box is None:
                break  # the reference stops at the first entry without the person
            entries.append((g_name, g_box))
        for g_name, g_box in entries:
            if (
                g_box is None
                or g_name not in pool_set
                or not _set_pid(name_to_xywh[g_name], name_to_pids[g_name], g_box, q + 1)
            ):
                stats["unmatched_test_boxes"] += 1

    gallery: list = []
    for name in gallery_names:
        if name in bad:
            continue
        xywh = name_to_xywh[name]
        if len(xywh) == 0:
            stats["gallery_images_without_valid_box"] += 1
        h, w = sizes.get(name, (0, 0))
        gallery.append(
            ImageAnnotation(
                name,
                ru.xywh_to_int_xyxy(xywh).astype(np.float32),
                name_to_pids[name].copy(),
                -1,
                h,
                w,
            )
        )
    gallery_index = {a.name: i for i, a in enumerate(gallery)}

    queries: list = []
    kept_q: list = []  # TestG50 position of each kept query
    for q, (name, box) in enumerate(query_keys):
        xyxy = None if box is None else ru.xywh_to_int_xyxy(np.array(box))[0]
        if name in bad or xyxy is None or not ru.valid_box_mask(xyxy)[0]:
            stats["skipped_queries"] += 1
            logger.warning("%s: skipping query %d (%s)", DATASET_NAME, q, name)
            continue
        queries.append(Query(name, xyxy.astype(np.float32), q + 1, -1))
        kept_q.append(q)

    # ---- protocols ------------------------------------------------------------------------------
    protocols: list = []
    for size in sorted(set(int(s) for s in gallery_sizes) | {50}):
        path = root / _PROTO_DIR / f"TestG{size}.mat"
        if size == 50:
            records = testg50
        elif path.exists():
            mat = ru.loadmat(path, DATASET_NAME, DOWNLOAD_HINT, squeeze_me=True)
            records = ru.mat_records(_mat_var(mat, f"TestG{size}", path))
            del mat
        else:
            continue
        protocols.append(
            _explicit_protocol(size, path, records, query_keys, kept_q, gallery_index, bad, stats)
        )
        stats["protocol_files"].append(path.name)
    protocols.append(SearchProtocol(FULL_PROTOCOL_NAME, -1, rule="all_but_query_frame"))

    logger.info(
        "%s: %d train images (%d ids), %d gallery images, %d queries, protocols %s; %s",
        DATASET_NAME,
        len(train),
        len(pid_map),
        len(gallery),
        len(queries),
        [p.name for p in protocols],
        {k: v for k, v in stats.items() if isinstance(v, int) and v},
    )
    return PersonSearchDataset(
        name=DATASET_NAME,
        train=train,
        gallery=gallery,
        queries=queries,
        protocols=protocols,
        num_train_pids=len(pid_map),
        load_image=ru.FolderImageLoader(image_dir),
        stats=stats,
        cbgm_k1=CBGM_K1,
        cbgm_k2=CBGM_K2,
    )


# The name ``seqnet_jax.data.build_dataset`` imports.
load_cuhk_sysu = read_cuhk_sysu


def _explicit_protocol(
    size: int,
    path: Path,
    records: list,
    query_keys: list,
    kept_q: list,
    gallery_index: dict,
    bad: dict,
    stats: dict,
) -> SearchProtocol:
    """One ``TestG{size}.mat`` → ``SearchProtocol`` aligned with the kept queries.

    The reference assumes every TestG file lists the queries in TestG50's order; here a record
    is matched to its query by (image name, query box), so a different order is also read right.
    """
    by_key: dict = {}
    for rec in records:
        by_key.setdefault(_query_key(rec), rec)
    nan_row = np.full(4, np.nan, np.float32)
    indices_out, gt_out = [], []
    for q in kept_q:
        if q < len(records) and _query_key(records[q]) == query_keys[q]:
            rec = records[q]
        elif query_keys[q] in by_key:
            rec = by_key[query_keys[q]]
        else:
            raise ValueError(
                f"{DATASET_NAME}: query {q} of TestG50.mat ({query_keys[q][0]}) is not in {path}"
            )
        idx, gts = [], []
        for name, box in _gallery_entries(rec):
            if name not in gallery_index:
                if name in bad:
                    stats["dropped_protocol_entries"] += 1
                    continue
                raise ValueError(f"{DATASET_NAME}: {path} lists {name}, which is not in pool.mat")
            idx.append(gallery_index[name])
            xyxy = None if box is None else ru.xywh_to_int_xyxy(box)[0]
            if xyxy is not None and ru.valid_box_mask(xyxy)[0]:
                gts.append(xyxy.astype(np.float32))
            else:
                gts.append(nan_row)
        indices_out.append(np.asarray(idx, np.int32))
        gt_out.append(np.stack(gts).astype(np.float32) if gts else np.zeros((0, 4), np.float32))
    return SearchProtocol(protocol_name(size), size, indices_out, gt_out, rule="explicit")
