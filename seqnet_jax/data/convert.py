"""Importers into our dataset format (``seqnet_jax.data.custom``).

    python -m seqnet_jax.data.convert FORMAT SRC DST [options]

FORMAT:

``cuhk_sysu`` / ``prw``
  the unpacked official folders, read with the project's readers (``cuhk_sysu.py``, ``prw.py``) and
  written with their queries, every protocol (CUHK-SYSU ``TestG50..4000`` and the full set, PRW
  and PRW multi-view) and their CBGM parameters, so training and evaluation on DST give the same
  numbers as on SRC. CUHK-SYSU's test ids are shifted by a power of ten above the training ids
  (they are other people; no metric depends on the shift).
``mot``
  MOTChallenge ground truth (MOT15/16/17/20): SRC is one sequence folder (``seqinfo.ini``,
  ``gt/gt.txt``, ``img1/``) or a folder searched recursively for them. Rows of ``gt.txt``
  (``frame, id, x, y, w, h, flag, class, visibility``) are kept when ``flag != 0``, the class is
  in ``--classes`` (default 1, pedestrian) and the visibility is ``>= --min_visibility`` (default
  0.25); MOT15's 10-column rows have no class or visibility and are all kept. Boxes are clipped to
  the image (as written: MOTChallenge's 1-based pixel coordinates, like the common converters).
  Every ``--every``-th frame is used (default 10, from frame 1). One camera per sequence (its
  index in name order), ``time = (frame - 1) / frameRate``, person id = one per (sequence, track
  id). Sequences whose ``gt.txt`` and size equal an earlier one (MOT17's DPM/FRCNN/SDP copies)
  are skipped.
``coco``
  a COCO JSON from a labelling tool (CVAT, Label Studio, ...) with a track or identity field per
  annotation: ``--id_field`` (default: the first of ``person_id``, ``track_id``,
  ``attributes.track_id``, ``attributes.person_id``, ``attributes.identity``, ``attributes.id``,
  ``instance_id`` present). Only categories named in ``--categories`` (default ``person``,
  ``pedestrian``; all annotations when the file has no categories) and no ``iscrowd`` regions.
  Identity values (numbers or strings) are renumbered ``1..`` (the map is kept in ``info``);
  missing / null / negative values are unlabeled people. Images from ``--images`` (default: an
  ``images/`` folder next to the JSON or one level up, else the JSON's folder). Camera id from an
  image's ``camera_id`` or ``video_id``, time from ``time``.
``synthetic``
  SRC is ``-``: the built-in synthetic dataset (``--param key=value`` for
  ``make_synthetic_dataset``, default a small one), rendered to PNG: a complete example without
  downloading anything.

Splits (``mot`` / ``coco``): ``--split time`` (default) puts the last ``--test_fraction`` (0.5)
of each sequence's frames (images in id order for ``coco``) into the test split (a person seen on
both sides is in both splits: the validator warns); ``--split identity`` draws that fraction of
the identities as test identities (seeded by ``--seed``), a frame showing one of them is a test
frame, and the training identities seen in test frames become unlabeled there (disjoint
identities, as CUHK-SYSU / PRW); ``mot --test_sequences A,B`` makes whole sequences test.

Images are copied (``--images_mode copy``), hard-linked or symlinked into ``DST/images``. Nothing
is written into SRC; a non-empty DST is refused unless ``--overwrite`` (which replaces
``DST/annotations.json`` and ``DST/images``). ``annotations.json`` is written last, then DST is
validated (``python -m seqnet_jax.data.validate``); the exit status is 1 when it has errors.
"""

from __future__ import annotations

import argparse
import ast
import collections
import configparser
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from seqnet_jax import progress
from seqnet_jax.data import custom
from seqnet_jax.data.types import PersonSearchDataset

logger = logging.getLogger(__name__)

