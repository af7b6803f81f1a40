"""Our own person-search dataset format ("custom"): one image folder and one COCO-style JSON.

Layout::

    DIR/annotations.json      the annotations (this module's format, below)
    DIR/images/<file_name>    the images or video frames (``image_root`` in the JSON moves it)

``annotations.json``::

    {
      "info": {"name": "my-cameras"},                         optional; the dataset name
      "image_root": "images",                                 optional; folder of the images
      "images": [                                             every image, once
        {"id": 1, "file_name": "cam0/000001.jpg", "width": 1920, "height": 1080,
         "camera_id": 0, "time": 0.0}                         camera_id / time: optional
      ],
      "annotations": [                                        every person box
        {"image_id": 1, "bbox": [x, y, w, h], "person_id": 7}  pixels; person_id -1 = unlabeled
      ],
      "splits": {"train": [1, 2], "test": [3, 4]},            image ids of each split
      "queries": [                                            optional
        {"image_id": 3, "bbox": [x, y, w, h], "person_id": 7}
      ],
      "protocols": [...],                                     optional; needs "queries"
      "cbgm": {"k1": 10, "k2": 3}                             optional; CBGM parameters
    }

Conventions (as the CUHK-SYSU / PRW readers, ``seqnet_jax/data/types.py``):

* ``bbox`` is COCO's ``x, y, w, h`` in pixels (floats allowed): ``x1, y1, x2, y2 = x, y, x + w,
  y + h``, float32. Boxes with ``w <= 0`` or ``h <= 0`` are dropped and counted (the validator
  reports them as errors).
* ``person_id``: an identity number (``>= 1``) shared by every box of that person anywhere in the
  dataset, or ``-1`` for a person without identity. Training ids are mapped to ``1..L`` in
  increasing ``person_id`` order (``stats["train_raw_ids"][k - 1]`` is the raw id of ``k``); test
  ids keep their raw value.
* Train split = ``splits.train`` in that order (images without a valid box are skipped and
  counted); gallery = ``splits.test`` in that order (kept even without boxes).
* ``camera_id`` (an integer ``>= 0``) becomes ``ImageAnnotation.cam_id`` (-1 when absent).
  ``time`` (seconds, any origin) is only validated and counted.
* Queries: from ``queries`` when present (the query image may be any image of the file: a test
  image, or one that is in no split), else derived from the test split (below).
* Protocols: from ``protocols`` when present, else derived:

  - queries (when ``queries`` is absent): one per labeled test identity seen in at least two test
    images, in increasing ``person_id`` order; its image is a seeded random choice among the
    identity's test images (``numpy.random.default_rng([seed, person_id])``), its box the first
    box of the identity there;
  - ``"all"``: every other test image is gallery (rule ``all_but_query_frame``, as PRW and
    CUHK-SYSU's full set);
  - ``"cross-camera"``: only test images of other cameras (rule ``other_cameras``, as PRW's
    multi-view), when every test image and every query has a ``camera_id`` and there are at least
    two cameras;
  - ``"TestG{N}"`` for each gallery size ``N`` (default 50 and 100), as CUHK-SYSU's: every other
    test image showing the query person plus distractors, seeded random test images without the
    person (``default_rng([seed, 1, query index])``), up to ``N`` images; a smaller gallery keeps
    a prefix of a larger one's distractors. A size is skipped when it is not smaller than the
    number of other test images (it would be ``"all"``).

  Given protocols: ``{"name": "PRW", "rule": "all_but_query_frame"}`` (or ``"other_cameras"``),
  or an explicit one ``{"name": "TestG50", "gallery_size": 50, "galleries": [{"image_ids":
  [...], "bboxes": [[x, y, w, h] or null, ...]}, ...]}`` with one gallery per query (test image
  ids, and the query person's box in each or ``null`` where absent), as CUHK-SYSU's ``TestG*.mat``;
  rule ``"full_set"`` takes ``galleries`` too (``seqnet_jax.evaluation.protocols``).
* ``cbgm``: the CBGM ``k1`` / ``k2`` the dataset's numbers are reported with (default 10 / 3).

Bad input: a JSON that does not follow the format raises :class:`FormatError` naming the file, the
key path (``annotations[17].bbox``) and what was expected (all problems, up to a limit). Missing or
unreadable images raise ``ImageReadError`` naming the file (``skip_bad_images`` drops them). An
image whose actual size differs from its ``width`` / ``height`` is an error. Nothing is ever
written into the dataset folder. ``python -m seqnet_jax.data.validate DIR`` checks a dataset in
depth; ``python -m seqnet_jax.data.convert`` writes one from other formats.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from seqnet_jax.data import _reader_utils as ru
from seqnet_jax.data.cuhk_sysu import protocol_name
from seqnet_jax.data.types import (
    DEFAULT_CBGM_K1,
    DEFAULT_CBGM_K2,
    UNLABELED_PID,
    ImageAnnotation,
    PersonSearchDataset,
    Query,
    SearchProtocol,
)
from seqnet_jax.evaluation.protocols import RULES

logger = logging.getLogger(__name__)

DATASET_NAME = "custom"
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
ALL_PROTOCOL = "all"  # derived: every other test image is gallery
CROSS_CAMERA_PROTOCOL = "cross-camera"  # derived: only test images of other cameras
DEFAULT_GALLERY_SIZES = (50, 100)
DEFAULT_PROTOCOL_SEED = 0
CBGM_K1 = DEFAULT_CBGM_K1
CBGM_K2 = DEFAULT_CBGM_K2
SPLITS = ("train", "test")
TOP_LEVEL_KEYS = (
    "info",
    "image_root",
    "images",
    "annotations",
    "splits",
    "queries",
    "protocols",
    "cbgm",
    "categories",
    "licenses",
)
MAX_LISTED_ERRORS = 20

__all__ = [
    "ALL_PROTOCOL",
    "ANNOTATIONS_FILE",
    "CROSS_CAMERA_PROTOCOL",
    "DATASET_NAME",
    "DEFAULT_GALLERY_SIZES",
    "DEFAULT_PROTOCOL_SEED",
    "IMAGES_DIR",
    "CustomDocument",
    "FormatError",
    "ImageReadError",
    "Problem",
    "derive_protocols",
    "derive_queries",
    "document_from_dataset",
    "fingerprint",
    "load_custom",
    "locate",
    "parse_document",
    "read_custom",
    "read_document",
    "write_document",
]

ImageReadError = ru.ImageReadError


class FormatError(ValueError):
    """The annotation JSON does not follow the format; the message names file and key paths."""


@dataclasses.dataclass
class Problem:
    """One finding about a dataset: ``severity`` ``"error"`` or ``"warning"``.

    ``where`` is the key path (``annotations[17].bbox``) or a file, ``file`` the image file it
    concerns (may be empty).
    """

    severity: str
    where: str
    message: str
    file: str = ""

    def __str__(self) -> str:
        image = f" ({self.file})" if self.file else ""
        return f"{self.severity.upper()} {self.where}{image}: {self.message}"


@dataclasses.dataclass
class ImageRecord:
    index: int  # position in "images"
    id: Any
    file_name: str
    width: int
    height: int
    camera_id: int = -1
    time: Optional[float] = None


@dataclasses.dataclass
class BoxRecord:
    """An annotation or a query: ``xywh`` as written, ``index`` its position in the list."""

    index: int
    image_id: Any
    xywh: tuple
    person_id: int

    @property
    def xyxy(self) -> np.ndarray:
        x, y, w, h = (float(v) for v in self.xywh)
        return np.array([x, y, x + w, y + h], np.float64)


@dataclasses.dataclass
class CustomDocument:
    """The parsed annotation JSON (records with a format error are left out)."""

    path: Path  # the JSON file
    image_dir: Path
    name: str
    images: list  # [ImageRecord]
    annotations: list  # [BoxRecord]
    splits: dict  # {"train": [image id], "test": [image id]}
    queries: Optional[list]  # [BoxRecord] or None
    protocols: Optional[list]  # raw protocol objects (checked), or None
    cbgm: Optional[tuple]  # (k1, k2) or None
    sha1: str = ""  # of the JSON bytes

    def image_by_id(self) -> dict:
        return {im.id: im for im in self.images}

    def boxes_by_image(self) -> dict:
        out = collections.defaultdict(list)
        for a in self.annotations:
            out[a.image_id].append(a)
        return out


# ------------------------------------------------------------------------------------------------
# Parsing and format checks.


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _describe(v) -> str:
    text = json.dumps(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_bbox(v, where: str, errors: list) -> Optional[tuple]:
    if not (isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v)):
        errors.append(
            Problem("error", where, f"expected [x, y, w, h]: 4 finite numbers, got {_describe(v)}")
        )
        return None
    return tuple(float(x) for x in v)


def _check_id(v, where: str, errors: list) -> bool:
    if _is_int(v) or (isinstance(v, str) and v):
        return True
    errors.append(Problem("error", where, f"expected an integer or string id, got {_describe(v)}"))
    return False


def locate(root: os.PathLike | str, annotations: Optional[str] = None) -> Path:
    """The annotation JSON of a dataset: ``root`` itself when it is a file, else
    ``root / annotations`` (default ``annotations.json``).

    Raises:
      FileNotFoundError: naming the expected file.
    """
    root = Path(root).expanduser()
    if root.is_file():
        return root
    path = root / (annotations or ANNOTATIONS_FILE)
    if not root.is_dir():
        raise FileNotFoundError(
            f"custom dataset folder not found: {root} (expected a folder holding "
            f"{annotations or ANNOTATIONS_FILE} and {IMAGES_DIR}/, see the README)"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"custom dataset: expected {path} (not found); write one with "
            "'python -m seqnet_jax.data.convert', see the README"
        )
    return path


def parse_document(doc, path: os.PathLike | str) -> tuple:
    """Checks the structure of a loaded annotation JSON.

    Returns:
      ``(CustomDocument, problems)``: the records without format errors, and every problem found
      (format errors, plus warnings for unknown keys). The caller decides what an error means.
    """
    path = Path(path)
    errors: list = []
    warnings: list = []
    if not isinstance(doc, dict):
        errors.append(Problem("error", "(top level)", f"expected an object, got {_describe(doc)}"))
        empty = CustomDocument(path, path.parent / IMAGES_DIR, "", [], [], {}, None, None, None)
        return empty, errors
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            warnings.append(
                Problem(
                    "warning", key, f"unknown top-level key (known: {', '.join(TOP_LEVEL_KEYS)})"
                )
            )
    for key in ("images", "annotations", "splits"):
        if key not in doc:
            errors.append(Problem("error", key, "missing (required)"))

    name = DATASET_NAME
    info = doc.get("info")
    if info is not None:
        if not isinstance(info, dict):
            errors.append(Problem("error", "info", f"expected an object, got {_describe(info)}"))
        elif "name" in info:
            if isinstance(info["name"], str) and info["name"]:
                name = info["name"]
            else:
                errors.append(
                    Problem(
                        "error", "info.name", f"expected a string, got {_describe(info['name'])}"
                    )
                )
    image_root = doc.get("image_root", IMAGES_DIR)
    if not (isinstance(image_root, str) and image_root and ".." not in Path(image_root).parts):
        errors.append(
            Problem(
                "error",
                "image_root",
                f"expected a relative folder name, got {_describe(image_root)}",
            )
        )
        image_root = IMAGES_DIR
    image_dir = path.parent / image_root

    # -- images
    images: list = []
    seen_ids: dict = {}
    seen_files: dict = {}
    raw_images = doc.get("images", [])
    if not isinstance(raw_images, list):
        errors.append(Problem("error", "images", f"expected a list, got {_describe(raw_images)}"))
        raw_images = []
    for i, im in enumerate(raw_images):
        where = f"images[{i}]"
        n_err = len(errors)
        if not isinstance(im, dict):
            errors.append(Problem("error", where, f"expected an object, got {_describe(im)}"))
            continue
        for key in ("id", "file_name", "width", "height"):
            if key not in im:
                errors.append(Problem("error", f"{where}.{key}", "missing (required)"))
        if "id" in im and _check_id(im["id"], f"{where}.id", errors):
            if im["id"] in seen_ids:
                errors.append(
                    Problem(
                        "error",
                        f"{where}.id",
                        f"duplicate image id {_describe(im['id'])} "
                        f"(also images[{seen_ids[im['id']]}])",
                    )
                )
            else:
                seen_ids[im["id"]] = i
        fn = im.get("file_name")
        if "file_name" in im:
            if (
                not (isinstance(fn, str) and fn and not os.path.isabs(fn))
                or ".." in Path(str(fn)).parts
            ):
                errors.append(
                    Problem(
                        "error",
                        f"{where}.file_name",
                        f"expected a relative path inside the image folder, got {_describe(fn)}",
                    )
                )
            elif fn in seen_files:
                errors.append(
                    Problem(
                        "error",
                        f"{where}.file_name",
                        f"duplicate file name {fn!r} (also images[{seen_files[fn]}])",
                    )
                )
            else:
                seen_files[fn] = i
        for key in ("width", "height"):
            if key in im and not (_is_int(im[key]) and im[key] > 0):
                errors.append(
                    Problem(
                        "error",
                        f"{where}.{key}",
                        f"expected a positive integer (pixels), got {_describe(im[key])}",
                    )
                )
        cam = im.get("camera_id")
        if cam is not None and not (_is_int(cam) and cam >= 0):
            errors.append(
                Problem(
                    "error",
                    f"{where}.camera_id",
                    f"expected an integer >= 0 or null, got {_describe(cam)}",
                )
            )
        t = im.get("time")
        if t is not None and not _is_number(t):
            errors.append(
                Problem(
                    "error",
                    f"{where}.time",
                    f"expected a number (seconds) or null, got {_describe(t)}",
                )
            )
        if len(errors) == n_err:
            images.append(
                ImageRecord(
                    i,
                    im["id"],
                    fn,
                    int(im["width"]),
                    int(im["height"]),
                    -1 if cam is None else int(cam),
                    None if t is None else float(t),
                )
            )
    known = {im.id for im in images}

    def check_image_ref(v, where: str) -> bool:
        if v in known:
            return True
        if v in seen_ids:  # an image with its own format error: already reported
            return False
        errors.append(Problem("error", where, f"no image has id {_describe(v)}"))
        return False

    def box_records(key: str, min_pid: int) -> Optional[list]:
        raw = doc.get(key)
        if raw is None:
            return None
        if not isinstance(raw, list):
            errors.append(Problem("error", key, f"expected a list, got {_describe(raw)}"))
            return []
        out = []
        for j, a in enumerate(raw):
            where = f"{key}[{j}]"
            n_err = len(errors)
            if not isinstance(a, dict):
                errors.append(Problem("error", where, f"expected an object, got {_describe(a)}"))
                continue
            for k in ("image_id", "bbox", "person_id"):
                if k not in a:
                    errors.append(Problem("error", f"{where}.{k}", "missing (required)"))
            # (a reference to an image with its own format error is left out silently)
            known_image = "image_id" in a and check_image_ref(a["image_id"], f"{where}.image_id")
            box = _check_bbox(a["bbox"], f"{where}.bbox", errors) if "bbox" in a else None
            pid = a.get("person_id")
            if "person_id" in a and not (
                _is_int(pid) and (pid >= 1 or (min_pid < 0 and pid == -1))
            ):
                expected = "an integer >= 1 or -1 (unlabeled)" if min_pid < 0 else "an integer >= 1"
                errors.append(
                    Problem(
                        "error", f"{where}.person_id", f"expected {expected}, got {_describe(pid)}"
                    )
                )
            if len(errors) == n_err and known_image:
                out.append(BoxRecord(j, a["image_id"], box, int(pid)))
        return out

    annotations = box_records("annotations", -1) or []
    queries = box_records("queries", 1)

    # -- splits
    splits = {s: [] for s in SPLITS}
    raw_splits = doc.get("splits", {})
    if not isinstance(raw_splits, dict):
        errors.append(
            Problem("error", "splits", f"expected an object, got {_describe(raw_splits)}")
        )
        raw_splits = {}
    elif "splits" in doc:
        for key in raw_splits:
            if key not in SPLITS:
                warnings.append(
                    Problem("warning", f"splits.{key}", "unknown split (known: train, test)")
                )
        for s in SPLITS:
            if s not in raw_splits:
                errors.append(Problem("error", f"splits.{s}", "missing (required; may be [])"))
    split_of: dict = {}
    for s in SPLITS:
        ids = raw_splits.get(s, [])
        if not isinstance(ids, list):
            errors.append(
                Problem(
                    "error", f"splits.{s}", f"expected a list of image ids, got {_describe(ids)}"
                )
            )
            continue
        for k, v in enumerate(ids):
            where = f"splits.{s}[{k}]"
            if not _check_id(v, where, errors) or not check_image_ref(v, where):
                continue
            if v in split_of:
                other = split_of[v]
                what = "listed twice" if other[0] == s else f"also in splits.{other[0]}"
                errors.append(
                    Problem(
                        "error",
                        where,
                        f"image {_describe(v)} {what} (splits.{other[0]}[{other[1]}])",
                    )
                )
                continue
            split_of[v] = (s, k)
            splits[s].append(v)

    # -- protocols (need queries)
    protocols = doc.get("protocols")
    if protocols is not None:
        protocols = _check_protocols(protocols, queries, set(splits["test"]), errors)

    cbgm = None
    raw_cbgm = doc.get("cbgm")
    if raw_cbgm is not None:
        if not isinstance(raw_cbgm, dict):
            errors.append(
                Problem("error", "cbgm", f"expected an object, got {_describe(raw_cbgm)}")
            )
        else:
            ok = True
            for k in ("k1", "k2"):
                v = raw_cbgm.get(k)
                if not (_is_int(v) and v >= 1):
                    errors.append(
                        Problem(
                            "error", f"cbgm.{k}", f"expected an integer >= 1, got {_describe(v)}"
                        )
                    )
                    ok = False
            if ok:
                cbgm = (int(raw_cbgm["k1"]), int(raw_cbgm["k2"]))
    parsed = CustomDocument(
        path, image_dir, name, images, annotations, splits, queries, protocols, cbgm
    )
    return parsed, errors + warnings


def _check_protocols(raw, queries, test_ids: set, errors: list) -> list:
    if not isinstance(raw, list):
        errors.append(Problem("error", "protocols", f"expected a list, got {_describe(raw)}"))
        return []
    if queries is None:
        errors.append(
            Problem("error", "protocols", "given without 'queries' (their galleries are per query)")
        )
        return []
    out, names = [], set()
    for p, proto in enumerate(raw):
        where = f"protocols[{p}]"
        n_err = len(errors)
        if not isinstance(proto, dict):
            errors.append(Problem("error", where, f"expected an object, got {_describe(proto)}"))
            continue
        name = proto.get("name")
        if not (isinstance(name, str) and name):
            errors.append(
                Problem("error", f"{where}.name", f"expected a string, got {_describe(name)}")
            )
        elif name in names:
            errors.append(Problem("error", f"{where}.name", f"duplicate protocol name {name!r}"))
        names.add(name)
        rule = proto.get("rule", "explicit")
        if rule not in RULES:
            errors.append(
                Problem(
                    "error",
                    f"{where}.rule",
                    f"expected one of {', '.join(RULES)}, got {_describe(rule)}",
                )
            )
        size = proto.get("gallery_size", -1)
        if not (_is_int(size) and (size >= 1 or size == -1)):
            errors.append(
                Problem(
                    "error",
                    f"{where}.gallery_size",
                    f"expected an integer >= 1 or -1 (all), got {_describe(size)}",
                )
            )
        galleries = proto.get("galleries")
        if rule in ("explicit", "full_set"):
            if not isinstance(galleries, list):
                errors.append(
                    Problem(
                        "error",
                        f"{where}.galleries",
                        f"rule {rule!r} needs a list with one gallery per query, "
                        f"got {_describe(galleries)}",
                    )
                )
            elif len(galleries) != len(queries):
                errors.append(
                    Problem(
                        "error",
                        f"{where}.galleries",
                        f"expected {len(queries)} galleries (one per query), got {len(galleries)}",
                    )
                )
            else:
                for qi, g in enumerate(galleries):
                    _check_gallery(g, f"{where}.galleries[{qi}]", test_ids, errors)
        elif galleries is not None:
            errors.append(
                Problem(
                    "error",
                    f"{where}.galleries",
                    f"rule {rule!r} derives its galleries: remove 'galleries'",
                )
            )
        if len(errors) == n_err:
            out.append(proto)
    return out


def _check_gallery(g, where: str, test_ids: set, errors: list) -> None:
    if not isinstance(g, dict) or not isinstance(g.get("image_ids"), list):
        errors.append(
            Problem(
                "error",
                where,
                f'expected {{"image_ids": [...], "bboxes": [...]}}, got {_describe(g)}',
            )
        )
        return
    ids, boxes = g["image_ids"], g.get("bboxes")
    if not isinstance(boxes, list) or len(boxes) != len(ids):
        errors.append(
            Problem(
                "error",
                f"{where}.bboxes",
                f"expected a list of {len(ids)} boxes or nulls (one per image id), "
                f"got {_describe(boxes)}",
            )
        )
        return
    try:
        unknown = not test_ids.issuperset(ids)  # fast path: millions of entries in TestG4000
    except TypeError:  # an unhashable id (a list, ...)
        unknown = True
    for k, v in enumerate(ids) if unknown else ():
        if not isinstance(v, (int, str)) or v not in test_ids:
            errors.append(
                Problem(
                    "error",
                    f"{where}.image_ids[{k}]",
                    f"image {_describe(v)} is not in splits.test",
                )
            )
    for k, b in enumerate(boxes):
        if b is not None:
            _check_bbox(b, f"{where}.bboxes[{k}]", errors)


def _format_errors(path: Path, problems: list) -> str:
    errs = [p for p in problems if p.severity == "error"]
    lines = [str(p) for p in errs[:MAX_LISTED_ERRORS]]
    more = len(errs) - MAX_LISTED_ERRORS
    if more > 0:
        lines.append(f"... and {more} more")
    return (
        f"{path}: {len(errs)} format error(s) (see the README's dataset format section):\n  "
        + "\n  ".join(lines)
    )


def read_document(path: os.PathLike | str) -> tuple:
    """Loads and checks the annotation JSON at ``path``.

    Returns:
      ``(CustomDocument, problems)`` as :func:`parse_document` (``sha1`` set).

    Raises:
      FileNotFoundError: no such file. FormatError: not valid JSON (names line and column).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"{path}: not valid JSON: {e}") from e
    parsed, problems = parse_document(doc, path)
    parsed.sha1 = hashlib.sha1(data).hexdigest()
    return parsed, problems


