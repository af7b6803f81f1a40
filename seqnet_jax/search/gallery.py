"""The gallery on disk: which files are searched, reading images, decoding video frames.

Owns the image/video file extensions, :func:`list_gallery` (a folder searched recursively, or one
file; hidden files and the output folder left out), :func:`read_image` (EXIF orientation applied,
so boxes refer to the picture as viewers show it) and the PyAV video functions:
:func:`probe_video` (frames to expect), :func:`iter_video_frames` (sampling at ``video_fps``) and
:func:`read_video_frames` (re-decoding given frames for drawing).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from seqnet_jax.search.errors import SearchInputError

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


def read_image(path: str) -> np.ndarray:
    """Decode an image file to ``uint8 (H, W, 3)`` RGB, rotated as its EXIF orientation says
    (so box coordinates refer to the picture as viewers show it)."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB"))


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
