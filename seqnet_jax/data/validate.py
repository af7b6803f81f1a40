"""Validator of a dataset in our format (``seqnet_jax.data.custom``).

    python -m seqnet_jax.data.validate DIR [--check decode|header|none] [--plot PNG] [--json OUT]

Also run at the start of training / evaluation on ``--config.data.dataset=custom`` (with
``data.custom.check_images``, default ``header``): errors stop the run, warnings are counted and
logged.

Findings (each names the key path, e.g. ``annotations[17]``, and the image file):

errors
  every format error of the JSON (``images[3].width``: expected a positive integer, ...); missing,
  unreadable (``--check decode``: also truncated) images and images whose size differs from the
  JSON; boxes of zero (or negative) width or height; boxes entirely outside their image; query
  boxes with these problems.
warnings
  boxes partly outside their image (kept unclipped, as the reference does); identities seen in only
  one image of a split (in the test split useless as queries: there is nothing else to find);
  identities in both splits (test numbers then measure seen people); images without people (a
  training image is skipped, a test image is a distractor); images in no split; the same person
  twice in one image; given queries whose person is in no other test image; camera ids on some
  images only (no cross-camera protocol); no training or no test images; unknown keys.

Then statistics (images, boxes, identities, boxes per image, box heights, appearances per identity,
cameras, the protocols that evaluation will run) and, from the command line, a PNG with the
histograms of box heights and of appearances per identity. Nothing is written into the dataset.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from seqnet_jax.data import _reader_utils as ru
from seqnet_jax.data import custom
from seqnet_jax.data.custom import Problem
from seqnet_jax.data.types import UNLABELED_PID, ImageAnnotation, Query

logger = logging.getLogger(__name__)

__all__ = ["DatasetValidationError", "Report", "check", "main", "plot_histograms", "validate"]


class DatasetValidationError(ValueError):
    """The dataset has errors; the message lists them (file, key path, what is wrong)."""


@dataclasses.dataclass
class Report:
    """What :func:`validate` found."""

    path: Path  # the annotation JSON
    name: str
    problems: list  # [Problem], errors first
    stats: dict
    box_heights: np.ndarray  # (N,) heights of the valid boxes of the images in a split
    appearances: dict  # {"train": (I,) images per identity, "test": (J,)}

    @property
    def errors(self) -> list:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self, max_listed: int = 30) -> str:
        """A human-readable report: problems (the first ``max_listed`` of each severity, then
        counts by kind) and statistics."""
        lines = [f"dataset {self.name!r} ({self.path})"]
        for sev, probs in (("errors", self.errors), ("warnings", self.warnings)):
            lines.append(f"{len(probs)} {sev}")
            for p in probs[:max_listed]:
                lines.append(f"  {p}")
            if len(probs) > max_listed:
                kinds = collections.Counter(_kind(p) for p in probs[max_listed:])
                lines.append(
                    f"  ... and {len(probs) - max_listed} more: "
                    + "; ".join(f"{n} x {k}" for k, n in kinds.most_common())
                )
        lines.append("statistics:")
        lines += _format_stats(self.stats)
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "name": self.name,
            "errors": [dataclasses.asdict(p) for p in self.errors],
            "warnings": [dataclasses.asdict(p) for p in self.warnings],
            "stats": self.stats,
        }


def _kind(p: Problem) -> str:
    """A problem's message without numbers (to count problems by kind)."""
    return "".join("#" if c.isdigit() else c for c in p.message)[:70]


def _format_stats(stats: dict, indent: str = "  ") -> list:
    out = []
    for k, v in stats.items():
        if isinstance(v, dict):
            out.append(f"{indent}{k}:")
            out += _format_stats(v, indent + "  ")
        elif isinstance(v, float):
            out.append(f"{indent}{k}: {v:.4g}")
        else:
            out.append(f"{indent}{k}: {v}")
    return out


def _summary(values: Sequence[float], pct: bool = False) -> dict:
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"count": 0}
    out = {"count": int(v.size), "min": float(v.min())}
    if pct:
        out["p5"] = float(np.percentile(v, 5))
    out["median"] = float(np.median(v))
    out["mean"] = float(v.mean())
    if pct:
        out["p95"] = float(np.percentile(v, 95))
    out["max"] = float(v.max())
    return out