# ------------------------------------------------------------------------------------------------
# Derived protocols.


def derive_queries(gallery: Sequence[ImageAnnotation], seed: int) -> tuple:
    """One query per labeled test identity seen in at least two gallery images.

    Returns:
      ``(queries, skipped_pids)``: queries in increasing pid order, image chosen by
      ``default_rng([seed, pid])`` among the identity's images (first box there); and the pids
      seen in fewer than two images (no query: nothing left to find).
    """
    where = collections.defaultdict(list)  # pid -> [(gallery index, first box)]
    for gi, a in enumerate(gallery):
        seen = set()
        for box, pid in zip(np.asarray(a.boxes).reshape(-1, 4), a.pids, strict=True):
            pid = int(pid)
            if pid > 0 and pid not in seen:
                seen.add(pid)
                where[pid].append((gi, box))
    queries, skipped = [], []
    for pid in sorted(where):
        found = where[pid]
        if len(found) < 2:
            skipped.append(pid)
            continue
        k = int(np.random.default_rng([int(seed), pid]).integers(len(found)))
        gi, box = found[k]
        a = gallery[gi]
        queries.append(Query(a.name, np.asarray(box, np.float32).copy(), pid, a.cam_id))
    return queries, skipped


def derive_protocols(
    gallery: Sequence[ImageAnnotation],
    queries: Sequence[Query],
    seed: int = DEFAULT_PROTOCOL_SEED,
    gallery_sizes: Sequence[int] = DEFAULT_GALLERY_SIZES,
) -> tuple:
    """The derived protocols of a test split (see the module docstring).

    Returns:
      ``(protocols, info)``: ``[all, (cross-camera), TestG{N}...]`` and a JSON-able dict saying
      which were built or skipped and why.
    """
    protocols = [SearchProtocol(ALL_PROTOCOL, -1, rule="all_but_query_frame")]
    info: dict = {"seed": int(seed), "protocols": [ALL_PROTOCOL], "skipped": {}}
    cams = {a.cam_id for a in gallery}
    if gallery and min(cams) >= 0 and len(cams) >= 2 and all(q.cam_id >= 0 for q in queries):
        protocols.append(SearchProtocol(CROSS_CAMERA_PROTOCOL, -1, rule="other_cameras"))
        info["protocols"].append(CROSS_CAMERA_PROTOCOL)
    else:
        info["skipped"][CROSS_CAMERA_PROTOCOL] = (
            "needs a camera_id on every test image and query, and two cameras or more"
        )
    index = {a.name: i for i, a in enumerate(gallery)}
    pid_images = collections.defaultdict(dict)  # pid -> {gallery index: first box}
    for gi, a in enumerate(gallery):
        for box, pid in zip(np.asarray(a.boxes).reshape(-1, 4), a.pids, strict=True):
            if int(pid) > 0:
                pid_images[int(pid)].setdefault(gi, np.asarray(box, np.float32))
    others = len(gallery) - 1
    sizes = sorted({int(s) for s in gallery_sizes})
    usable = [s for s in sizes if 1 <= s < others]
    for s in sizes:
        if s not in usable:
            info["skipped"][protocol_name(s)] = (
                f"not smaller than the {others} other test images (that is '{ALL_PROTOCOL}')"
            )
    if usable:
        hits_of, distractors_of = [], []
        for qi, q in enumerate(queries):
            qimg = index.get(q.name, -1)
            boxes = pid_images.get(int(q.pid), {})
            hits = sorted(gi for gi in boxes if gi != qimg)
            rest = [gi for gi in range(len(gallery)) if gi not in boxes and gi != qimg]
            order = np.random.default_rng([int(seed), 1, qi]).permutation(len(rest))
            hits_of.append([(gi, boxes[gi]) for gi in hits])
            distractors_of.append([rest[k] for k in order])
        for s in usable:
            g_idx, g_boxes = [], []
            for hits, distractors in zip(hits_of, distractors_of, strict=True):
                idx = [gi for gi, _ in hits] + distractors[: max(0, s - len(hits))]
                bx = np.full((len(idx), 4), np.nan, np.float32)
                for k, (_, box) in enumerate(hits):
                    bx[k] = box
                g_idx.append(np.asarray(idx, np.int64))
                g_boxes.append(bx)
            protocols.append(SearchProtocol(protocol_name(s), s, g_idx, g_boxes, rule="explicit"))
            info["protocols"].append(protocol_name(s))
    return protocols, info