FORMATS = ("cuhk_sysu", "prw", "mot", "coco", "synthetic")
IMAGE_MODES = ("copy", "hardlink", "symlink")
SPLIT_MODES = ("time", "identity")
MOT_DEFAULT_CLASSES = (1,)
COCO_ID_FIELDS = (
    "person_id",
    "track_id",
    "attributes.track_id",
    "attributes.person_id",
    "attributes.identity",
    "attributes.id",
    "instance_id",
)
COCO_DEFAULT_CATEGORIES = ("person", "pedestrian")
# A small synthetic dataset (seconds to write): make_synthetic_dataset's arguments.
# 80 test images: the derived TestG50 protocol has a gallery of 50 of them.
SYNTHETIC_DEFAULTS = {
    "num_train_ids": 30,
    "num_test_ids": 15,
    "num_train_images": 100,
    "num_gallery_images": 80,
    "image_size": (192, 320),
    "gallery_size": 50,
    "extra_gallery_sizes": (),
}

__all__ = [
    "FORMATS",
    "ConversionError",
    "convert_coco",
    "convert_cuhk_sysu",
    "convert_dataset",
    "convert_mot",
    "convert_prw",
    "convert_synthetic",
    "main",
]


class ConversionError(ValueError):
    """The source cannot be converted; the message names the file / field."""


