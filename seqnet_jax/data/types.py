"""Plain data types shared by the datasets, the input pipeline, inference and evaluation.

Nothing here imports jax or TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

UNLABELED_PID = -1  # a person box without an identity label (the reference's 5555)
BACKGROUND_PID = 0


@dataclasses.dataclass
class ImageAnnotation:
    """Ground truth of one image, in original image coordinates.

    Attributes:
      name: image file name (unique within the dataset), e.g. ``s1234.jpg``.
      boxes: ``(N, 4)`` float32 ``x1, y1, x2, y2``.
      pids: ``(N,)`` int32; ``1..L`` labeled ids, ``UNLABELED_PID`` for unlabeled people. For test
        splits the ids are the test identities (they only need to be consistent within the split).
      cam_id: camera index (PRW), -1 when unknown.
      height, width: image size in pixels (0 when unknown until decoded).
    """

    name: str
    boxes: np.ndarray
    pids: np.ndarray
    cam_id: int = -1
    height: int = 0
    width: int = 0


@dataclasses.dataclass
class Query:
    """One search query: a person box in an image (original coordinates)."""

    name: str  # image name
    box: np.ndarray  # (4,) float32 x1, y1, x2, y2
    pid: int  # test identity (used to find the ground truth in the gallery)
    cam_id: int = -1


@dataclasses.dataclass
class SearchProtocol:
    """Which gallery images each query is searched in, and where its person is.

    ``gallery_indices[i]`` lists indices into the gallery annotation list searched for query ``i``;
    ``gt_boxes[i]`` (same length, ``(G_i, 4)`` float32) holds the query person's box in each of
    those images, or a row of NaN where the person is absent. Either may be ``None`` for a
    rule-based protocol (``rule`` = ``"all_but_query_frame"`` or ``"other_cameras"``, as PRW), in
    which case the evaluator derives gallery and ground truth from the gallery annotations and
    query pids.
    Rule ``"full_set"`` (CUHK-SYSU full set, see ``seqnet_jax.evaluation.protocols``) searches every
    gallery image except the query's own and takes the ground truth from the lists, which then hold
    a base explicit protocol (TestG50).
    """

    name: str  # e.g. "TestG100", "PRW", "PRW-multiview"
    gallery_size: int  # nominal gallery size (-1 = whole test set)
    gallery_indices: Optional[list] = None
    gt_boxes: Optional[list] = None
    rule: str = "explicit"


# The reference's CBGM parameters when a dataset does not set its own (``eval_search_cuhk``'s
# defaults; ``eval_search_prw`` uses 30 / 4).
DEFAULT_CBGM_K1 = 10
DEFAULT_CBGM_K2 = 3


@dataclasses.dataclass
class PersonSearchDataset:
    """A dataset split into train images, gallery images and queries, with protocols.

    A dataset reader returns one of these. Besides the splits it carries what evaluating it
    needs: its ``protocols`` (the reader module also names them as constants, e.g.
    ``seqnet_jax.data.prw.PROTOCOL``) and the CBGM parameters its numbers are reported with
    (``cbgm_k1`` top gallery detections whose images are re-ranked, ``cbgm_k2`` query-side
    context people; CUHK-SYSU 10 / 3, PRW 30 / 4), which ``evaluate_all`` uses unless told
    otherwise.
    """

    name: str
    train: list  # list[ImageAnnotation]
    gallery: list  # list[ImageAnnotation]
    queries: list  # list[Query]
    protocols: list  # list[SearchProtocol]
    num_train_pids: int  # L: labeled identities in train, ids 1..L
    load_image: object = None  # callable(split: str, name: str) -> uint8 (H, W, 3) array
    # What the reader dropped / skipped / mapped (counts, raw→contiguous id list, ...): JSON-able.
    stats: dict = dataclasses.field(default_factory=dict)
    cbgm_k1: int = DEFAULT_CBGM_K1  # CBGM: top-k1 gallery detections re-ranked (§6.4)
    cbgm_k2: int = DEFAULT_CBGM_K2  # CBGM: query-image context detections (§6.4)

    @property
    def protocol_names(self) -> list:
        """The names of ``protocols``, in order (e.g. ``["PRW", "PRW-multiview"]``)."""
        return [p.name for p in self.protocols]