def validate(
    root: os.PathLike | str,
    *,
    check_images: str = "decode",
    annotations: Optional[str] = None,
    protocol_seed: int = custom.DEFAULT_PROTOCOL_SEED,
    gallery_sizes: Sequence[int] = custom.DEFAULT_GALLERY_SIZES,
    bad_images_are_errors: bool = True,
) -> Report:
    """Checks a dataset in our format; never raises for problems of the data (they are reported).

    Args:
      root: dataset folder (or its annotation JSON).
      check_images: ``"decode"`` (default: decode every image in a split or used by a query),
        ``"header"`` (open each and read its size) or ``"none"``.
      annotations: the JSON's name inside ``root`` (default ``annotations.json``).
      protocol_seed, gallery_sizes: as ``read_custom`` (to report the protocols evaluation runs).
      bad_images_are_errors: ``False`` reports missing / unreadable images as warnings (what
        ``read_custom(skip_bad_images=True)`` then skips).

    Raises:
      FileNotFoundError: no annotation file. FormatError: the file is not JSON at all.
    """
    path = custom.locate(root, annotations)
    doc, problems = custom.read_document(path)
    problems = list(problems)
    by_id = doc.image_by_id()
    boxes_of = doc.boxes_by_image()
    split_of = {v: s for s in custom.SPLITS for v in doc.splits.get(s, [])}
    query_images = [q.image_id for q in doc.queries or []]
    used = list(dict.fromkeys(list(split_of) + query_images))

    # -- image files
    bad: dict = {}
    sizes: dict = {}
    if not doc.image_dir.is_dir():
        problems.append(
            Problem("error", str(doc.image_dir), "image folder not found (see 'image_root')")
        )
    elif check_images != "none":
        names = [by_id[v].file_name for v in used]
        sizes, bad = _quiet_check(doc.image_dir, names, check_images)
    for v in used:
        im = by_id[v]
        where = f"images[{im.index}]"
        if im.file_name in bad:
            if bad_images_are_errors:
                problems.append(Problem("error", where, bad[im.file_name], im.file_name))
            else:
                msg = f"{bad[im.file_name]} (skipped: skip_bad_images)"
                problems.append(Problem("warning", where, msg, im.file_name))
        elif im.file_name in sizes and sizes[im.file_name] != (im.height, im.width):
            h, w = sizes[im.file_name]
            problems.append(
                Problem(
                    "error",
                    where,
                    f"width x height in the JSON is {im.width}x{im.height}, the file is {w}x{h}",
                    im.file_name,
                )
            )
    for im in doc.images:
        if im.id not in split_of and im.id not in query_images:
            problems.append(
                Problem("warning", f"images[{im.index}]", "in no split (ignored)", im.file_name)
            )

    # -- boxes
    heights = []
    for a in doc.annotations:
        im = by_id[a.image_id]
        where = f"annotations[{a.index}]"
        problems += _box_problems(a, im, where)
        x, y, w, h = a.xywh
        if w > 0 and h > 0 and a.image_id in split_of:
            heights.append(h)
    for v, recs in boxes_of.items():
        seen = collections.Counter(r.person_id for r in recs if r.person_id > 0)
        for pid, n in seen.items():
            if n > 1:
                first = next(r.index for r in recs if r.person_id == pid)
                problems.append(
                    Problem(
                        "warning",
                        f"annotations[{first}]",
                        f"person_id {pid} appears {n} times in one image",
                        by_id[v].file_name,
                    )
                )
    for q in doc.queries or []:
        problems += _box_problems(q, by_id[q.image_id], f"queries[{q.index}]")

    # -- identities, images without people
    def valid(r) -> bool:
        return r.xywh[2] > 0 and r.xywh[3] > 0

    images_of = {s: collections.defaultdict(set) for s in custom.SPLITS}
    per_image = {s: [] for s in custom.SPLITS}
    for s in custom.SPLITS:
        for v in doc.splits.get(s, []):
            recs = [r for r in boxes_of.get(v, []) if valid(r)]
            per_image[s].append(len(recs))
            for r in recs:
                if r.person_id > 0:
                    images_of[s][r.person_id].add(v)
            if not recs:
                im = by_id[v]
                what = (
                    "skipped for training"
                    if s == "train"
                    else "kept in the gallery as a distractor"
                )
                problems.append(
                    Problem(
                        "warning",
                        f"images[{im.index}]",
                        f"no person ({s} split; {what})",
                        im.file_name,
                    )
                )
    for s in custom.SPLITS:
        for pid in sorted(images_of[s]):
            imgs = images_of[s][pid]
            if len(imgs) == 1:
                v = next(iter(imgs))
                first = next(r.index for r in boxes_of[v] if r.person_id == pid)
                why = (
                    "useless as a query: no other test image to find it in"
                    if s == "test"
                    else "its identity is learnt from one image"
                )
                problems.append(
                    Problem(
                        "warning",
                        f"annotations[{first}]",
                        f"person_id {pid} is seen in only one {s} image ({why})",
                        by_id[v].file_name,
                    )
                )
    shared = sorted(set(images_of["train"]) & set(images_of["test"]))
    for pid in shared:
        v = min(images_of["test"][pid], key=lambda i: by_id[i].index)
        first = next(r.index for r in boxes_of[v] if r.person_id == pid)
        problems.append(
            Problem(
                "warning",
                f"annotations[{first}]",
                f"person_id {pid} is in both the train and the test split (test results then "
                "include people seen in training)",
                by_id[v].file_name,
            )
        )
    test_set = set(doc.splits.get("test", []))
    for q in doc.queries or []:
        elsewhere = images_of["test"].get(q.person_id, set()) - {q.image_id}
        if not elsewhere:
            problems.append(
                Problem(
                    "warning",
                    f"queries[{q.index}]",
                    f"person_id {q.person_id} is in no other test image: nothing to find (AP 0)",
                    by_id[q.image_id].file_name,
                )
            )
    for s in custom.SPLITS:
        if not doc.splits.get(s):
            what = "training" if s == "train" else "evaluation"
            problems.append(Problem("warning", f"splits.{s}", f"empty: no {what} possible"))
    cams = [by_id[v].camera_id for v in used]
    n_cam = sum(c >= 0 for c in cams)
    if 0 < n_cam < len(cams):
        first = next(by_id[v] for v in used if by_id[v].camera_id < 0)
        problems.append(
            Problem(
                "warning",
                f"images[{first.index}].camera_id",
                f"camera ids on {n_cam} of {len(cams)} used images only: no cross-camera protocol",
                first.file_name,
            )
        )

    # -- the protocols evaluation would run (without reading pixels)
    protocols = _protocol_summary(doc, test_set, by_id, boxes_of, protocol_seed, gallery_sizes)

    stats = {
        "images": {
            "total": len(doc.images),
            "train": len(doc.splits.get("train", [])),
            "test": len(doc.splits.get("test", [])),
            "in no split": sum(1 for im in doc.images if im.id not in split_of),
            "with camera id": sum(1 for im in doc.images if im.camera_id >= 0),
            "cameras": len({im.camera_id for im in doc.images if im.camera_id >= 0}),
            "with time": sum(1 for im in doc.images if im.time is not None),
            "without people": sum(n == 0 for s in custom.SPLITS for n in per_image[s]),
        },
        "boxes": {
            "total": len(doc.annotations),
            "labeled": sum(1 for a in doc.annotations if a.person_id > 0),
            "unlabeled": sum(1 for a in doc.annotations if a.person_id < 0),
        },
        "identities": {
            "train": len(images_of["train"]),
            "test": len(images_of["test"]),
            "in both splits": len(shared),
            "seen once (train)": sum(len(v) == 1 for v in images_of["train"].values()),
            "seen once (test)": sum(len(v) == 1 for v in images_of["test"].values()),
        },
        "boxes per image": {s: _summary(per_image[s]) for s in custom.SPLITS},
        "box height (px)": _summary(heights, pct=True),
        "images per identity": {
            s: _summary([len(v) for v in images_of[s].values()]) for s in custom.SPLITS
        },
        "queries": protocols.pop("queries"),
        "protocols": protocols["names"],
        "errors": 0,
        "warnings": 0,
    }
    problems.sort(key=lambda p: p.severity != "error")  # stable: errors first, in file order
    stats["errors"] = sum(p.severity == "error" for p in problems)
    stats["warnings"] = len(problems) - stats["errors"]
    appearances = {
        s: np.array([len(v) for v in images_of[s].values()], np.int64) for s in custom.SPLITS
    }
    return Report(path, doc.name, problems, stats, np.asarray(heights, np.float64), appearances)


