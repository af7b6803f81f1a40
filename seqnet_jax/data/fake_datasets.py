"""Tiny fake CUHK-SYSU and PRW folders in the exact official on-disk formats (for tests).

``write_fake_cuhk_sysu(root)`` / ``write_fake_prw(root)`` write small JPEGs and the MATLAB / text
annotation files the readers read (``seqnet_reference.md`` §5.1–§5.3): ``scipy.io.savemat``
struct arrays as numpy structured arrays of object fields with shape ``(1, k)``, cells as object
arrays of shape ``(n, 1)``, chars as ``np.array(["name"])``, boxes as ``(1, 4)`` float arrays,
empty gallery ``idlocate`` as ``np.zeros((1, 0))``, PRW ``box_new`` ``(N, 5)`` arrays with id -2
for unknown people and a CRLF ``query_info.txt``.

People are solid rectangles (one colour per identity, a darker "head") of detectable size on a
smooth background, each labeled identity appearing in at least two images and every query person
in at least two gallery images, so a short training run and an evaluation run can use them.

Each writer returns a ``FakeDataset`` holding what a correct reader must produce (boxes in
``x1, y1, x2, y2`` after the reference's conversion, contiguous training ids, test ids, queries
and the explicit protocols by image name).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import scipy.io
from PIL import Image

from seqnet_jax.data.types import UNLABELED_PID, ImageAnnotation, Query

__all__ = ["FakeDataset", "write_fake_cuhk_sysu", "write_fake_prw"]


@dataclasses.dataclass
class FakeDataset:
    """What was written, and what a correct reader returns for it.

    Attributes:
      name: ``"CUHK-SYSU"`` or ``"PRW"``.
      root: the dataset folder.
      train, gallery: expected ``ImageAnnotation`` lists in the reader's order.
      queries: expected ``Query`` list.
      num_train_pids: expected ``L``.
      protocols: CUHK-SYSU only: ``{"TestG50": [[(gallery image name, (4,) xyxy or None), ...]
        per query], ...}``.
      dropped_boxes: degenerate boxes written (the reader drops them).
      skipped_train_images: names of training images with no valid box (the reader skips them).
      image_names: every image file written under the image folder.
    """

    name: str
    root: Path
    train: list
    gallery: list
    queries: list
    num_train_pids: int
    protocols: dict = dataclasses.field(default_factory=dict)
    dropped_boxes: int = 0
    skipped_train_images: list = dataclasses.field(default_factory=list)
    image_names: list = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# MATLAB value helpers (what scipy.io.savemat turns into structs / cells / chars).


def _char(s: str) -> np.ndarray:
    return np.array([s])


def _num(*values) -> np.ndarray:
    return np.array([list(values)], dtype=np.float64)


def _struct(fields: Sequence[str], rows: Sequence[Sequence]) -> np.ndarray:
    """A MATLAB 1×k struct array."""
    arr = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row, strict=True):
            arr[f][0, i] = v
    return arr


def _cell(values: Sequence) -> np.ndarray:
    """A MATLAB n×1 cell array."""
    arr = np.empty((len(values), 1), dtype=object)
    for i, v in enumerate(values):
        arr[i, 0] = v
    return arr


# ------------------------------------------------------------------------------------------------
# Images.


def _color(rng_seed: int) -> np.ndarray:
    return np.random.default_rng(rng_seed).integers(30, 226, size=3)


def _write_jpeg(path: Path, size: tuple, boxes: np.ndarray, colors: list, seed: int) -> None:
    """Smooth background + one filled rectangle (with a darker head) per box."""
    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(60, 200, size=3)
    img = base[None, None, :] + 25 * np.sin(
        xx[..., None] / 37 + yy[..., None] / 53 + rng.uniform(0, 6, size=3)
    )
    img += rng.normal(0, 4, size=img.shape)
    for box, col in zip(boxes, colors, strict=True):
        x1, y1, x2, y2 = [int(v) for v in box]
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if x2 <= x1 or y2 <= y1:
            continue
        img[y1:y2, x1:x2] = col
        head = y1 + max(1, (y2 - y1) // 5)
        img[y1:head, x1 + (x2 - x1) // 4 : x2 - (x2 - x1) // 4] = np.asarray(col) * 0.45
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def _layout(rng, size: tuple, n: int) -> np.ndarray:
    """``n`` non-overlapping person boxes ``(n, 4)`` int ``x, y, w, h``, one per vertical slot."""
    h, w = size
    slot = w // n
    out = []
    for s in range(n):
        bw = int(rng.integers(max(12, int(0.45 * slot)), max(13, int(0.8 * slot)) + 1))
        bh = int(rng.integers(int(0.45 * h), int(0.85 * h) + 1))
        x = s * slot + int(rng.integers(0, max(1, slot - bw) + 1))
        y = int(rng.integers(0, h - bh + 1))
        out.append([x, y, min(bw, w - x), bh])
    return np.asarray(out, dtype=np.int64)


def _xywh_to_xyxy(b) -> np.ndarray:
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4).astype(np.int32)
    b[:, 2:] += b[:, :2]
    return b


# ------------------------------------------------------------------------------------------------
# CUHK-SYSU.


def write_fake_cuhk_sysu(
    root: os.PathLike | str,
    *,
    num_train_images: int = 6,
    num_gallery_images: int = 6,
    num_train_ids: int = 4,
    num_queries: int = 2,
    people_per_image: int = 3,
    image_size: tuple = (300, 400),
    gallery_sizes: Sequence[int] = (50, 100),
    edge_cases: bool = True,
    reverse_larger_protocols: bool = False,
    seed: int = 0,
) -> FakeDataset:
    """Writes a fake CUHK-SYSU folder at ``root`` (``Image/SSM`` + ``annotation/``).

    Training image ``t`` shows identities ``t % L`` and ``(t + 1) % L`` (Train.mat persons, raw
    pid = index + 1) and unlabeled people; gallery image ``g`` shows test person ``g % Q``, and
    query ``q`` is that person's box in gallery image ``q``. ``TestG{N}.mat`` list the query's
    other images first, then negatives with an empty ``(1, 0)`` ``idlocate``; ``TestG50`` holds
    half the negatives, the larger ones all of them (in reversed query order with
    ``reverse_larger_protocols``).

    With ``edge_cases``: training image 0 gets an extra ``w = 0`` box and one more training image
    has only an ``h = 0`` box (dropped / skipped by the reader).

    Returns:
      A ``FakeDataset`` with the expected reader output.
    """
    if not 2 <= num_train_ids <= num_train_images:
        raise ValueError("need 2 <= num_train_ids <= num_train_images")
    if num_queries < 1 or num_gallery_images < 2 * num_queries:
        raise ValueError("need num_gallery_images >= 2 * num_queries >= 2")
    if people_per_image < 2:
        raise ValueError("need people_per_image >= 2")
    root = Path(root)
    rng = np.random.default_rng(seed)
    n_extra = 1 if edge_cases else 0
    total = num_train_images + num_gallery_images + n_extra
    numbers = rng.permutation(np.arange(1, total + 1))
    names = [f"s{int(k)}.jpg" for k in numbers]
    train_names = names[:num_train_images]
    gallery_names = names[num_train_images : num_train_images + num_gallery_images]
    extra_names = names[num_train_images + num_gallery_images :]

    img_dir = root / "Image" / "SSM"
    ann_dir = root / "annotation"
    proto_dir = ann_dir / "test" / "train_test"
    proto_dir.mkdir(parents=True, exist_ok=True)
    img_dir.mkdir(parents=True, exist_ok=True)

    xywh_of: dict = {}  # name -> written boxes (N, 4) x, y, w, h (incl. degenerate)
    raw_pid_of: dict = {}  # name -> expected pids (N,) for valid boxes (train raw / test ids)
    colors_of: dict = {}
    dropped = 0
    # -- training images
    appearances: dict = {i: [] for i in range(num_train_ids)}  # id -> [(name, xywh)]
    for t, name in enumerate(train_names):
        boxes = _layout(rng, image_size, people_per_image)
        ids = [t % num_train_ids, (t + 1) % num_train_ids] + [None] * (people_per_image - 2)
        for b, i in zip(boxes, ids, strict=True):
            if i is not None:
                appearances[i].append((name, b))
        pids = [UNLABELED_PID if i is None else i + 1 for i in ids]
        colors = [
            _color(1000 + (i if i is not None else 500 + 10 * t + k)) for k, i in enumerate(ids)
        ]
        if edge_cases and t == 0:
            boxes = np.concatenate([boxes, [[5, 5, 0, 40]]])
            colors.append(_color(33))
            dropped += 1
        xywh_of[name], raw_pid_of[name], colors_of[name] = boxes, np.array(pids, np.int32), colors
    # -- gallery images
    for g, name in enumerate(gallery_names):
        boxes = _layout(rng, image_size, people_per_image)
        pids = [g % num_queries + 1] + [UNLABELED_PID] * (people_per_image - 1)
        colors = [_color(5000 + g % num_queries)] + [
            _color(7000 + 10 * g + k) for k in range(people_per_image - 1)
        ]
        xywh_of[name], raw_pid_of[name], colors_of[name] = boxes, np.array(pids, np.int32), colors
    # -- a training image whose only box is degenerate
    for name in extra_names:
        xywh_of[name] = np.array([[10, 10, 30, 0]])
        raw_pid_of[name] = np.zeros((0,), np.int32)
        colors_of[name] = [_color(34)]
        dropped += 1

    for k, name in enumerate(names):
        _write_jpeg(
            img_dir / name,
            image_size,
            _xywh_to_xyxy(xywh_of[name]),
            colors_of[name],
            seed * 1000 + k,
        )

    # Images.mat (all images, in file-number order), pool.mat
    img_rows = []
    for name in sorted(names, key=lambda n: int(n[1:-4])):
        boxes = xywh_of[name]
        box_struct = _struct(("idlocate", "ishard"), [(_num(*b), _num(0)) for b in boxes])
        img_rows.append((_char(name), _num(len(boxes)), box_struct))
    scipy.io.savemat(
        ann_dir / "Images.mat", {"Img": _struct(("imname", "nAppear", "box"), img_rows)}
    )
    scipy.io.savemat(ann_dir / "pool.mat", {"pool": _cell([_char(n) for n in gallery_names])})

    # Train.mat
    train_cells = []
    for i in range(num_train_ids):
        scene = _struct(
            ("imname", "idlocate", "ishard"),
            [(_char(n), _num(*b), _num(0)) for n, b in appearances[i]],
        )
        train_cells.append(
            _struct(
                ("idname", "nAppear", "scene"),
                [(_char(f"p{i + 1}"), _num(len(appearances[i])), scene)],
            )
        )
    scipy.io.savemat(proto_dir / "Train.mat", {"Train": _cell(train_cells)})

    # TestG{N}.mat
    protocols: dict = {}
    queries = []
    for size in sorted(set(gallery_sizes) | {50}):
        rows, expected = [], []
        for q in range(num_queries):
            qname = gallery_names[q]
            qbox = xywh_of[qname][0]
            pos = [g for g in range(num_gallery_images) if g % num_queries == q and g != q]
            neg = [g for g in range(num_gallery_images) if g % num_queries != q]
            if size == 50:
                neg = neg[: (len(neg) + 1) // 2]
            entries = [(gallery_names[g], xywh_of[gallery_names[g]][0]) for g in pos]
            entries += [(gallery_names[g], None) for g in neg]
            gal = _struct(
                ("imname", "idlocate", "ishard"),
                [
                    (_char(n), np.zeros((1, 0)) if b is None else _num(*b), _num(0))
                    for n, b in entries
                ],
            )
            query = _struct(
                ("imname", "idlocate", "ishard", "idname"),
                [(_char(qname), _num(*qbox), _num(0), _char(f"t{q + 1}"))],
            )
            rows.append((query, gal))
            expected.append(
                [
                    (n, None if b is None else _xywh_to_xyxy(b)[0].astype(np.float32))
                    for n, b in entries
                ]
            )
            if size == 50:
                queries.append(Query(qname, _xywh_to_xyxy(qbox)[0].astype(np.float32), q + 1))
        if size != 50 and reverse_larger_protocols:
            rows = rows[::-1]
        scipy.io.savemat(
            proto_dir / f"TestG{size}.mat", {f"TestG{size}": _struct(("Query", "Gallery"), rows)}
        )
        protocols[f"TestG{size}"] = expected

    def annotation(name: str) -> ImageAnnotation:
        boxes = xywh_of[name]
        keep = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        return ImageAnnotation(
            name,
            _xywh_to_xyxy(boxes[keep]).astype(np.float32),
            raw_pid_of[name].copy(),
            -1,
            image_size[0],
            image_size[1],
        )

    train = [annotation(n) for n in sorted(train_names)]
    gallery = [annotation(n) for n in gallery_names]
    return FakeDataset(
        name="CUHK-SYSU",
        root=root,
        train=train,
        gallery=gallery,
        queries=queries,
        num_train_pids=num_train_ids,
        protocols=protocols,
        dropped_boxes=dropped,
        skipped_train_images=list(extra_names),
        image_names=list(names),
    )


# ------------------------------------------------------------------------------------------------
# PRW.


def _prw_boxes(rows: np.ndarray) -> tuple:
    """The reference's PRW conversion of ``[id, x, y, w, h]`` rows → (int32 xyxy, int32 ids).

    Only valid (non-degenerate) boxes are returned.
    """
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
    rois = np.clip(rows[:, 1:], 0, None)
    rois[:, 2:] += rois[:, :2]
    rois = rois.astype(np.int32)
    keep = (rois[:, 2] > rois[:, 0]) & (rois[:, 3] > rois[:, 1])
    return rois[keep], rows[keep, 0].astype(np.int32)


def write_fake_prw(
    root: os.PathLike | str,
    *,
    num_train_frames: int = 6,
    num_test_frames: int = 6,
    train_ids: Sequence[int] = (1, 2, 5, 932),
    test_ids: Sequence[int] = (3, 7),
    people_per_image: int = 3,
    image_size: tuple = (300, 400),
    num_cameras: int = 3,
    edge_cases: bool = True,
    line_ending: str = "\r\n",
    seed: int = 0,
) -> FakeDataset:
    """Writes a fake PRW folder at ``root`` (``frames/``, ``annotations/``, index files).

    Training frame ``t`` shows raw ids ``train_ids[t % n]`` and ``train_ids[(t + 1) % n]`` plus
    unknown people (id -2); test frame ``g`` shows ``test_ids[g % m]`` plus unknown people; frames
    cycle through ``num_cameras`` cameras, so every test id is seen by several cameras. One query
    per test id: its box in the first test frame showing it. Coordinates have fractional parts
    (the reader truncates as the reference).

    With ``edge_cases``: training frame 0 gets a ``w = 0`` box (dropped) and an unknown person
    with a negative ``x`` (clipped); training frame 1 stores its boxes under ``anno_file`` instead
    of ``box_new``; one more training frame and one more test frame have no box at all (the
    training one is skipped, the test one stays in the gallery with zero boxes).

    Returns:
      A ``FakeDataset`` with the expected reader output (training ids mapped to ``1..n`` in
      increasing raw-id order, test ids raw).
    """
    n, m = len(train_ids), len(test_ids)
    if n < 2 or num_train_frames < n:
        raise ValueError("need 2 <= len(train_ids) <= num_train_frames")
    if m < 1 or num_test_frames < 2 * m:
        raise ValueError("need num_test_frames >= 2 * len(test_ids) >= 2")
    if min(list(train_ids) + list(test_ids)) <= 0:
        raise ValueError("identity ids must be positive (-2 marks unknown people)")
    root = Path(root)
    rng = np.random.default_rng(seed)
    frame_dir, ann_dir = root / "frames", root / "annotations"
    frame_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)

    def frame_name(k: int) -> str:
        return f"c{k % num_cameras + 1}s{k // num_cameras + 1}_{(k + 1) * 25:06d}"

    n_extra = 1 if edge_cases else 0
    train_frames = [frame_name(k) for k in range(num_train_frames + n_extra)]
    test_frames = [
        frame_name(k)
        for k in range(num_train_frames + n_extra, num_train_frames + num_test_frames + 2 * n_extra)
    ]
    rows_of: dict = {}
    colors_of: dict = {}
    dropped = 0
    for t, name in enumerate(train_frames):
        if t >= num_train_frames:  # edge case: no box at all
            rows_of[name], colors_of[name] = np.zeros((0, 5)), []
            continue
        boxes = _layout(rng, image_size, people_per_image).astype(np.float64) + 0.4
        ids = [train_ids[t % n], train_ids[(t + 1) % n]] + [-2] * (people_per_image - 2)
        colors = [
            _color(2000 + i) if i > 0 else _color(9000 + 10 * t + k) for k, i in enumerate(ids)
        ]
        rows = np.concatenate([np.array(ids, np.float64)[:, None], boxes], axis=1)
        if edge_cases and t == 0:
            rows = np.concatenate([rows, [[-2, -6.0, 20.5, 30.3, 80.9], [-2, 50, 5, 0, 30]]])
            colors += [_color(31), _color(32)]
            dropped += 1
        rows_of[name], colors_of[name] = rows, colors
    for g, name in enumerate(test_frames):
        if g >= num_test_frames:
            rows_of[name], colors_of[name] = np.zeros((0, 5)), []
            continue
        boxes = _layout(rng, image_size, people_per_image).astype(np.float64) + 0.7
        ids = [test_ids[g % m]] + [-2] * (people_per_image - 1)
        colors = [_color(6000 + test_ids[g % m])] + [
            _color(8000 + 10 * g + k) for k in range(people_per_image - 1)
        ]
        rows_of[name] = np.concatenate([np.array(ids, np.float64)[:, None], boxes], axis=1)
        colors_of[name] = colors

    for k, name in enumerate(train_frames + test_frames):
        rows = rows_of[name]
        xyxy = np.clip(rows[:, 1:], 0, None)
        xyxy[:, 2:] += xyxy[:, :2]
        _write_jpeg(frame_dir / (name + ".jpg"), image_size, xyxy, colors_of[name], seed * 1000 + k)
        key = "anno_file" if edge_cases and k == 1 else "box_new"
        scipy.io.savemat(ann_dir / (name + ".jpg.mat"), {key: rows})
    scipy.io.savemat(
        root / "frame_train.mat", {"img_index_train": _cell([_char(f) for f in train_frames])}
    )
    scipy.io.savemat(
        root / "frame_test.mat", {"img_index_test": _cell([_char(f) for f in test_frames])}
    )

    lines, queries = [], []
    for j, pid in enumerate(test_ids):
        name = test_frames[j]  # first test frame showing test_ids[j]
        _, x, y, w, h = rows_of[name][0]
        lines.append(f"{pid} {x:.1f} {y:.1f} {w:.1f} {h:.1f} {name}{line_ending}")
        xf, yf, wf, hf = (float(f"{v:.1f}") for v in (x, y, w, h))
        box = np.clip(np.array([xf, yf, xf + wf, yf + hf]).astype(np.int32), 0, None)
        queries.append(Query(name + ".jpg", box.astype(np.float32), int(pid), int(name[1])))
    (root / "query_info.txt").write_bytes("".join(lines).encode("utf-8"))

    def annotation(name: str, is_train: bool) -> Optional[ImageAnnotation]:
        boxes, ids = _prw_boxes(rows_of[name])
        if is_train and len(boxes) == 0:
            return None
        pids = np.where(ids > 0, ids, UNLABELED_PID).astype(np.int32)
        if is_train:
            order = {raw: k + 1 for k, raw in enumerate(sorted(train_ids))}
            pids = np.array([order.get(int(p), UNLABELED_PID) for p in pids], np.int32)
        return ImageAnnotation(
            name + ".jpg",
            boxes.astype(np.float32),
            pids,
            int(name[1]),
            image_size[0],
            image_size[1],
        )

    train = [a for a in (annotation(f, True) for f in train_frames) if a is not None]
    gallery = [annotation(f, False) for f in test_frames]
    skipped = [f + ".jpg" for f in train_frames if annotation(f, True) is None]
    return FakeDataset(
        name="PRW",
        root=root,
        train=train,
        gallery=gallery,
        queries=queries,
        num_train_pids=len(set(train_ids)),
        dropped_boxes=dropped,
        skipped_train_images=skipped,
        image_names=[f + ".jpg" for f in train_frames + test_frames],
    )
