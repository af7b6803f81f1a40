"""Person search in your own photos and videos (``eval.mode=search``).

    python main.py --config configs/cuhk.py --workdir runs/cuhk --config.eval.mode=search \\
        --config.search.query=me.jpg --config.search.query_box=120,40,310,560 \\
        --config.search.gallery=holiday/ --config.search.output=found/

The query is one person, given as an image and a box ``x1,y1,x2,y2`` in its pixels ('' = the
whole image, e.g. an already cropped person). The gallery is a folder of images and/or videos
(searched recursively) or a single file; videos are decoded with PyAV and sampled at
``search.video_fps`` frames per second. Every person in every gallery frame is detected and embedded
by the model (batched, with a progress line), all detections are ranked by their similarity to the
query (the reference's score: detection-confidence-weighted embedding · query embedding, optionally
re-ranked by CBGM with the query image's other people as context), and the output folder gets:

* ``results.json``: every detection (file, frame, video time stamp, box, detection score,
  similarity, cosine, rank), the top-k, skipped files with the reason, timings;
* ``frames/*.jpg``: gallery frames with their detections labelled by similarity, the best match
  highlighted (the ``search.annotate`` frames with the best matches, or all of them);
* ``overview.png``: the query crop and the top-k matches side by side with their scores;
* ``index.html``: the overview, the top-k table and links to the annotated frames;
* ``gallery_index/``: the embeddings, boxes and scores of every gallery file, with each file's
  size/mtime and the model/config fingerprint. A later query against the same gallery re-uses it
  and only processes new or changed files.

Bad input is reported before any model work: an unreadable query image, a query box that is not
inside the image or has zero area, a missing or empty gallery, a checkpoint whose arrays do not
fit the config (the message names the arrays and, when the workdir has the training config, the
differing fields). Unreadable gallery files are skipped and listed in ``results.json`` and the log.

The package, in the order a search runs (each module's docstring says what it owns):

* ``options.py``: :class:`SearchOptions` (``config.search``), :func:`parse_box` and
  :func:`prepare` (every input check before the model is loaded); ``errors.py``:
  :class:`SearchInputError`;
* ``gallery.py``: listing the gallery, reading images, decoding videos;
* ``index.py``: the gallery index kept between searches (:class:`GalleryIndex`,
  :func:`fingerprint`);
* ``extract.py``: batched, threaded feature extraction of the files the index lacks;
* ``ranking.py``: similarities and CBGM re-ranking over all gallery detections;
* ``render.py``: annotated frames, the overview sheet and ``index.html``;
* ``searcher.py``: :class:`PersonSearcher`, which runs all of it with one loaded model;
* ``cli.py``: :func:`search_from_config`, the ``eval.mode=search`` entry point.

The model is loaded by ``seqnet_jax.model_loading`` (shared with evaluation).
"""

from seqnet_jax.data.pipeline import collate, process_image
from seqnet_jax.model_loading import CheckpointMismatchError, check_variables_fit
from seqnet_jax.search.cli import enable_compilation_cache, search_from_config
from seqnet_jax.search.errors import SearchInputError
from seqnet_jax.search.extract import GalleryExtractor
from seqnet_jax.search.gallery import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    GalleryFile,
    file_kind,
    iter_video_frames,
    list_gallery,
    probe_video,
    read_image,
    read_video_frames,
)
from seqnet_jax.search.index import (
    INDEX_DIRNAME,
    INDEX_VERSION,
    FileRecord,
    GalleryIndex,
    fingerprint,
)
from seqnet_jax.search.options import PreparedQuery, SearchOptions, parse_box, prepare
from seqnet_jax.search.ranking import GalleryTable, gallery_table, rank_detections
from seqnet_jax.search.render import annotate_frame, make_overview, write_html
from seqnet_jax.search.searcher import PersonSearcher

__all__ = [
    "IMAGE_EXTENSIONS",
    "INDEX_DIRNAME",
    "INDEX_VERSION",
    "VIDEO_EXTENSIONS",
    "CheckpointMismatchError",
    "FileRecord",
    "GalleryExtractor",
    "GalleryFile",
    "GalleryIndex",
    "GalleryTable",
    "PersonSearcher",
    "PreparedQuery",
    "SearchInputError",
    "SearchOptions",
    "annotate_frame",
    "check_variables_fit",
    "collate",
    "enable_compilation_cache",
    "file_kind",
    "fingerprint",
    "gallery_table",
    "iter_video_frames",
    "list_gallery",
    "make_overview",
    "parse_box",
    "prepare",
    "probe_video",
    "process_image",
    "rank_detections",
    "read_image",
    "read_video_frames",
    "search_from_config",
    "write_html",
]