# ------------------------------------------------------------------------------------------------
# The reader.


def fingerprint(
    json_sha1: str,
    protocol_seed: int = DEFAULT_PROTOCOL_SEED,
    gallery_sizes: Sequence[int] = DEFAULT_GALLERY_SIZES,
    skip_bad_images: bool = False,
) -> str:
    """Identifies what ``read_custom`` returns: the JSON's SHA-1 and the reader's parameters."""
    params = {
        "protocol_seed": int(protocol_seed),
        "gallery_sizes": sorted(int(s) for s in gallery_sizes),
        "skip_bad_images": bool(skip_bad_images),
    }
    return hashlib.sha1((json_sha1 + json.dumps(params, sort_keys=True)).encode()).hexdigest()


def _xyxy32(rec: BoxRecord) -> np.ndarray:
    return rec.xyxy.astype(np.float32)


_LUT = object()  # key of the dense image id -> gallery index table in ``gallery_index``


def _with_lookup_table(gallery_index: dict) -> dict:
    """``gallery_index`` plus, when every key is a small non-negative integer, a dense table."""
    keys = list(gallery_index)
    if keys and all(_is_int(k) and k >= 0 for k in keys) and max(keys) < 10 * len(keys) + 1000:
        lut = np.full(max(keys) + 1, -1, np.int64)
        lut[np.asarray(keys, np.int64)] = np.asarray(list(gallery_index.values()), np.int64)
        return {**gallery_index, _LUT: lut}
    return gallery_index


