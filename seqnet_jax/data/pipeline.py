"""Input pipeline: decode, flip, resize, scale boxes, pad into size buckets, batch (numpy only).

A batch is a dict of numpy arrays with static shapes (``B`` images, canvas ``Hb × Wb`` from a
fixed bucket list, ``G = max_boxes`` box rows per image):

=============== ======================= ===========================================================
key             shape / dtype           meaning
=============== ======================= ===========================================================
``images``      ``(B, Hb, Wb, 3)`` f32  resized RGB in the 0..255 scale, zero padded bottom/right
                                        (the model normalises on device and re-zeroes the padding
                                        from ``image_sizes``)
``image_sizes`` ``(B, 2)`` int32        ``(h, w)`` of the resized, unpadded image
``orig_sizes``  ``(B, 2)`` int32        ``(H, W)`` of the decoded image
``scales``      ``(B, 2)`` float32      ``(sy, sx) = (h / H, w / W)``
``boxes``       ``(B, G, 4)`` float32   ``x1, y1, x2, y2`` in resized (and flipped) coordinates;
                                        zeros in padded rows
``pids``        ``(B, G)`` int32        person ids (0 in padded rows)
``box_valid``   ``(B, G)`` bool         real, non-degenerate box rows
``index``       ``(B,)`` int32          index into the loader's input list; -1 for filler images
``image_valid`` ``(B,)`` bool           False for filler images (a short last batch)
``rows``        ``(B,)`` int32          training batches only: each row's position in the global
                                        batch (``TrainLoader`` with several processes)
``load_failed`` ``(B,)`` bool           evaluation batches only: the image could not be decoded
                                        (``skip_bad_images``); the row is a filler (``image_valid``
                                        False) that keeps the image's ``index``
=============== ======================= ===========================================================

Filler images repeat the last real image of the batch (so every image has a sane size) with
``image_valid = False``, ``index = -1`` and no valid boxes.

An image that fails to decode while loading (a truncated JPEG passes the start-up header check)
raises naming the file, unless the loader was built with ``skip_bad_images=True``: then it is
logged once naming the file and counted in ``bad_images``; a training batch repeats the nearest
good image of the same batch (the one before it, else the one after) in its row, an evaluation
batch holds a filler row with ``load_failed`` True (the caller drops the image).

With several processes (``TrainLoader(process_index=, process_count=)``) ``B`` is the process's
share of the global batch: its rows ``rows`` of it, padded into the bucket the whole global batch
needs (chosen from the annotated image sizes of every row).

Loading runs in a thread pool (JPEG decoding and the numpy resize release the GIL); batches are
assembled in order by one background thread and a few batches are prefetched.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import logging
import math
import threading
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from seqnet_jax.data import transforms
from seqnet_jax.data.types import ImageAnnotation

logger = logging.getLogger(__name__)

Batch = dict  # dict[str, np.ndarray], see the module docstring
LoadImageFn = Callable[[str], np.ndarray]

_SHUFFLE_TAG = 0x5EB1  # distinct entropy words keep the shuffle and flip streams independent
_FLIP_TAG = 0xF11B


def valid_box_mask(boxes: np.ndarray, height: int = 0, width: int = 0) -> np.ndarray:
    """Rows of ``(N, 4)`` ``x1, y1, x2, y2`` boxes that are usable ground truth.

    A box is dropped when it is not finite, has ``w <= 0`` or ``h <= 0``, or (when the image size
    ``height × width`` is known, i.e. > 0) lies entirely outside the image. Boxes that only
    partly leave the image are kept unclipped, as the reference does. Returns ``(N,)`` bool.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    ok = np.isfinite(boxes).all(axis=1) & (x2 > x1) & (y2 > y1)
    if height > 0 and width > 0:
        ok &= (x2 > 0) & (y2 > 0) & (x1 < width) & (y1 < height)
    return ok


