"""Builders of :class:`~seqnet_jax.data.types.SearchProtocol` objects.

Protocol kinds (``SearchProtocol.rule``):

* ``"explicit"`` — per query a list of gallery image indices and the query person's box in each
  (a NaN row where absent); CUHK-SYSU's ``TestG{50..4000}.mat``. Every list entry with a box
  counts as one ground truth (also a duplicated entry, as the reference); a duplicated image is
  searched once, with the box of its first entry.
* ``"all_but_query_frame"`` — PRW: the gallery is every gallery image except the query's own
  frame; the ground truth is the first box with the query pid in each of them.
* ``"other_cameras"`` — PRW multi-view: as above, restricted to frames whose camera differs from
  the query's (``Query.cam_id``).
* ``"full_set"`` — CUHK-SYSU full set: the gallery is every gallery image except the query's own
  image; the ground truth is taken from a base explicit protocol (normally TestG50, which lists
  every image containing the query person), carried in ``gallery_indices`` / ``gt_boxes``.

Rule-based protocols are never expanded into per-query lists by the evaluator;
:func:`to_explicit` does it on request (tests compare both paths).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from seqnet_jax.data import prw
from seqnet_jax.data.types import ImageAnnotation, Query, SearchProtocol

RULES = ("explicit", "all_but_query_frame", "other_cameras", "full_set")


def explicit(
    name: str, gallery_size: int, gallery_indices: Sequence, gt_boxes: Sequence
) -> SearchProtocol:
    """An explicit protocol from per-query lists.

    Args:
      name: protocol name, e.g. ``"TestG100"``.
      gallery_size: nominal gallery size.
      gallery_indices: per query, a sequence of indices into the gallery annotation list.
      gt_boxes: per query, ``(G_i, 4)`` boxes ``x1, y1, x2, y2`` aligned with
        ``gallery_indices[i]``; a NaN row where the query person is absent.

    Returns:
      The protocol, with the lists stored as int64 / float32 numpy arrays.
    """
    if len(gallery_indices) != len(gt_boxes):
        raise ValueError(
            f"{name}: {len(gallery_indices)} gallery index lists but {len(gt_boxes)} GT box lists"
        )
    idx_out, box_out = [], []
    for i, (idx, boxes) in enumerate(zip(gallery_indices, gt_boxes, strict=True)):
        idx = np.asarray(idx, dtype=np.int64).ravel()
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if idx.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"{name}: query {i} has {idx.shape[0]} gallery entries, {boxes.shape[0]} GT boxes"
            )
        idx_out.append(idx)
        box_out.append(boxes)
    return SearchProtocol(
        name=name,
        gallery_size=gallery_size,
        gallery_indices=idx_out,
        gt_boxes=box_out,
        rule="explicit",
    )


def explicit_from_names(
    name: str,
    gallery_size: int,
    gallery: list[ImageAnnotation],
    image_names: Sequence[Sequence[str]],
    gt_boxes: Sequence,
) -> SearchProtocol:
    """An explicit protocol from per-query gallery image *names* (as in ``TestG*.mat``).

    Args:
      name, gallery_size: as :func:`explicit`.
      gallery: gallery annotations (names must be unique).
      image_names: per query, the gallery image names.
      gt_boxes: per query, ``(G_i, 4)`` ``x1, y1, x2, y2`` boxes, NaN rows where absent.
    """
    index = {a.name: i for i, a in enumerate(gallery)}
    indices = []
    for qi, names in enumerate(image_names):
        try:
            indices.append(np.array([index[n] for n in names], dtype=np.int64))
        except KeyError as e:
            raise ValueError(
                f"{name}: query {qi} lists image {e.args[0]!r}, not in the gallery"
            ) from None
    return explicit(name, gallery_size, indices, gt_boxes)


def prw_protocol(
    gallery: list[ImageAnnotation], queries: list[Query], multiview: bool = False
) -> SearchProtocol:
    """PRW's rule-based protocol (§6.3).

    Args:
      gallery: the test frames.
      queries: the queries (their ``pid`` finds the ground truth; ``cam_id`` for multi-view).
      multiview: ``False``: every other test frame is gallery (the reported setting,
        reference ``ignore_cam_id=True``); ``True``: only frames from other cameras.
    """
    if multiview:
        missing = [q.name for q in queries if q.cam_id < 0]
        if missing:
            raise ValueError(f"PRW-multiview needs query camera ids; missing for {missing[:5]}")
        missing = [a.name for a in gallery if a.cam_id < 0]
        if missing:
            raise ValueError(f"PRW-multiview needs gallery camera ids; missing for {missing[:5]}")
    return SearchProtocol(
        name=prw.MULTIVIEW_PROTOCOL if multiview else prw.PROTOCOL,
        gallery_size=-1,
        rule="other_cameras" if multiview else "all_but_query_frame",
    )


def full_set_protocol(
    base: Optional[SearchProtocol] = None, name: str = "TestG-full"
) -> SearchProtocol:
    """CUHK-SYSU's full-set protocol: every other gallery image is searched.

    Args:
      base: an explicit protocol listing every gallery image that contains each query person with
        its box (CUHK-SYSU's TestG50). Its ground truth is used, as the reference intended. With
        ``None`` the ground truth comes from the gallery pids instead
        (rule ``"all_but_query_frame"``), which needs the gallery annotations to carry the query
        pids.
      name: protocol name.
    """
    if base is None:
        return SearchProtocol(name=name, gallery_size=-1, rule="all_but_query_frame")
    if base.rule != "explicit" or base.gallery_indices is None or base.gt_boxes is None:
        raise ValueError(f"full_set_protocol: base protocol {base.name!r} must be explicit")
    return SearchProtocol(
        name=name,
        gallery_size=-1,
        gallery_indices=base.gallery_indices,
        gt_boxes=base.gt_boxes,
        rule="full_set",
    )


def to_explicit(
    protocol: SearchProtocol, gallery: list[ImageAnnotation], queries: list[Query]
) -> SearchProtocol:
    """Expands any protocol into an explicit one with the same results (slow; for tests).

    Only the order of equally similar detections (the tie-break of the ranking) may differ.

    ``count_gt`` semantics are preserved: for ``full_set`` the base entries are kept first (with
    their duplicates), followed by the remaining images without ground truth.
    """
    if protocol.rule == "explicit":
        return protocol
    if protocol.rule not in RULES:
        raise ValueError(f"unknown protocol rule {protocol.rule!r}")
    names = {a.name: i for i, a in enumerate(gallery)}
    nan_box = np.full((4,), np.nan, dtype=np.float32)
    indices, boxes = [], []
    for qi, q in enumerate(queries):
        qimg = names.get(q.name, -1)
        idx, bxs = [], []
        if protocol.rule == "full_set":
            base_idx = np.asarray(protocol.gallery_indices[qi], dtype=np.int64)
            base_box = np.asarray(protocol.gt_boxes[qi], dtype=np.float32).reshape(-1, 4)
            keep = base_idx != qimg
            idx.extend(base_idx[keep].tolist())
            bxs.extend(list(base_box[keep]))
            seen = set(idx)
            for g in range(len(gallery)):
                if g != qimg and g not in seen:
                    idx.append(g)
                    bxs.append(nan_box)
        else:
            for g, anno in enumerate(gallery):
                if g == qimg:
                    continue
                if protocol.rule == "other_cameras" and anno.cam_id == q.cam_id:
                    continue
                hit = np.flatnonzero(np.asarray(anno.pids).ravel() == q.pid)
                idx.append(g)
                bxs.append(
                    np.asarray(anno.boxes, dtype=np.float32)[hit[0]] if hit.size else nan_box
                )
        indices.append(np.asarray(idx, dtype=np.int64))
        boxes.append(np.asarray(bxs, dtype=np.float32).reshape(-1, 4))
    return explicit(protocol.name, protocol.gallery_size, indices, boxes)