# ------------------------------------------------------------------------------------------------
# Destination and images.


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or inside it (resolved paths)."""
    a, b = a.resolve(), b.resolve()
    return a == b or b in a.parents


def _prepare_destination(dst, sources: Sequence, overwrite: bool) -> Path:
    dst = Path(dst).expanduser()
    for src in sources:
        src = Path(src).expanduser()
        if _inside(dst, src) or _inside(src, dst):
            raise ConversionError(
                f"destination {dst} and source {src} overlap: nothing may be written into the "
                "source, choose a separate destination folder"
            )
    if dst.exists() and not dst.is_dir():
        raise ConversionError(f"destination {dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"destination {dst} is not empty; pass --overwrite to replace its "
                f"{custom.ANNOTATIONS_FILE} and {custom.IMAGES_DIR}/"
            )
        (dst / custom.ANNOTATIONS_FILE).unlink(missing_ok=True)
        if (dst / custom.IMAGES_DIR).exists():
            shutil.rmtree(dst / custom.IMAGES_DIR)
    (dst / custom.IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    return dst


class _ImageWriter:
    """Puts source images into ``DST/images`` (copy, hard link or symlink)."""

    def __init__(self, dst: Path, mode: str):
        if mode not in IMAGE_MODES:
            raise ConversionError(f"images mode must be one of {IMAGE_MODES}, got {mode!r}")
        self.folder = dst / custom.IMAGES_DIR
        self.mode = mode
        self.count = 0

    def put(self, src: Path, name: str) -> None:
        if not src.is_file():
            raise ConversionError(f"image file not found: {src}")
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.mode == "copy":
            shutil.copyfile(src, target)
        elif self.mode == "hardlink":
            os.link(src, target)
        else:
            os.symlink(src.resolve(), target)
        self.count += 1

    def put_array(self, image: np.ndarray, name: str) -> None:
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, np.uint8)).save(target)
        self.count += 1


def _finish(doc: dict, dst: Path, check: str = "header"):
    """Writes ``annotations.json`` and validates DST; returns the validation report."""
    from seqnet_jax.data import validate

    custom.write_document(doc, dst / custom.ANNOTATIONS_FILE)
    report = validate.validate(dst, check_images=check)
    logger.info(
        "wrote %s: %d images, %d boxes; validation: %d errors, %d warnings",
        dst,
        len(doc["images"]),
        len(doc["annotations"]),
        len(report.errors),
        len(report.warnings),
    )
    return report


# ------------------------------------------------------------------------------------------------
# Datasets read by a project reader (CUHK-SYSU, PRW, synthetic).


def convert_dataset(
    ds: PersonSearchDataset,
    dst: os.PathLike | str,
    *,
    image_dir: Optional[Path] = None,
    images_mode: str = "copy",
    test_id_offset: int = 0,
    with_queries: bool = True,
    with_protocols: bool = True,
    overwrite: bool = False,
    sources: Sequence = (),
):
    """Writes a ``PersonSearchDataset`` in our format (see ``custom.document_from_dataset``).

    Images are taken from ``image_dir / name`` when given, else rendered with ``ds.load_image``
    and saved under their name (PNG for ``.png`` names). Returns the validation report of DST.
    """
    dst = _prepare_destination(dst, list(sources) + ([image_dir] if image_dir else []), overwrite)
    doc = custom.document_from_dataset(
        ds,
        test_id_offset=test_id_offset,
        with_queries=with_queries,
        with_protocols=with_protocols,
    )
    writer = _ImageWriter(dst, images_mode)
    splits = {im["id"]: "train" for im in doc["images"][: len(ds.train)]}
    for im in progress.progress(doc["images"], desc="writing images", unit="img"):
        name = im["file_name"]
        if image_dir is not None:
            writer.put(Path(image_dir) / name, name)
        else:
            writer.put_array(ds.load_image(splits.get(im["id"], "gallery"), name), name)
    return _finish(doc, dst)


def _id_offset(max_train_id: int) -> int:
    """The smallest power of ten above ``max_train_id`` (10 for 0..9)."""
    return 10 ** max(1, len(str(max(0, int(max_train_id)))))


def convert_cuhk_sysu(src, dst, *, images_mode="copy", overwrite=False, skip_bad_images=False):
    """Official CUHK-SYSU folder → our format, with every TestG protocol; see the module doc."""
    from seqnet_jax.data.cuhk_sysu import read_cuhk_sysu

    ds = read_cuhk_sysu(src, skip_bad_images=skip_bad_images, check_images="header")
    raw = ds.stats.get("train_raw_ids") or [0]
    return convert_dataset(
        ds,
        dst,
        image_dir=ds.load_image.folder,
        images_mode=images_mode,
        test_id_offset=_id_offset(max(raw)),
        overwrite=overwrite,
        sources=[src],
    )


def convert_prw(src, dst, *, images_mode="copy", overwrite=False, skip_bad_images=False):
    """Official PRW folder → our format (PRW and PRW-multiview protocols); see the module doc."""
    from seqnet_jax.data.prw import read_prw

    ds = read_prw(src, skip_bad_images=skip_bad_images, check_images="header")
    return convert_dataset(
        ds,
        dst,
        image_dir=ds.load_image.folder,
        images_mode=images_mode,
        overwrite=overwrite,
        sources=[src],
    )


def convert_synthetic(
    dst,
    *,
    params: Optional[dict] = None,
    seed: int = 0,
    with_queries: bool = False,
    with_protocols: bool = False,
    overwrite: bool = False,
):
    """The built-in synthetic dataset rendered into our format (default: a small one, queries
    and protocols derived by the reader; ``with_queries`` / ``with_protocols`` write the
    synthetic dataset's own)."""
    from seqnet_jax.data.synthetic import make_synthetic_dataset

    kwargs = dict(SYNTHETIC_DEFAULTS)
    kwargs.update(params or {})
    kwargs["cache_size"] = 0
    ds = make_synthetic_dataset(seed=seed, **kwargs)
    ds.name = f"synthetic-seed{seed}"
    return convert_dataset(
        ds,
        dst,
        with_queries=with_queries or with_protocols,
        with_protocols=with_protocols,
        overwrite=overwrite,
    )


# ------------------------------------------------------------------------------------------------
# Shared by MOT and COCO: frames with boxes → document.


class _Frame:
    """One source image: where it comes from and its people (``pid`` > 0 or -1)."""

    def __init__(self, src: Path, name: str, width: int, height: int, group: str, order):
        self.src, self.name, self.width, self.height = src, name, int(width), int(height)
        self.group, self.order = group, order
        self.camera_id: Optional[int] = None
        self.time: Optional[float] = None
        self.boxes: list = []  # [(x, y, w, h) clipped, pid]

    def add(self, xywh, pid: int, stats: dict) -> bool:
        """Adds a box clipped to the image; ``False`` (and counted) when nothing is left."""
        x, y, w, h = (float(v) for v in xywh)
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(self.width)), min(y + h, float(self.height))
        if not (math.isfinite(x1 + y1 + x2 + y2) and x2 > x1 and y2 > y1):
            stats["dropped_boxes_outside_or_empty"] += 1
            return False
        if (x1, y1, x2, y2) != (x, y, x + w, y + h):
            stats["clipped_boxes"] += 1
        self.boxes.append(((x1, y1, x2 - x1, y2 - y1), int(pid)))
        return True