def process_image(
    image: np.ndarray,
    boxes: Optional[np.ndarray] = None,
    pids: Optional[np.ndarray] = None,
    *,
    min_size: int = 900,
    max_size: int = 1500,
    flip: bool = False,
    out: Optional[np.ndarray] = None,
) -> dict:
    """Flip (optional, original coordinates), resize by the reference rule and scale boxes.

    Args:
      image: ``(H, W, 3)`` uint8 (or float) RGB.
      boxes: ``(N, 4)`` ``x1, y1, x2, y2`` in original coordinates, or None.
      pids: ``(N,)`` person ids, or None (zeros).
      min_size, max_size: the resize rule (``transforms.resize_scale``).
      flip: mirror horizontally before resizing (``x1' = W - x2``, ``x2' = W - x1``).
      out: optional ``(Hc, Wc, 3)`` float32 canvas slot; when the resized image fits, it is
        written into ``out[:h, :w]`` (no copy later) and ``image`` is that view.

    Returns:
      dict with ``image`` ``(h, w, 3)`` float32 (0..255 scale for uint8 input), ``image_size``
      ``(h, w)``, ``orig_size`` ``(H, W)``, ``scale`` ``(sy, sx)`` float32, ``boxes`` ``(N, 4)``
      float32 in resized coordinates, ``pids`` ``(N,)`` int32, ``box_valid`` ``(N,)`` bool
      (:func:`valid_box_mask` in the resized image).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    big_h, big_w = image.shape[:2]
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32)
    boxes = boxes.reshape(-1, 4)
    pids = np.zeros(len(boxes), np.int32) if pids is None else np.asarray(pids, np.int32)
    if pids.shape != (len(boxes),):
        raise ValueError(f"pids shape {pids.shape} does not match {len(boxes)} boxes")
    if flip:
        image, boxes = transforms.hflip(image, boxes)
    s = transforms.resize_scale(big_h, big_w, min_size, max_size)
    h, w = transforms.resized_size(big_h, big_w, s)
    if out is not None and out.shape[0] >= h and out.shape[1] >= w:
        resized = transforms.resize_image(image, h, w, out=out[:h, :w])
    else:
        resized = transforms.resize_image(image, h, w)
    scale = (h / big_h, w / big_w)  # integer size ratios, as torchvision 0.4 resize_boxes
    boxes = transforms.scale_boxes(boxes, scale)
    return {
        "image": resized,
        "image_size": np.array([h, w], np.int32),
        "orig_size": np.array([big_h, big_w], np.int32),
        "scale": np.array(scale, np.float32),
        "boxes": boxes,
        "pids": pids,
        "box_valid": valid_box_mask(boxes, h, w),
    }


def _is_view_into(a: np.ndarray, slot: np.ndarray) -> bool:
    """Whether ``a`` is ``slot[:h, :w]`` (same start address and strides)."""
    return (
        a.ndim == slot.ndim
        and a.strides == slot.strides
        and a.__array_interface__["data"][0] == slot.__array_interface__["data"][0]
        and all(x <= y for x, y in zip(a.shape, slot.shape, strict=True))
    )


def _too_many_boxes(name: str, n: int, max_boxes: int) -> ValueError:
    return ValueError(
        f"image {name!r} has {n} boxes but max_boxes is {max_boxes}; raise data.max_boxes "
        f"(the padded number of ground-truth boxes per image) to at least {n}"
    )


def collate(
    examples: Sequence[dict],
    *,
    batch_size: int,
    buckets: Sequence[tuple[int, int]],
    max_boxes: int,
    indices: Optional[Sequence[int]] = None,
    compact_boxes: bool = True,
    names: Optional[Sequence[str]] = None,
    canvas: Optional[np.ndarray] = None,
    bucket_sizes: Sequence[tuple[int, int]] = (),
) -> Batch:
    """Pad :func:`process_image` outputs into one static-shape batch (see the module docstring).

    Args:
      examples: 1..batch_size processed images; missing images are filled with copies of the last
        one (``image_valid = False``, ``index = -1``, no valid boxes).
      batch_size: ``B``.
      buckets: canvas sizes ``(Hb, Wb)``; the smallest one holding every image is used.
      max_boxes: ``G``, the number of box rows per image.
      indices: dataset index of each example (default ``0..len-1``).
      compact_boxes: True keeps only valid boxes, packed to the front (training); False keeps
        every input row in place with ``box_valid`` marking usable ones (evaluation / queries,
        so that rows map back to annotation rows).
      names: image names, for error messages.
      canvas: optional zero-initialised ``(batch_size, Hb, Wb, 3)`` float32 array into which the
        examples were resized (``process_image(out=canvas[i])``); used as ``images`` without
        copying when it has the chosen bucket's shape and holds every example.
      bucket_sizes: further ``(h, w)`` sizes the bucket must hold (the other processes' images
        of a global batch).
    """
    n = len(examples)
    if not 1 <= n <= batch_size:
        raise ValueError(f"collate got {n} examples for batch_size {batch_size}")
    names = list(names) if names is not None else [f"#{i}" for i in range(n)]
    indices = list(indices) if indices is not None else list(range(n))
    sizes = [tuple(int(v) for v in ex["image_size"]) for ex in examples]
    hb, wb = transforms.choose_bucket(sizes + [tuple(s) for s in bucket_sizes], buckets)
    in_place = (
        canvas is not None
        and canvas.shape == (batch_size, hb, wb, 3)
        and canvas.dtype == np.float32
        and all(_is_view_into(ex["image"], canvas[i]) for i, ex in enumerate(examples))
    )
    batch = {
        "images": canvas if in_place else np.zeros((batch_size, hb, wb, 3), np.float32),
        "image_sizes": np.zeros((batch_size, 2), np.int32),
        "orig_sizes": np.zeros((batch_size, 2), np.int32),
        "scales": np.zeros((batch_size, 2), np.float32),
        "boxes": np.zeros((batch_size, max_boxes, 4), np.float32),
        "pids": np.zeros((batch_size, max_boxes), np.int32),
        "box_valid": np.zeros((batch_size, max_boxes), bool),
        "index": np.full((batch_size,), -1, np.int32),
        "image_valid": np.zeros((batch_size,), bool),
    }
    for i in range(batch_size):
        ex = examples[min(i, n - 1)]
        h, w = (int(v) for v in ex["image_size"])
        if not in_place or i >= n:
            batch["images"][i, :h, :w] = ex["image"]
        batch["image_sizes"][i] = ex["image_size"]
        batch["orig_sizes"][i] = ex["orig_size"]
        batch["scales"][i] = ex["scale"]
        if i >= n:
            continue  # filler: no boxes, index -1, image_valid False
        batch["index"][i] = indices[i]
        batch["image_valid"][i] = True
        boxes, pids, valid = ex["boxes"], ex["pids"], ex["box_valid"]
        if compact_boxes:
            boxes, pids, valid = boxes[valid], pids[valid], valid[valid]
        if len(boxes) > max_boxes:
            raise _too_many_boxes(names[i], len(boxes), max_boxes)
        k = len(boxes)
        batch["boxes"][i, :k] = np.where(valid[:, None], boxes, 0.0)
        batch["pids"][i, :k] = np.where(valid, pids, 0)
        batch["box_valid"][i, :k] = valid
    return batch


class _BatchJobs(list):
    """The image jobs of one batch (this process's rows) and the annotated sizes of the global
    batch's other rows, which the padding bucket must hold too."""

    def __init__(self, jobs, bucket_sizes=(), first_row: int = 0):
        super().__init__(jobs)
        self.bucket_sizes = list(bucket_sizes)
        self.first_row = int(first_row)


class _ImageJob:
    """Loads and processes one image (runs on a worker thread)."""

    def __init__(self, owner: "_LoaderBase", index: int, name: str, ann, flip: bool):
        self.owner, self.index, self.name, self.ann, self.flip = owner, index, name, ann, flip

    def __call__(self, slot: Optional[np.ndarray] = None) -> dict:
        owner = self.owner
        try:
            image = owner.load_image(self.name)
        except Exception as e:  # noqa: BLE001 - re-raised with the image name
            if owner.skip_bad_images:
                owner._count_bad_image(self.name, e)
                return None  # the batch is assembled without it (see the module docstring)
            raise RuntimeError(f"could not load image {self.name!r}: {e}") from e
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"load_image({self.name!r}) returned shape {image.shape}, expected (H, W, 3)"
            )
        boxes = pids = None
        if self.ann is not None:
            boxes, pids = self.ann.boxes, self.ann.pids
        ex = process_image(
            image,
            boxes,
            pids,
            min_size=owner.min_size,
            max_size=owner.max_size,
            flip=self.flip,
            out=slot,
        )
        dropped = int(len(ex["box_valid"]) - ex["box_valid"].sum())
        if dropped:
            owner._count_dropped(self.name, dropped)
        return ex


