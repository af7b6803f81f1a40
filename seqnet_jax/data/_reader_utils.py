"""Helpers shared by the CUHK-SYSU and PRW readers (``cuhk_sysu.py``, ``prw.py``).

Nothing here imports jax or TensorFlow. The readers only ever *read* the dataset folder.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import scipy.io
from PIL import Image

from seqnet_jax import progress

logger = logging.getLogger(__name__)

CHECK_MODES = ("none", "header", "decode")


class ImageReadError(OSError):
    """An image file is missing, unreadable or corrupt. The message names the file."""


def resolve_root(
    root: os.PathLike | str, markers: Sequence[str], dataset: str, download_hint: str
) -> Path:
    """Returns the dataset folder: ``root`` itself, or its single sub-folder holding ``markers``.

    The official archives unpack into one top-level folder (``cuhk_sysu/``, ``PRW-v16.04.20/``);
    accepting the folder above it saves a common mistake.

    Raises:
      FileNotFoundError: naming the expected paths and what to download.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset} folder not found: {root}. {download_hint}")
    if all((root / m).exists() for m in markers):
        return root
    candidates = [
        child
        for child in sorted(root.iterdir())
        if child.is_dir() and all((child / m).exists() for m in markers)
    ]
    if len(candidates) == 1:
        return candidates[0]
    missing = [str(root / m) for m in markers if not (root / m).exists()]
    raise FileNotFoundError(
        f"{dataset}: expected {', '.join(missing)} (not found). {download_hint}"
    )


def require(path: Path, dataset: str, download_hint: str) -> Path:
    """Raises ``FileNotFoundError`` naming ``path`` and the archive to download if it is absent."""
    if not path.exists():
        raise FileNotFoundError(f"{dataset}: expected {path} (not found). {download_hint}")
    return path


def loadmat(path: Path, dataset: str, download_hint: str, **kwargs) -> dict:
    """``scipy.io.loadmat(path, **kwargs)`` of an existing file (no ``.mat`` appending).

    ``squeeze_me=True`` cuts the memory of files with millions of tiny structs (``TestG4000.mat``)
    by about 3x; the helpers below accept both forms.
    """
    require(path, dataset, download_hint)
    try:
        with open(path, "rb") as f:
            return scipy.io.loadmat(f, **kwargs)
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError on bad files
        raise ValueError(f"{dataset}: cannot parse MATLAB file {path}: {e}") from e


def mat_str(value) -> str:
    """A MATLAB char value as loaded by scipy (``array(['name'])``, nested in cells) → ``str``."""
    while isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        if value.dtype.kind in "US":
            return str(value.reshape(-1)[0]).strip()
        value = value.reshape(-1)[0]
    return str(value).strip()


def mat_records(value) -> list:
    """A MATLAB struct array (any shape; may be nested in a 1×1 cell) → flat list of records."""
    arr = np.asarray(value)
    while arr.dtype == object and arr.size == 1 and isinstance(arr.reshape(-1)[0], np.ndarray):
        arr = arr.reshape(-1)[0]
    return list(arr.reshape(-1))


def record_field(record, name: str, position: int):
    """Field of a struct record by name when present, else by position (the reference's way)."""
    names = record.dtype.names or ()
    if name in names:
        return record[name]
    return record[position]


def xywh_to_int_xyxy(xywh: np.ndarray) -> np.ndarray:
    """``(N, 4)`` ``x, y, w, h`` → int32 ``x1, y1, x2, y2`` exactly as the reference.

    The reference truncates ``x, y, w, h`` to int32 first and then adds (CUHK-SYSU).
    """
    b = np.asarray(xywh, dtype=np.float64).reshape(-1, 4).astype(np.int32)
    b[:, 2:] += b[:, :2]
    return b


def valid_box_mask(xyxy: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: finite boxes with ``x2 > x1`` and ``y2 > y1``."""
    b = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    return np.all(np.isfinite(b), axis=1) & (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


def decode_image(path: Path) -> np.ndarray:
    """Decodes an image file with PIL to ``uint8 (H, W, 3)`` RGB.

    Raises:
      ImageReadError: naming the file when it is missing or cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as e:
        raise ImageReadError(f"image file not found: {path}") from e
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError (truncated), ...
        raise ImageReadError(f"cannot decode image {path}: {e}") from e


def probe_image(path: Path, mode: str) -> tuple:
    """Checks one image; returns ``(height, width)`` (``(0, 0)`` for mode ``"none"``).

    ``"header"`` opens the file and reads its size (catches missing and non-image files);
    ``"decode"`` decodes all pixels (also catches truncated / corrupt JPEG data).

    Raises:
      ImageReadError: naming the file.
    """
    if mode == "none":
        return 0, 0
    if mode == "decode":
        h, w = decode_image(path).shape[:2]
        return h, w
    try:
        with Image.open(path) as img:
            w, h = img.size
            return h, w
    except FileNotFoundError as e:
        raise ImageReadError(f"image file not found: {path}") from e
    except Exception as e:
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def check_images(
    folder: Path, names: Iterable[str], mode: str, skip_bad_images: bool, num_threads: int = 8
) -> tuple:
    """Probes images ``folder / name`` for each name.

    Returns:
      ``(sizes, bad)``: ``sizes`` maps each good name to ``(height, width)``; ``bad`` maps each
      bad name to its error message (only when ``skip_bad_images``).

    Raises:
      ImageReadError: for the first bad image (in ``names`` order) unless ``skip_bad_images``.
      ValueError: unknown ``mode``.
    """
    if mode not in CHECK_MODES:
        raise ValueError(f"check_images must be one of {CHECK_MODES}, got {mode!r}")
    names = list(dict.fromkeys(names))
    sizes: dict = {}
    bad: dict = {}
    if mode == "none":
        return {n: (0, 0) for n in names}, bad

    def probe(name):
        try:
            return name, probe_image(folder / name, mode), None
        except ImageReadError as e:
            return name, None, e

    workers = max(1, min(num_threads, (os.cpu_count() or 1)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(
            progress.progress(
                pool.map(probe, names),
                desc=f"checking images ({mode})",
                total=len(names),
                unit="img",
            )
        )
    for name, size, err in results:
        if err is None:
            sizes[name] = size
        elif skip_bad_images:
            logger.warning("skipping bad image: %s", err)
            bad[name] = str(err)
        else:
            raise err
    return sizes, bad


class FolderImageLoader:
    """Picklable ``load_image(split, name)``: decodes ``folder / name`` to uint8 RGB.

    The split is accepted for interface compatibility; both datasets keep all splits' images in
    one folder.
    """

    def __init__(self, folder: os.PathLike | str):
        self.folder = Path(folder)

    def __call__(self, split: Optional[str], name: str) -> np.ndarray:
        return decode_image(self.folder / name)

    def __repr__(self) -> str:
        return f"FolderImageLoader({str(self.folder)!r})"


def contiguous_pid_map(raw_ids: Iterable[int]) -> dict:
    """Sorted distinct positive raw ids → ``1..L``."""
    uniq = sorted({int(i) for i in raw_ids if int(i) > 0})
    return {raw: k + 1 for k, raw in enumerate(uniq)}