def _quiet_check(folder: Path, names: list, mode: str) -> tuple:
    """``check_images`` collecting the bad ones without a log line each."""
    log = logging.getLogger(ru.__name__)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return ru.check_images(folder, names, mode, skip_bad_images=True)
    finally:
        log.setLevel(level)


def _box_problems(rec, im, where: str) -> list:
    x, y, w, h = rec.xywh
    f = im.file_name
    if w <= 0 or h <= 0:
        return [Problem("error", f"{where}.bbox", f"zero area: width {w:g}, height {h:g}", f)]
    x2, y2 = x + w, y + h
    if x2 <= 0 or y2 <= 0 or x >= im.width or y >= im.height:
        return [
            Problem(
                "error",
                f"{where}.bbox",
                f"box x1,y1,x2,y2 = {x:g},{y:g},{x2:g},{y2:g} lies outside the "
                f"{im.width}x{im.height} image",
                f,
            )
        ]
    if x < 0 or y < 0 or x2 > im.width or y2 > im.height:
        return [
            Problem(
                "warning",
                f"{where}.bbox",
                f"box x1,y1,x2,y2 = {x:g},{y:g},{x2:g},{y2:g} extends beyond the "
                f"{im.width}x{im.height} image",
                f,
            )
        ]
    return []


def _protocol_summary(doc, test_set, by_id, boxes_of, seed, gallery_sizes) -> dict:
    if doc.protocols is not None:
        return {
            "queries": {"given": len(doc.queries)},
            "names": [p["name"] for p in doc.protocols],
        }
    gallery = []
    for v in doc.splits.get("test", []):
        im = by_id[v]
        recs = [r for r in boxes_of.get(v, []) if r.xywh[2] > 0 and r.xywh[3] > 0]
        boxes = np.array([r.xyxy for r in recs], np.float32).reshape(-1, 4)
        pids = np.array([r.person_id if r.person_id > 0 else UNLABELED_PID for r in recs])
        gallery.append(ImageAnnotation(im.file_name, boxes, pids, im.camera_id))
    if doc.queries is not None:
        queries = [
            Query(by_id[q.image_id].file_name, q.xyxy, q.person_id, by_id[q.image_id].camera_id)
            for q in doc.queries
        ]
        qstats = {"given": len(queries)}
    else:
        queries, skipped = custom.derive_queries(gallery, seed)
        qstats = {"derived": len(queries), "test identities without a query": len(skipped)}
    protocols, info = custom.derive_protocols(gallery, queries, seed, gallery_sizes)
    names = [p.name for p in protocols]
    if info["skipped"]:
        names = names + [f"(skipped {k}: {v})" for k, v in info["skipped"].items()]
    return {"queries": qstats, "names": names}