class _LoaderBase:
    """Thread-pool loading and in-order batch assembly shared by the train and eval loaders."""

    def __init__(
        self,
        load_image: LoadImageFn,
        batch_size: int,
        min_size: int,
        max_size: int,
        buckets: Optional[Sequence[tuple[int, int]]],
        max_boxes: int,
        num_workers: int,
        prefetch: Optional[int],
        compact_boxes: bool,
        skip_bad_images: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
        self.load_image = load_image
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size  # rows this process loads of each batch
        self.min_size, self.max_size = int(min_size), int(max_size)
        self.buckets = transforms.check_buckets(
            buckets or transforms.default_buckets(self.min_size, self.max_size)
        )
        self.max_boxes = int(max_boxes)
        self.num_workers = max(1, int(num_workers))
        # Enough queued images to keep every worker busy while a batch is consumed.
        self.prefetch = (
            int(prefetch)
            if prefetch is not None
            else max(2, math.ceil(2 * self.num_workers / self.batch_size))
        )
        self.compact_boxes = compact_boxes
        self.skip_bad_images = bool(skip_bad_images)
        self._lock = threading.Lock()
        self.num_dropped_boxes = 0
        self.bad_images: dict = {}  # name -> error, images that failed to decode (skipped)

    def _count_bad_image(self, name: str, error: Exception) -> None:
        with self._lock:
            first = name not in self.bad_images
            self.bad_images[name] = f"{type(error).__name__}: {error}"
        if first:
            logger.warning(
                "could not load image %r (%s): skipped (data.skip_bad_images)", name, error
            )

    def _count_dropped(self, name: str, n: int) -> None:
        with self._lock:
            first = self.num_dropped_boxes == 0
            self.num_dropped_boxes += n
        if first:
            logger.warning(
                "dropped %d degenerate box(es) (w or h <= 0, or outside the image) in %r; "
                "further drops are only counted (num_dropped_boxes)",
                n,
                name,
            )

    def _check_box_count(self, name: str, ann: Optional[ImageAnnotation]) -> None:
        if ann is None:
            return
        boxes = np.asarray(ann.boxes, np.float32).reshape(-1, 4)
        if self.compact_boxes:
            n = int(valid_box_mask(boxes, ann.height, ann.width).sum())
        else:
            n = len(boxes)
        if n > self.max_boxes:
            raise _too_many_boxes(name, n, self.max_boxes)

    def _annotated_size(self, ann) -> Optional[tuple[int, int]]:
        """The resized ``(h, w)`` of an image from its annotation, None if the size is unknown."""
        if ann is None or ann.height <= 0 or ann.width <= 0:
            return None
        s = transforms.resize_scale(ann.height, ann.width, self.min_size, self.max_size)
        return transforms.resized_size(ann.height, ann.width, s)

    def _plan_canvas(self, jobs: list[_ImageJob]) -> Optional[np.ndarray]:
        """A zeroed canvas for the batch when every annotation knows its image size, else None.

        Workers then resize straight into it and the batch needs no copy; ``collate`` checks the
        decoded sizes and falls back to copying if an annotated size was wrong.
        """
        sizes = []
        for job in jobs:
            size = self._annotated_size(job.ann)
            if size is None:
                return None
            sizes.append(size)
        try:
            hb, wb = transforms.choose_bucket(
                sizes + list(getattr(jobs, "bucket_sizes", ())), self.buckets
            )
        except ValueError:
            return None  # collate raises with the decoded sizes
        return np.zeros((self.local_batch_size, hb, wb, 3), np.float32)

    def _fill_failed(self, examples: list, jobs: list) -> tuple[list, list, list]:
        """``(examples, indices, failed)`` with every image that failed to decode (``None``,
        ``skip_bad_images``) replaced: by default by the nearest good image of the batch (the
        one before it, else the one after; its index too). ``failed``: the rows replaced."""
        indices = [j.index for j in jobs]
        failed = [i for i, ex in enumerate(examples) if ex is None]
        if not failed:
            return examples, indices, failed
        examples, indices = list(examples), list(indices)
        good = [i for i, ex in enumerate(examples) if ex is not None]
        if not good:
            examples[0] = self._stand_in(jobs)
            good = [0]
        for i in failed:
            before = [g for g in good if g < i]
            src = before[-1] if before else good[0]
            examples[i], indices[i] = examples[src], indices[src]
        return examples, indices, failed

    def _assemble(self, jobs: list[_ImageJob], futures: list, canvas) -> Batch:
        examples, indices, failed = self._fill_failed([f.result() for f in futures], jobs)
        batch = collate(
            examples,
            batch_size=self.local_batch_size,
            buckets=self.buckets,
            max_boxes=self.max_boxes,
            indices=indices,
            compact_boxes=self.compact_boxes,
            names=[j.name for j in jobs],
            canvas=canvas,
            bucket_sizes=getattr(jobs, "bucket_sizes", ()),
        )
        self._mark_failed(batch, jobs, failed)
        if isinstance(jobs, _BatchJobs):
            batch["rows"] = np.arange(
                jobs.first_row, jobs.first_row + self.local_batch_size, dtype=np.int32
            )
        return batch

    def _stand_in(self, jobs: list) -> dict:
        """The example in the place of a batch none of whose images could be decoded."""
        raise RuntimeError(
            "could not load any image of a batch: "
            + ", ".join(f"{j.name!r} ({self.bad_images.get(j.name)})" for j in jobs)
        )

    def _mark_failed(self, batch: Batch, jobs: list, failed: list) -> None:
        """Training: nothing (a failed row repeats another image of the batch)."""

    def _run(self, batches: Iterator[list[_ImageJob]]) -> Iterator[Batch]:
        """Yields assembled batches in order; images of ``prefetch`` batches are in flight."""
        pool = concurrent.futures.ThreadPoolExecutor(
            self.num_workers, thread_name_prefix="seqnet-data"
        )
        assembler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="seqnet-collate")
        pending: collections.deque = collections.deque()

        def submit(jobs: list[_ImageJob]) -> concurrent.futures.Future:
            canvas = self._plan_canvas(jobs)
            slots = [None if canvas is None else canvas[i] for i in range(len(jobs))]
            futures = [pool.submit(job, slot) for job, slot in zip(jobs, slots, strict=True)]
            return assembler.submit(self._assemble, jobs, futures, canvas)

        try:
            for jobs in itertools.islice(batches, self.prefetch):
                pending.append(submit(jobs))
            while pending:
                batch = pending.popleft().result()
                nxt = next(batches, None)
                if nxt is not None:
                    pending.append(submit(nxt))
                yield batch
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            assembler.shutdown(wait=False, cancel_futures=True)


