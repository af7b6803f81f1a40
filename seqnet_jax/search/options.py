"""What to search and how: the options (``config.search``) and the checked query.

Owns :class:`SearchOptions` (the fields of ``config.search`` and their range checks),
:func:`parse_box` (the query box, in the query picture's pixels), :class:`PreparedQuery` and
:func:`prepare`: every input check that needs no model (options, query image, query box,
gallery listing), run before the model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import List

import numpy as np

from seqnet_jax.search.errors import SearchInputError
from seqnet_jax.search.gallery import GalleryFile, list_gallery, read_image


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