def _given_protocol(
    proto: dict, gallery_index: dict, kept_q: list, bad_ids: set, stats
) -> SearchProtocol:
    name, rule = proto["name"], proto.get("rule", "explicit")
    size = int(proto.get("gallery_size", -1))
    if rule not in ("explicit", "full_set"):
        return SearchProtocol(name, size, rule=rule)
    idx_out, gt_out = [], []
    for qi in kept_q:  # vectorised: CUHK-SYSU's TestG4000 has 11.6 million entries
        g = proto["galleries"][qi]
        ids, boxes = g["image_ids"], g["bboxes"]
        if bad_ids:
            keep = [k for k, v in enumerate(ids) if v not in bad_ids]
            stats["dropped_protocol_entries"] += len(ids) - len(keep)
            ids, boxes = [ids[k] for k in keep], [boxes[k] for k in keep]
        lut = gallery_index.get(_LUT)
        if lut is not None:  # integer image ids: one gather instead of a dict look-up each
            idx = lut[np.asarray(ids, np.int64)] if ids else np.zeros((0,), np.int64)
        else:
            idx = np.fromiter((gallery_index[v] for v in ids), np.int64, len(ids))
        gt = np.full((len(ids), 4), np.nan, np.float64)
        pos = [k for k, b in enumerate(boxes) if b is not None]
        if pos:
            xywh = np.asarray([boxes[k] for k in pos], np.float64)
            gt[pos] = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        idx_out.append(idx)
        gt_out.append(gt.astype(np.float32))
    return SearchProtocol(name, size, idx_out, gt_out, rule=rule)