class TrainLoader(_LoaderBase):
    """Shuffled, flipped, bucketed training batches with a checkpointable position.

    Epoch ``e`` visits the kept images in the order ``default_rng([seed, tag, e]).permutation``;
    batch ``b`` holds positions ``b*B .. b*B+B-1`` of that order, and the image at position ``p``
    is flipped iff ``default_rng([seed, tag, e, p]).random() < flip_prob``. Everything depends on
    ``(seed, epoch, position)`` only, so a run restored with :meth:`load_state_dict` produces the
    very batches the interrupted run would have produced.

    Images without any valid box are skipped (counted in ``num_skipped_images``, logged once);
    degenerate boxes are dropped and counted in ``num_dropped_boxes``. ``index`` in a batch is the
    position in the ``annotations`` list given here.

    Iterating yields the remaining batches of the current epoch and then advances the state to the
    next epoch, so ``for epoch in ...: for batch in loader: ...`` walks through the epochs.
    ``state_dict()`` taken after consuming a batch points at the next one. Use one iterator at a
    time. Which images are skipped is decided up front from the annotations (using
    ``height``/``width`` when known), so the epoch length is fixed; an image whose boxes only turn
    out unusable after decoding stays in its batch with no valid box.

    ``group_by_aspect_ratio=True`` (not the reference's behaviour, which batches in plain shuffled
    order) batches portrait images (``height > width`` per the annotation) with portrait ones and
    landscape with landscape, so a batch is padded to a landscape or a portrait bucket instead of
    the square one a mixed batch needs: the epoch order is the shuffled order split into the two
    groups, cut into batches, with the batches shuffled again; the left-over images of both groups
    share the last batches. Images of unknown size count as landscape.

    Several processes (``process_count > 1``): ``batch_size`` is the global batch. Every process
    computes the same epoch order and flips; process ``p`` loads rows ``p*b .. p*b+b-1`` of each
    batch (``b = batch_size / process_count``; ``rows`` in the batch), padded into the bucket the
    global batch needs when the annotations know every image's size. The state is the global
    position, so a run can resume on another number of processes.
    """

    def __init__(
        self,
        annotations: Sequence[ImageAnnotation],
        load_image: LoadImageFn,
        batch_size: int = 5,
        min_size: int = 900,
        max_size: int = 1500,
        buckets: Optional[Sequence[tuple[int, int]]] = None,
        max_boxes: int = 64,
        seed: int = 0,
        flip_prob: float = 0.5,
        num_workers: int = 2,
        drop_last: bool = True,
        prefetch: Optional[int] = None,
        group_by_aspect_ratio: bool = False,
        process_index: int = 0,
        process_count: int = 1,
        skip_bad_images: bool = False,
    ):
        super().__init__(
            load_image,
            batch_size,
            min_size,
            max_size,
            buckets,
            max_boxes,
            num_workers,
            prefetch,
            compact_boxes=True,
            skip_bad_images=skip_bad_images,
        )
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} out of range 0..{process_count - 1}")
        if self.batch_size % process_count:
            raise ValueError(
                f"the global batch of {self.batch_size} images (data.batch_size) does not divide "
                f"over {process_count} processes"
            )
        if process_count > 1 and not drop_last:
            raise ValueError("several processes need drop_last=True (full global batches)")
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.local_batch_size = self.batch_size // self.process_count
        self.seed = int(seed)
        self.flip_prob = float(flip_prob)
        self.drop_last = bool(drop_last)
        self.group_by_aspect_ratio = bool(group_by_aspect_ratio)
        self._annotations = list(annotations)
        self._portrait = np.asarray(
            [(a.height or 0) > (a.width or 0) for a in self._annotations], bool
        )
        kept = []
        for i, ann in enumerate(self._annotations):
            boxes = np.asarray(ann.boxes, np.float32).reshape(-1, 4)
            if valid_box_mask(boxes, ann.height, ann.width).any():
                kept.append(i)
                self._check_box_count(ann.name, ann)
        self._kept = np.asarray(kept, np.int64)
        self.num_skipped_images = len(self._annotations) - len(kept)
        if self.num_skipped_images:
            logger.warning(
                "TrainLoader: skipped %d of %d images without any valid box",
                self.num_skipped_images,
                len(self._annotations),
            )
        if self.num_batches_per_epoch == 0:
            raise ValueError(
                f"TrainLoader: {len(kept)} usable images make no batch of {self.batch_size}"
                + (" with drop_last=True" if self.drop_last else "")
            )
        self._epoch = 0
        self._position = 0

    @property
    def num_images(self) -> int:
        """Number of images used (after skipping images without boxes)."""
        return len(self._kept)

    @property
    def num_batches_per_epoch(self) -> int:
        n, b = len(self._kept), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def __len__(self) -> int:
        return self.num_batches_per_epoch

    @property
    def epoch(self) -> int:
        """The epoch the next batch belongs to."""
        return self._epoch

    def state_dict(self) -> dict:
        """``{'epoch', 'position'}``: the next batch is batch ``position`` of epoch ``epoch``."""
        return {"epoch": int(self._epoch), "position": int(self._position)}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict` output; call before iterating."""
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.num_batches_per_epoch:
            raise ValueError(
                f"invalid loader state {state} for {self.num_batches_per_epoch} batches per epoch"
            )
        if position == self.num_batches_per_epoch:
            epoch, position = epoch + 1, 0
        self._epoch, self._position = epoch, position

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Indices into ``annotations`` in the visiting order of ``epoch``: ``(num_images,)``."""
        rng = np.random.default_rng([self.seed, _SHUFFLE_TAG, int(epoch)])
        order = self._kept[rng.permutation(len(self._kept))]
        if not self.group_by_aspect_ratio:
            return order
        b = self.batch_size
        full, rest = [], []
        for group in (order[~self._portrait[order]], order[self._portrait[order]]):
            n = len(group) // b * b
            full += [group[i : i + b] for i in range(0, n, b)]
            rest.append(group[n:])
        rest = np.concatenate(rest)
        n = len(rest) // b * b
        full += [rest[i : i + b] for i in range(0, n, b)]
        batches = [full[i] for i in rng.permutation(len(full))]
        return np.concatenate(batches + [rest[n:]])

    def flip_decision(self, epoch: int, position: int) -> bool:
        """Whether the image at ``position`` of ``epoch``'s order is mirrored."""
        if self.flip_prob <= 0.0:
            return False
        rng = np.random.default_rng([self.seed, _FLIP_TAG, int(epoch), int(position)])
        return bool(rng.random() < self.flip_prob)

    def _jobs(self, epoch: int, order: np.ndarray, b: int) -> _BatchJobs:
        start = b * self.batch_size
        positions = range(start, min(start + self.batch_size, len(order)))
        first = self.process_index * self.local_batch_size
        mine = positions[first : first + self.local_batch_size]
        jobs = []
        for p in mine:
            ann = self._annotations[int(order[p])]
            jobs.append(_ImageJob(self, int(order[p]), ann.name, ann, self.flip_decision(epoch, p)))
        others = []
        if self.process_count > 1:  # the bucket must hold the other processes' rows too
            others = [
                self._annotated_size(self._annotations[int(order[p])])
                for p in positions
                if p not in mine
            ]
            if any(size is None for size in others):
                others = []  # unknown sizes: the Trainer agrees on the bucket after decoding
        return _BatchJobs(jobs, others, first_row=first)

    def __iter__(self) -> Iterator[Batch]:
        epoch, start = self._epoch, self._position
        order = self.epoch_order(epoch)
        nb = self.num_batches_per_epoch
        jobs = (self._jobs(epoch, order, b) for b in range(start, nb))
        with contextlib.closing(self._run(jobs)) as batches:
            for b, batch in enumerate(batches, start):
                # Advance before handing the batch out: a checkpoint taken now resumes after it.
                if b + 1 == nb:
                    self._epoch, self._position = epoch + 1, 0
                else:
                    self._epoch, self._position = epoch, b + 1
                yield batch


class EvalLoader(_LoaderBase):
    """Deterministic, unflipped batches of ``items`` for inference and evaluation.

    ``items`` is a list of ``(name, ImageAnnotation or None)``; the annotation's boxes (e.g. ground
    truth, or a query box) are resized with the image and keep their row order (``box_valid``
    False for degenerate rows). The last batch is filled up with filler images
    (``image_valid`` False, ``index`` -1). ``index`` is the position in ``items``.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, Optional[ImageAnnotation]]],
        load_image: LoadImageFn,
        batch_size: int = 1,
        min_size: int = 900,
        max_size: int = 1500,
        buckets: Optional[Sequence[tuple[int, int]]] = None,
        max_boxes: int = 64,
        num_workers: int = 2,
        prefetch: Optional[int] = None,
        skip_bad_images: bool = False,
    ):
        super().__init__(
            load_image,
            batch_size,
            min_size,
            max_size,
            buckets,
            max_boxes,
            num_workers,
            prefetch,
            compact_boxes=False,
            skip_bad_images=skip_bad_images,
        )
        self.items = [(str(name), ann) for name, ann in items]
        for name, ann in self.items:
            self._check_box_count(name, ann)

    def _stand_in(self, jobs: list) -> dict:
        """A black image of the first image's annotated size (else ``min_size`` square): the
        batch's rows are all fillers then."""
        ann = jobs[0].ann
        known = ann is not None and ann.height > 0 and ann.width > 0
        h, w = (ann.height, ann.width) if known else (self.min_size, self.min_size)
        return process_image(
            np.zeros((h, w, 3), np.uint8), min_size=self.min_size, max_size=self.max_size
        )

    def _mark_failed(self, batch: Batch, jobs: list, failed: list) -> None:
        """A row whose image failed to decode is a filler that keeps its ``index``, with
        ``load_failed`` True."""
        batch["load_failed"] = np.zeros((self.local_batch_size,), bool)
        for i in failed:
            batch["index"][i] = jobs[i].index
            batch["image_valid"][i] = False
            batch["load_failed"][i] = True
            batch["boxes"][i] = 0.0
            batch["pids"][i] = 0
            batch["box_valid"][i] = False

    @property
    def num_batches(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        def jobs() -> Iterator[list[_ImageJob]]:
            for start in range(0, len(self.items), self.batch_size):
                chunk = range(start, min(start + self.batch_size, len(self.items)))
                yield [_ImageJob(self, i, *self.items[i], flip=False) for i in chunk]

        yield from self._run(jobs())