def _split_frames(
    frames: list, mode: str, test_fraction: float, seed: int, test_groups=None
) -> tuple:
    """``(train frames, test frames, unlabeled_in_test)``; see the module doc."""
    if not 0.0 < test_fraction < 1.0 and not test_groups:
        raise ConversionError(f"--test_fraction must be in (0, 1), got {test_fraction}")
    if test_groups:
        groups = {f.group for f in frames}
        unknown = sorted(set(test_groups) - groups)
        if unknown:
            raise ConversionError(
                f"--test_sequences {unknown} not found; the sequences are {sorted(groups)}"
            )
        test = [f for f in frames if f.group in set(test_groups)]
        return [f for f in frames if f.group not in set(test_groups)], test, 0
    if mode == "time":
        train, test = [], []
        by_group = collections.defaultdict(list)
        for f in frames:
            by_group[f.group].append(f)
        for g in sorted(by_group):
            fs = sorted(by_group[g], key=lambda f: f.order)
            n_test = int(math.ceil(test_fraction * len(fs)))
            n_test = min(n_test, len(fs) - 1) if len(fs) > 1 else n_test
            train += fs[: len(fs) - n_test]
            test += fs[len(fs) - n_test :]
        return train, test, 0
    if mode != "identity":
        raise ConversionError(f"--split must be one of {SPLIT_MODES}, got {mode!r}")
    pids = sorted({p for f in frames for _, p in f.boxes if p > 0})
    if len(pids) < 2:
        raise ConversionError("--split identity needs at least two identities")
    n_test = min(len(pids) - 1, max(1, int(round(test_fraction * len(pids)))))
    rng = np.random.default_rng([int(seed), 0x5E1])
    test_ids = {pids[i] for i in rng.choice(len(pids), n_test, replace=False)}
    train, test, unlabeled = [], [], 0
    for f in frames:
        if any(p in test_ids for _, p in f.boxes):
            for k, (b, p) in enumerate(f.boxes):
                if p > 0 and p not in test_ids:
                    f.boxes[k] = (b, -1)
                    unlabeled += 1
            test.append(f)
        else:
            train.append(f)
    return train, test, unlabeled


def _frames_document(name: str, train: list, test: list, info: dict) -> dict:
    images, annotations = [], []
    ids = {"train": [], "test": []}
    for split, frames in (("train", train), ("test", test)):
        for f in frames:
            v = len(images) + 1
            rec = {"id": v, "file_name": f.name, "width": f.width, "height": f.height}
            if f.camera_id is not None:
                rec["camera_id"] = int(f.camera_id)
            if f.time is not None:
                rec["time"] = round(float(f.time), 6)
            images.append(rec)
            ids[split].append(v)
            for xywh, pid in f.boxes:
                bbox = [int(c) if float(c).is_integer() else round(c, 3) for c in xywh]
                annotations.append({"image_id": v, "bbox": bbox, "person_id": int(pid)})
    return {
        "info": dict({"name": name}, **info),
        "images": images,
        "annotations": annotations,
        "splits": ids,
    }


def _write_frames(doc: dict, frames: list, dst: Path, images_mode: str):
    writer = _ImageWriter(dst, images_mode)
    for f in progress.progress(frames, desc="writing images", unit="img"):
        writer.put(f.src, f.name)
    return _finish(doc, dst)


# ------------------------------------------------------------------------------------------------
# MOTChallenge.