def read_custom(
    root: os.PathLike | str,
    *,
    skip_bad_images: bool = False,
    check_images: str = "header",
    protocol_seed: int = DEFAULT_PROTOCOL_SEED,
    gallery_sizes: Sequence[int] = DEFAULT_GALLERY_SIZES,
    annotations: Optional[str] = None,
) -> PersonSearchDataset:
    """Reads a dataset in this module's format.

    Args:
      root: the dataset folder (holding ``annotations.json``), or the JSON file itself.
      skip_bad_images: drop (and count) missing / corrupt images instead of raising.
      check_images: ``"none"`` (trust the JSON), ``"header"`` (default: open every used image and
        compare its size with ``width`` / ``height``) or ``"decode"`` (also decode all pixels).
      protocol_seed: seeds the derived queries and fixed-size galleries (without ``protocols``).
      gallery_sizes: the derived ``TestG{N}`` protocols.
      annotations: the JSON's file name inside ``root`` (default ``annotations.json``).

    Returns:
      A ``PersonSearchDataset`` (``name`` from ``info.name``, default ``"custom"``); ``stats``
      holds the drop / skip counts, ``train_raw_ids``, how the protocols came about and
      ``fingerprint`` (the JSON's SHA-1 and the protocol parameters: the feature cache's key).

    Raises:
      FileNotFoundError: no annotation file. FormatError: the JSON does not follow the format.
      ImageReadError: a bad image while ``skip_bad_images`` is False (names the file).
      ValueError: an image's actual size differs from the JSON's.
    """
    path = locate(root, annotations)
    doc, problems = read_document(path)
    if any(p.severity == "error" for p in problems):
        raise FormatError(_format_errors(path, problems))
    if not doc.image_dir.is_dir():
        raise FileNotFoundError(
            f"{path}: image folder {doc.image_dir} not found (set 'image_root' in the JSON if "
            "the images live elsewhere next to it)"
        )
    stats = {
        "dropped_degenerate_boxes": 0,
        "skipped_train_images_without_valid_box": 0,
        "gallery_images_without_valid_box": 0,
        "skipped_bad_images": 0,
        "bad_images": [],
        "skipped_queries": 0,
        "dropped_protocol_entries": 0,
        "images_not_in_a_split": 0,
    }
    by_id = doc.image_by_id()
    boxes_of = doc.boxes_by_image()
    used = list(doc.splits["train"]) + list(doc.splits["test"])
    used += [q.image_id for q in doc.queries or []]
    used = list(dict.fromkeys(used))
    stats["images_not_in_a_split"] = len(by_id) - len(
        set(doc.splits["train"]) | set(doc.splits["test"])
    )
    names = [by_id[i].file_name for i in used]
    sizes, bad = ru.check_images(doc.image_dir, names, check_images, skip_bad_images)
    if check_images != "none":
        for v in used:
            im = by_id[v]
            if im.file_name in sizes and sizes[im.file_name] != (im.height, im.width):
                h, w = sizes[im.file_name]
                raise ValueError(
                    f"{path}: images[{im.index}] ({im.file_name}) says {im.width}x{im.height} "
                    f"(width x height) but the image file is {w}x{h}"
                )
    stats["skipped_bad_images"] = len(bad)
    stats["bad_images"] = sorted(bad)
    bad_ids = {v for v in used if by_id[v].file_name in bad}

    def annotation(v) -> ImageAnnotation:
        im = by_id[v]
        recs = boxes_of.get(v, [])
        boxes = np.stack([_xyxy32(r) for r in recs]) if recs else np.zeros((0, 4), np.float32)
        pids = np.array([r.person_id for r in recs], np.int32)
        keep = ru.valid_box_mask(boxes)
        stats["dropped_degenerate_boxes"] += int((~keep).sum())
        pids = np.where(pids > 0, pids, UNLABELED_PID).astype(np.int32)
        return ImageAnnotation(
            im.file_name, boxes[keep].reshape(-1, 4), pids[keep], im.camera_id, im.height, im.width
        )

    train = []
    for v in doc.splits["train"]:
        if v in bad_ids:
            continue
        a = annotation(v)
        if len(a.boxes) == 0:
            stats["skipped_train_images_without_valid_box"] += 1
            continue
        train.append(a)
    pid_map = ru.contiguous_pid_map(int(p) for a in train for p in a.pids)
    for a in train:
        a.pids = np.array([pid_map.get(int(p), UNLABELED_PID) for p in a.pids], np.int32)
    stats["train_raw_ids"] = sorted(pid_map)

    gallery, gallery_index = [], {}
    for v in doc.splits["test"]:
        if v in bad_ids:
            continue
        a = annotation(v)
        stats["gallery_images_without_valid_box"] += int(len(a.boxes) == 0)
        gallery_index[v] = len(gallery)
        gallery.append(a)

    if doc.queries is not None:
        queries, kept_q = [], []
        for qi, q in enumerate(doc.queries):
            box = _xyxy32(q)
            if q.image_id in bad_ids or not ru.valid_box_mask(box)[0]:
                stats["skipped_queries"] += 1
                logger.warning(
                    "%s: skipping queries[%d] (%s)", path, q.index, by_id[q.image_id].file_name
                )
                continue
            im = by_id[q.image_id]
            queries.append(Query(im.file_name, box, q.person_id, im.camera_id))
            kept_q.append(qi)
        stats["query_source"] = "given"
    else:
        queries, skipped = derive_queries(gallery, protocol_seed)
        stats["query_source"] = "derived"
        stats["test_ids_without_query"] = skipped
    if doc.protocols is not None:
        index = _with_lookup_table(gallery_index)
        protocols = [_given_protocol(p, index, kept_q, bad_ids, stats) for p in doc.protocols]
        stats["protocol_source"] = "given"
    else:
        protocols, info = derive_protocols(gallery, queries, protocol_seed, gallery_sizes)
        stats["protocol_source"] = "derived"
        stats["derived_protocols"] = info
    stats["fingerprint"] = fingerprint(doc.sha1, protocol_seed, gallery_sizes, skip_bad_images)
    k1, k2 = doc.cbgm or (CBGM_K1, CBGM_K2)
    logger.info(
        "%s (%s): %d train images (%d ids), %d gallery images, %d queries (%s), protocols %s; %s",
        doc.name,
        path,
        len(train),
        len(pid_map),
        len(gallery),
        len(queries),
        stats["query_source"],
        [p.name for p in protocols],
        {k: v for k, v in stats.items() if isinstance(v, int) and v},
    )
    return PersonSearchDataset(
        name=doc.name,
        train=train,
        gallery=gallery,
        queries=queries,
        protocols=protocols,
        num_train_pids=len(pid_map),
        load_image=ru.FolderImageLoader(doc.image_dir),
        stats=stats,
        cbgm_k1=int(k1),
        cbgm_k2=int(k2),
    )