def plot_histograms(report: Report, path: os.PathLike | str) -> Path:
    """Writes a PNG: box heights (all split images) and images per identity (train / test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    h = report.box_heights
    ax = axes[0]
    if h.size:
        ax.hist(h, bins=min(50, max(5, int(np.sqrt(h.size)))), color="tab:blue")
    ax.set_xlabel("box height (pixels)")
    ax.set_ylabel("boxes")
    ax.set_title(f"box heights ({h.size} boxes)")
    ax = axes[1]
    hi = max([int(a.max()) for a in report.appearances.values() if a.size] + [1])
    bins = np.arange(0.5, hi + 1.5, 1.0) if hi <= 60 else 50
    for s, colour in (("train", "tab:green"), ("test", "tab:orange")):
        a = report.appearances[s]
        if a.size:
            ax.hist(a, bins=bins, alpha=0.6, color=colour, label=f"{s} ({a.size} identities)")
    ax.set_xlabel("images per identity")
    ax.set_ylabel("identities")
    ax.set_title("appearances per identity")
    if any(a.size for a in report.appearances.values()):
        ax.legend()
    fig.suptitle(
        f"{report.name}: {report.stats['errors']} errors, {report.stats['warnings']} warnings"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def check(
    root: os.PathLike | str,
    *,
    check_images: str = "header",
    annotations: Optional[str] = None,
    protocol_seed: int = custom.DEFAULT_PROTOCOL_SEED,
    gallery_sizes: Sequence[int] = custom.DEFAULT_GALLERY_SIZES,
    bad_images_are_errors: bool = True,
    max_listed: int = 10,
) -> Report:
    """:func:`validate`, logging the result; raises when there are errors (what training and
    evaluation on a custom dataset run first).

    Raises:
      DatasetValidationError: listing the errors (file, key path, problem).
    """
    report = validate(
        root,
        check_images=check_images,
        annotations=annotations,
        protocol_seed=protocol_seed,
        gallery_sizes=gallery_sizes,
        bad_images_are_errors=bad_images_are_errors,
    )
    if report.errors:
        raise DatasetValidationError(
            f"{report.path}: {len(report.errors)} error(s), {len(report.warnings)} warning(s) "
            f"(full report: python -m seqnet_jax.data.validate {report.path.parent}):\n  "
            + "\n  ".join(str(p) for p in report.errors[:max_listed])
            + (
                f"\n  ... and {len(report.errors) - max_listed} more"
                if len(report.errors) > max_listed
                else ""
            )
        )
    s = report.stats
    logger.info(
        "validated %s: 0 errors, %d warnings; %d train / %d test images, %d boxes, "
        "%d train / %d test identities, protocols %s",
        report.path,
        len(report.warnings),
        s["images"]["train"],
        s["images"]["test"],
        s["boxes"]["total"],
        s["identities"]["train"],
        s["identities"]["test"],
        s["protocols"],
    )
    for p in report.warnings[:max_listed]:
        logger.warning("%s", p)
    if len(report.warnings) > max_listed:
        logger.warning(
            "... and %d more warnings (python -m seqnet_jax.data.validate %s)",
            len(report.warnings) - max_listed,
            report.path.parent,
        )
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqnet_jax.data.validate",
        description="Check a person-search dataset in the seqnet-jax format (README: 'Your own "
        "dataset'). Exit status 1 when there are errors.",
    )
    parser.add_argument("root", help="dataset folder (holding annotations.json) or the JSON file")
    parser.add_argument(
        "--check",
        choices=ru.CHECK_MODES,
        default="decode",
        help="image check: decode every image (default), read headers only, or none",
    )
    parser.add_argument(
        "--plot",
        default="",
        help="histogram PNG to write (default: ./<dataset folder>_validation.png; 'none' skips)",
    )
    parser.add_argument("--json", default="", help="also write the report as JSON here")
    parser.add_argument("--annotations", default=None, help="JSON file name inside ROOT")
    parser.add_argument("--protocol_seed", type=int, default=custom.DEFAULT_PROTOCOL_SEED)
    parser.add_argument(
        "--gallery_sizes",
        default=",".join(str(s) for s in custom.DEFAULT_GALLERY_SIZES),
        help="derived TestG{N} gallery sizes, comma-separated",
    )
    parser.add_argument("--max_listed", type=int, default=30, help="problems listed per severity")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.gallery_sizes.split(",") if s.strip()]
    try:
        report = validate(
            args.root,
            check_images=args.check,
            annotations=args.annotations,
            protocol_seed=args.protocol_seed,
            gallery_sizes=sizes,
        )
    except (FileNotFoundError, custom.FormatError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.format(args.max_listed))
    if args.plot != "none":
        folder = report.path.parent.resolve()
        target = Path(args.plot or f"{folder.name or 'dataset'}_validation.png").resolve()
        if not args.plot and target.is_relative_to(folder):  # never write into the dataset
            target = folder.parent / target.name
        print(f"histograms: {plot_histograms(report, target)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2))
        print(f"report: {args.json}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