def _read_seqinfo(path: Path) -> dict:
    parser = configparser.ConfigParser()
    try:
        parser.read_string(path.read_text(encoding="utf-8-sig"))
    except configparser.Error as e:
        raise ConversionError(f"{path}: cannot parse: {e}") from e
    if "Sequence" not in parser:
        raise ConversionError(f"{path}: no [Sequence] section")
    sec = parser["Sequence"]
    out = {}
    for key, cast in (
        ("name", str),
        ("imDir", str),
        ("frameRate", float),
        ("seqLength", int),
        ("imWidth", int),
        ("imHeight", int),
        ("imExt", str),
    ):
        if key not in sec:
            raise ConversionError(f"{path}: [Sequence] has no {key!r}")
        try:
            out[key] = cast(sec[key].strip())
        except ValueError as e:
            raise ConversionError(f"{path}: [Sequence] {key} = {sec[key]!r}: {e}") from e
    if (
        out["frameRate"] <= 0
        or out["seqLength"] <= 0
        or out["imWidth"] <= 0
        or out["imHeight"] <= 0
    ):
        raise ConversionError(f"{path}: frameRate, seqLength, imWidth and imHeight must be > 0")
    return out


def _read_mot_gt(path: Path) -> np.ndarray:
    """``gt.txt`` → float64 ``(N, 9)`` rows ``frame, id, x, y, w, h, flag, class, visibility``
    (MOT15's 10-column rows: flag 1, class 1, visibility 1)."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = [p for p in line.replace(";", ",").split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError as e:
            raise ConversionError(f"{path}:{lineno}: expected comma-separated numbers: {e}") from e
        if len(vals) == 9:
            rows.append(vals)
        elif len(vals) == 10 or 6 <= len(vals) <= 7:  # MOT15 (x, y, z world coords) / minimal
            rows.append(vals[:6] + [1.0, 1.0, 1.0])
        else:
            raise ConversionError(
                f"{path}:{lineno}: expected 9 values 'frame, id, x, y, w, h, flag, class, "
                f"visibility' (or MOT15's 10), got {len(vals)}"
            )
    return np.asarray(rows, np.float64).reshape(-1, 9)


def _find_sequences(src: Path) -> list:
    if (src / "seqinfo.ini").is_file():
        return [src]
    found = sorted(p.parent for p in src.rglob("seqinfo.ini"))
    if not found:
        raise ConversionError(
            f"{src}: no MOTChallenge sequence found (a folder with seqinfo.ini, gt/gt.txt, img1/)"
        )
    return found


def convert_mot(
    src,
    dst,
    *,
    every: int = 10,
    min_visibility: float = 0.25,
    classes: Sequence[int] = MOT_DEFAULT_CLASSES,
    split: str = "time",
    test_fraction: float = 0.5,
    test_sequences: Optional[Sequence[str]] = None,
    seed: int = 0,
    images_mode: str = "copy",
    overwrite: bool = False,
    name: str = "",
):
    """MOTChallenge sequences → our format; see the module doc. Returns the validation report."""
    src = Path(src).expanduser()
    if every < 1:
        raise ConversionError(f"--every must be >= 1, got {every}")
    seq_dirs = _find_sequences(src)
    stats = collections.Counter(
        {"dropped_boxes_outside_or_empty": 0, "clipped_boxes": 0, "rows_filtered": 0}
    )
    frames, tracks, kept_gt, seq_names = [], [], {}, []
    for seq_dir in seq_dirs:
        info = _read_seqinfo(seq_dir / "seqinfo.ini")
        gt_path = seq_dir / "gt" / "gt.txt"
        if not gt_path.is_file():
            raise ConversionError(f"{gt_path}: not found (ground truth is needed for identities)")
        gt_bytes = gt_path.read_bytes()
        key = (gt_bytes, info["imWidth"], info["imHeight"], info["seqLength"])
        if key in kept_gt:
            logger.info("skipping %s: same ground truth as %s", seq_dir, kept_gt[key])
            stats["duplicate_sequences_skipped"] += 1
            continue
        kept_gt[key] = seq_dir
        seq_names.append((info["name"], seq_dir, info, _read_mot_gt(gt_path)))
    seq_names.sort(key=lambda t: t[0])
    if len({t[0] for t in seq_names}) != len(seq_names):
        raise ConversionError("two sequences have the same [Sequence] name in seqinfo.ini")
    next_pid = 1
    for cam, (seq, seq_dir, info, gt) in enumerate(seq_names):
        img_dir = seq_dir / info["imDir"]
        by_frame: dict = {}
        for t in range(1, info["seqLength"] + 1, every):
            f = _Frame(
                img_dir / f"{t:06d}{info['imExt']}",
                f"{seq}/{t:06d}{info['imExt']}",
                info["imWidth"],
                info["imHeight"],
                seq,
                t,
            )
            f.camera_id = cam
            f.time = (t - 1) / info["frameRate"]
            by_frame[t] = f
        keep = (
            (gt[:, 6] != 0)
            & np.isin(gt[:, 7].astype(np.int64), np.asarray(list(classes), np.int64))
            & (gt[:, 8] >= min_visibility)
        )
        stats["rows_filtered"] += int((~keep).sum())
        pid_of: dict = {}  # tracks with a box in a used frame, numbered below in track order
        for row in gt[keep]:
            t, track = int(row[0]), int(row[1])
            if t in by_frame and by_frame[t].add(row[2:6], track, stats):
                pid_of[track] = None
        for track in sorted(pid_of):
            pid_of[track] = next_pid
            tracks.append([seq, track, next_pid])
            next_pid += 1
        for f in by_frame.values():
            f.boxes = [(b, pid_of[p]) for b, p in f.boxes]
            frames.append(f)
    train, test, unlabeled = _split_frames(frames, split, test_fraction, seed, test_sequences)
    stats["unlabeled_in_test"] = unlabeled
    info = {
        "source": f"MOTChallenge {src}",
        "every": every,
        "min_visibility": min_visibility,
        "classes": list(classes),
        "split": "sequences" if test_sequences else split,
        "cameras": [t[0] for t in seq_names],
        "person_id_of_track": tracks,
        "conversion": dict(stats),
    }
    doc = _frames_document(name or f"MOT {src.name}", train, test, info)
    dst = _prepare_destination(dst, [src], overwrite)
    return _write_frames(doc, train + test, dst, images_mode)


# ------------------------------------------------------------------------------------------------
# COCO (labelling tools).


def _field(obj: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _coco_image_dir(json_path: Path, given) -> Path:
    if given:
        p = Path(given).expanduser()
        if not p.is_dir():
            raise ConversionError(f"--images folder not found: {p}")
        return p
    for cand in (json_path.parent / "images", json_path.parent.parent / "images"):
        if cand.is_dir():
            return cand
    return json_path.parent


def convert_coco(
    src,
    dst,
    *,
    images: Optional[str] = None,
    id_field: Optional[str] = None,
    categories: Sequence[str] = COCO_DEFAULT_CATEGORIES,
    split: str = "time",
    test_fraction: float = 0.5,
    seed: int = 0,
    images_mode: str = "copy",
    overwrite: bool = False,
    name: str = "",
):
    """A labelling tool's COCO JSON with identities → our format; see the module doc."""
    src = Path(src).expanduser()
    if not src.is_file():
        raise ConversionError(f"COCO file not found: {src}")
    try:
        doc = json.loads(src.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConversionError(f"{src}: not valid JSON: {e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise ConversionError(f"{src}: expected a COCO object with an 'images' list")
    anns = doc.get("annotations", [])
    if not isinstance(anns, list):
        raise ConversionError(f"{src}: 'annotations' must be a list")
    image_dir = _coco_image_dir(src, images)
    stats = collections.Counter(
        {"dropped_boxes_outside_or_empty": 0, "clipped_boxes": 0, "skipped_crowd": 0}
    )
    # -- categories
    wanted = None
    cats = doc.get("categories")
    if (
        isinstance(cats, list)
        and cats
        and any("category_id" in a for a in anns if isinstance(a, dict))
    ):
        names = {str(c).lower() for c in categories}
        wanted = {c.get("id") for c in cats if str(c.get("name", "")).lower() in names}
        if not wanted:
            raise ConversionError(
                f"{src}: no category named {sorted(names)}; the categories are "
                f"{sorted(str(c.get('name')) for c in cats)} (use --categories)"
            )
    # -- identity field
    if id_field is None:
        id_field = next(
            (
                f
                for f in COCO_ID_FIELDS
                if any(_field(a, f) is not None for a in anns if isinstance(a, dict))
            ),
            None,
        )
        if id_field is None:
            raise ConversionError(
                f"{src}: no identity field found in the annotations (looked for "
                f"{', '.join(COCO_ID_FIELDS)}); pass --id_field"
            )
    # -- images
    frames: dict = {}
    video_cams: dict = {}
    for i, im in enumerate(doc["images"]):
        where = f"{src}: images[{i}]"
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise ConversionError(f"{where}: expected an object with 'id' and 'file_name'")
        path = image_dir / im["file_name"]
        if not path.is_file():
            raise ConversionError(f"{where}: image file not found: {path} (use --images)")
        w, h = im.get("width"), im.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            with Image.open(path) as img:
                w, h = img.size
        group = str(im.get("video_id", ""))
        order = (im.get("frame_id", im.get("frame_index", 0)), im["id"])
        f = _Frame(path, im["file_name"], w, h, group, _sortable(order))
        cam = im.get("camera_id")
        if isinstance(cam, int) and cam >= 0:
            f.camera_id = cam
        elif "video_id" in im:
            f.camera_id = video_cams.setdefault(im["video_id"], len(video_cams))
        t = im.get("time")
        if isinstance(t, (int, float)) and math.isfinite(t):
            f.time = float(t)
        if im["id"] in frames:
            raise ConversionError(f"{where}: duplicate image id {im['id']!r}")
        frames[im["id"]] = f
    # -- the person boxes, then their identities renumbered 1.. in raw-value order
    kept = []
    for j, a in enumerate(anns):
        where = f"{src}: annotations[{j}]"
        if not isinstance(a, dict):
            raise ConversionError(f"{where}: expected an object")
        if wanted is not None and a.get("category_id") not in wanted:
            stats["skipped_other_categories"] += 1
            continue
        if a.get("iscrowd"):
            stats["skipped_crowd"] += 1
            continue
        if a.get("image_id") not in frames:
            raise ConversionError(f"{where}.image_id: no image has id {a.get('image_id')!r}")
        box = a.get("bbox")
        if not (
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(c, (int, float)) for c in box)
        ):
            raise ConversionError(f"{where}.bbox: expected [x, y, w, h], got {box!r}")
        kept.append((a, box))
    identity_of: dict = {}
    for v in sorted({_field(a, id_field) for a, _ in kept} - {None}, key=_sortable):
        if _labeled(v):
            identity_of[v] = len(identity_of) + 1
    for a, box in kept:
        v = _field(a, id_field)
        frames[a["image_id"]].add(box, identity_of[v] if _labeled(v) else -1, stats)
    frame_list = list(frames.values())
    train, test, unlabeled = _split_frames(frame_list, split, test_fraction, seed)
    stats["unlabeled_in_test"] = unlabeled
    info = {
        "source": f"COCO {src}",
        "id_field": id_field,
        "split": split,
        "person_id_of_identity": [[k, v] for k, v in identity_of.items()],
        "conversion": dict(stats),
    }
    out = _frames_document(name or f"COCO {src.stem}", train, test, info)
    dst = _prepare_destination(dst, [src.parent, image_dir], overwrite)
    return _write_frames(out, train + test, dst, images_mode)


def _labeled(v) -> bool:
    if v is None or isinstance(v, bool):
        return False
    if isinstance(v, (int, float)):
        return math.isfinite(v) and v >= 0
    return isinstance(v, str) and v.strip() not in ("", "-1")


def _sortable(v):
    """A key that orders numbers numerically and strings lexically (numbers first)."""
    if isinstance(v, tuple):
        return tuple(_sortable(x) for x in v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


# ------------------------------------------------------------------------------------------------
# Command line.


def _parse_param(text: str) -> tuple:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        value = ast.literal_eval(v)
    except (ValueError, SyntaxError):
        value = v
    return k.strip(), value


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqnet_jax.data.convert",
        description="Convert a dataset into the seqnet-jax format (README: 'Your own dataset').",
        epilog=__doc__.split("FORMAT:", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("src", help="source folder / file ('-' for synthetic)")
    parser.add_argument("dst", help="destination folder (empty or new)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST's dataset files")
    parser.add_argument("--images_mode", choices=IMAGE_MODES, default="copy")
    parser.add_argument("--name", default="", help="dataset name (info.name)")
    parser.add_argument("--skip_bad_images", action="store_true", help="cuhk_sysu / prw")
    parser.add_argument("--every", type=int, default=10, help="mot: use every N-th frame")
    parser.add_argument("--min_visibility", type=float, default=0.25, help="mot")
    parser.add_argument(
        "--classes", default=",".join(map(str, MOT_DEFAULT_CLASSES)), help="mot: class ids"
    )
    parser.add_argument("--test_sequences", default="", help="mot: comma-separated test sequences")
    parser.add_argument("--split", choices=SPLIT_MODES, default="time", help="mot / coco")
    parser.add_argument("--test_fraction", type=float, default=0.5, help="mot / coco")
    parser.add_argument("--seed", type=int, default=0, help="identity split / synthetic")
    parser.add_argument("--images", default=None, help="coco: image folder")
    parser.add_argument("--id_field", default=None, help="coco: identity field (dotted path)")
    parser.add_argument(
        "--categories", default=",".join(COCO_DEFAULT_CATEGORIES), help="coco: category names"
    )
    parser.add_argument(
        "--param",
        action="append",
        type=_parse_param,
        default=[],
        help="synthetic: make_synthetic_dataset argument key=value (repeatable)",
    )
    parser.add_argument("--with_queries", action="store_true", help="synthetic: write its queries")
    parser.add_argument(
        "--with_protocols", action="store_true", help="synthetic: write its TestG protocols"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    common = {"overwrite": args.overwrite}
    try:
        if args.format == "synthetic":
            if args.src != "-":
                parser.error("synthetic takes '-' as SRC")
            report = convert_synthetic(
                args.dst,
                params=dict(args.param),
                seed=args.seed,
                with_queries=args.with_queries,
                with_protocols=args.with_protocols,
                **common,
            )
        elif args.format in ("cuhk_sysu", "prw"):
            fn = convert_cuhk_sysu if args.format == "cuhk_sysu" else convert_prw
            report = fn(
                args.src,
                args.dst,
                images_mode=args.images_mode,
                skip_bad_images=args.skip_bad_images,
                **common,
            )
        elif args.format == "mot":
            report = convert_mot(
                args.src,
                args.dst,
                every=args.every,
                min_visibility=args.min_visibility,
                classes=[int(c) for c in args.classes.split(",") if c.strip()],
                split=args.split,
                test_fraction=args.test_fraction,
                test_sequences=[s for s in args.test_sequences.split(",") if s.strip()] or None,
                seed=args.seed,
                images_mode=args.images_mode,
                name=args.name,
                **common,
            )
        else:
            report = convert_coco(
                args.src,
                args.dst,
                images=args.images,
                id_field=args.id_field,
                categories=[c for c in args.categories.split(",") if c.strip()],
                split=args.split,
                test_fraction=args.test_fraction,
                seed=args.seed,
                images_mode=args.images_mode,
                name=args.name,
                **common,
            )
    except (ConversionError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format(max_listed=10))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