# The name ``seqnet_jax.data.build_dataset`` imports.
load_custom = read_custom


# ------------------------------------------------------------------------------------------------
# Writing: a PersonSearchDataset (or parts) as this format.


def _xywh(box) -> list:
    """float32 ``x1, y1, x2, y2`` → JSON ``[x, y, w, h]`` that reads back to the same float32."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box, np.float32).reshape(4))
    out = [x1, y1, x2 - x1, y2 - y1]
    back = np.array([out[0], out[1], out[0] + out[2], out[1] + out[3]], np.float64)
    if not np.array_equal(back.astype(np.float32), np.asarray(box, np.float32).reshape(4)):
        raise ValueError(f"box {box} does not survive the x, y, w, h round trip")
    return [int(v) if float(v).is_integer() else v for v in out]


def document_from_dataset(
    ds: PersonSearchDataset,
    *,
    raw_train_ids: Optional[Sequence[int]] = None,
    test_id_offset: int = 0,
    with_queries: bool = True,
    with_protocols: bool = True,
) -> dict:
    """The annotation JSON (a dict) that :func:`read_custom` turns back into ``ds``.

    Image ids are ``1..``: training images first, then the gallery, then images only queries
    use. Training pids ``k`` are written as ``raw_train_ids[k - 1]`` (default
    ``ds.stats["train_raw_ids"]``, else ``k``); test pids (gallery and queries) as ``pid +
    test_id_offset`` (e.g. CUHK-SYSU's test ids ``1..`` would otherwise collide with its training
    ids, although they are other people). Reading the result gives the same splits, boxes,
    contiguous training ids, queries, protocols and CBGM parameters (test ids shifted by the
    offset, which no metric depends on).
    """
    raw = raw_train_ids
    if raw is None:
        raw = ds.stats.get("train_raw_ids") or list(range(1, ds.num_train_pids + 1))
    raw = [int(r) for r in raw]
    if len(raw) < ds.num_train_pids or sorted(raw) != raw:
        raise ValueError("raw_train_ids must list every training id in increasing order")
    images, annotations = [], []
    ids: dict = {}  # (split, name) -> image id
    by_name: dict = {}

    def add_image(a, split) -> int:
        if a.name in by_name:
            raise ValueError(f"image {a.name} is in two splits")
        v = len(images) + 1
        if a.height <= 0 or a.width <= 0:
            raise ValueError(f"image {a.name}: unknown size (read the dataset with check_images)")
        rec = {"id": v, "file_name": a.name, "width": int(a.width), "height": int(a.height)}
        if a.cam_id >= 0:
            rec["camera_id"] = int(a.cam_id)
        images.append(rec)
        ids[split, a.name] = v
        by_name[a.name] = v
        return v

    for split, anns in (("train", ds.train), ("test", ds.gallery)):
        for a in anns:
            v = add_image(a, split)
            for box, pid in zip(np.asarray(a.boxes).reshape(-1, 4), a.pids, strict=True):
                pid = int(pid)
                if pid > 0:
                    pid = raw[pid - 1] if split == "train" else pid + test_id_offset
                else:
                    pid = -1
                annotations.append({"image_id": v, "bbox": _xywh(box), "person_id": pid})
    doc: dict = {
        "info": {"name": ds.name},
        "images": images,
        "annotations": annotations,
        "splits": {
            "train": [ids["train", a.name] for a in ds.train],
            "test": [ids["test", a.name] for a in ds.gallery],
        },
    }
    if with_queries:
        queries = []
        for q in ds.queries:
            v = by_name.get(q.name)
            if v is None:  # an image only the queries use: its size is read from the file
                img = ds.load_image("query", q.name)
                v = len(images) + 1
                rec = {"id": v, "file_name": q.name, "width": img.shape[1], "height": img.shape[0]}
                if q.cam_id >= 0:
                    rec["camera_id"] = int(q.cam_id)
                images.append(rec)
                by_name[q.name] = v
            queries.append(
                {"image_id": v, "bbox": _xywh(q.box), "person_id": int(q.pid) + test_id_offset}
            )
        doc["queries"] = queries
        if with_protocols:
            gallery_ids = [ids["test", a.name] for a in ds.gallery]
            protocols = []
            for p in ds.protocols:
                rec = {"name": p.name, "gallery_size": int(p.gallery_size), "rule": p.rule}
                if p.gallery_indices is not None:
                    rec["galleries"] = [
                        _gallery_record(gallery_ids, idx, gt)
                        for idx, gt in zip(p.gallery_indices, p.gt_boxes, strict=True)
                    ]
                protocols.append(rec)
            doc["protocols"] = protocols
    doc["cbgm"] = {"k1": int(ds.cbgm_k1), "k2": int(ds.cbgm_k2)}
    return doc


def _gallery_record(gallery_ids: list, idx, gt) -> dict:
    """One explicit gallery as JSON: image ids and the query person's box (``None`` = absent)."""
    gt = np.asarray(gt, np.float32).reshape(-1, 4)
    boxes: list = [None] * len(gt)
    for k in np.flatnonzero(~np.isnan(gt).any(axis=1)).tolist():
        boxes[k] = _xywh(gt[k])
    return {"image_ids": [gallery_ids[i] for i in np.asarray(idx).tolist()], "bboxes": boxes}


def write_document(doc: dict, path: os.PathLike | str) -> Path:
    """Writes an annotation JSON with one image / annotation / query / gallery per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("{\n")
        keys = list(doc)
        for n, key in enumerate(keys):
            value = doc[key]
            f.write(f"  {json.dumps(key)}: ")
            if key in ("images", "annotations", "queries") and value:
                f.write("[\n")
                f.write(",\n".join("    " + json.dumps(v) for v in value))
                f.write("\n  ]")
            elif key == "protocols" and value:
                f.write("[\n")
                parts = []
                for p in value:
                    head = {k: v for k, v in p.items() if k != "galleries"}
                    if "galleries" not in p:
                        parts.append("    " + json.dumps(head))
                        continue
                    text = json.dumps(head)[:-1] + ', "galleries": [\n'
                    text += ",\n".join("      " + json.dumps(g) for g in p["galleries"])
                    parts.append("    " + text + "\n    ]}")
                f.write(",\n".join(parts))
                f.write("\n  ]")
            else:
                f.write(json.dumps(value))
            f.write(",\n" if n + 1 < len(keys) else "\n")
        f.write("}\n")
    os.replace(tmp, path)
    return path
