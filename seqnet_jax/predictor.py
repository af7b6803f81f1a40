"""Use a trained SeqNet from Python or the shell: people in an image, and a query's embedding.

For people who bring a checkpoint — a released reference ``.pth`` (reading it needs PyTorch), its
``.npz`` conversion, or a workdir of ours — and want detections and embeddings without a dataset
or a workdir of their own::

    from seqnet_jax.predictor import Predictor

    p = Predictor.from_checkpoint("exp_cuhk/epoch_19.pth")     # or a .npz, or runs/cuhk
    people = p.detect("gallery.jpg")          # boxes (N, 4), scores (N,), embeddings (N, D)
    query = p.query("query.jpg", box=(120, 40, 310, 560))
    sims = p.similarity(query, people)        # the reference's: score x cosine

    python -m seqnet_jax.predictor detect --checkpoint exp_cuhk/epoch_19.pth --image gallery.jpg
    python -m seqnet_jax.predictor query --checkpoint exp_cuhk/epoch_19.pth --image query.jpg \\
        --box 120,40,310,560 --gallery gallery.jpg

**One coordinate convention** for inputs and outputs: boxes are ``x1, y1, x2, y2`` in the pixels
of the image as given (for a file: as viewers show it, EXIF rotation applied), floats, ``x2 > x1``.

Each image is processed as the reference's evaluation does (§2.9, §2.10): resized by the config's
``data.min_size`` / ``data.max_size`` rule, a batch of one (so the reference's padded canvas is the
image's own, see ``ops/canvas.py``), first-stage (FCS) scores, embeddings pooled from the
first-stage boxes, output boxes refined by the second stage. ``People.embeddings`` are unit
vectors; ``People.features`` are the reference's gallery features (CWS: embedding × score), so
``people.features @ query.embedding`` is its similarity.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import List, Optional, Sequence, Union

import numpy as np

ImageLike = Union[str, os.PathLike, np.ndarray]


@dataclasses.dataclass
class People:
    """The people detected in one image (original pixels)."""

    boxes: np.ndarray  # (N, 4) float32 x1, y1, x2, y2
    scores: np.ndarray  # (N,) float32 detection (first-stage) scores
    embeddings: np.ndarray  # (N, D) float32 unit re-id embeddings

    @property
    def features(self) -> np.ndarray:
        """The reference's gallery features: embeddings scaled by the scores (CWS)."""
        return self.embeddings * self.scores[:, None]

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def to_json(self) -> list:
        return [
            {"box": [round(float(v), 2) for v in b], "score": float(s)}
            for b, s in zip(self.boxes, self.scores, strict=True)
        ]


@dataclasses.dataclass
class Query:
    """A query person: the embedding of its box, and the query image as a gallery (§2.10).

    ``context`` holds the query box first (score 1) and then the other people the model finds in
    the query image (NMS 0.5 against each other and the query box), with unit embeddings (no CWS):
    CBGM's query-side context.
    """

    box: np.ndarray  # (4,) the given box, original pixels
    embedding: np.ndarray  # (D,) float32 unit
    context: People


class Predictor:
    """Detection and re-identification with one model. Build it with :meth:`from_checkpoint`.

    Args:
      model: a ``SeqNet``; variables: ``{'params', 'batch_stats'}``; config: the full config
        (``data.min_size/max_size/buckets``, ``model.*``).
    """

    def __init__(self, model, variables, config):
        from seqnet_jax.data import transforms
        from seqnet_jax.inference import SeqNetInference

        self.model = model
        self.config = config
        d = config.data
        self.min_size, self.max_size = int(d.min_size), int(d.max_size)
        self.buckets = transforms.check_buckets(
            [tuple(b) for b in d.buckets]
            if len(d.buckets)
            else transforms.default_buckets(self.min_size, self.max_size)
        )
        self.inference = SeqNetInference(model, variables, config.model)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Union[str, os.PathLike],
        config=None,
        step: Optional[int] = None,
    ) -> "Predictor":
        """A predictor from a reference ``.pth`` / ``.npz`` file, or from a workdir of ours
        (its orbax checkpoint ``step``, default the latest).

        ``config``: a ``ConfigDict`` as ``configs/*.py`` give; default: the workdir's
        ``config.json`` for a workdir, else ``configs/default.py`` (the reference's resize
        900/1500 and model). The checkpoint must fit it (an error names what differs).
        """
        from seqnet_jax import model_loading

        path = os.fspath(checkpoint)
        if os.path.isdir(path):
            config = config if config is not None else _workdir_config(path)
            loaded = model_loading.load_orbax_checkpoint(config, path, step)
        elif os.path.isfile(path):
            config = config if config is not None else _default_config()
            loaded = model_loading.load_reference_checkpoint_model(config, path)
        else:
            raise FileNotFoundError(
                f"checkpoint {path} is neither a file (.pth / .npz) nor a workdir folder"
            )
        return cls(loaded.model, loaded.variables, config)

    # -- the two calls ---------------------------------------------------------------------------
    def detect(self, image: ImageLike) -> People:
        """Everyone the model finds in ``image`` (a file path or an ``(H, W, 3)`` RGB array)."""
        batch, _ = self._batch(_as_image(image))
        (det,) = self.inference.detect(batch, cws=False)
        return People(det.boxes, det.scores, det.embeddings)

    def query(self, image: ImageLike, box: Sequence[float]) -> Query:
        """The embedding of the person in ``box`` of ``image``, and the query-image-as-gallery
        detections (CBGM's context)."""
        image = _as_image(image)
        box = _check_box(box, image.shape[0], image.shape[1])
        batch, resized = self._batch(image, box[None])
        rbox = resized["boxes"][:1].astype(np.float32)
        emb = self.inference.embed(batch, rbox[None], np.ones((1, 1), bool))[0, 0]
        (ctx,) = self.inference.detect(batch, query_boxes=rbox)
        # the forced query box comes back scaled to original pixels; report the given one
        boxes = ctx.boxes.copy()
        boxes[0] = box
        return Query(box, emb.astype(np.float32), People(boxes, ctx.scores, ctx.embeddings))

    @staticmethod
    def similarity(query: Query, people: People) -> np.ndarray:
        """The reference's similarity of every detected person to the query: score × cosine."""
        return people.features @ query.embedding

    # -- helpers ---------------------------------------------------------------------------------
    def _batch(self, image: np.ndarray, boxes: Optional[np.ndarray] = None):
        from seqnet_jax.data import pipeline

        ex = pipeline.process_image(
            image, boxes, min_size=self.min_size, max_size=self.max_size, flip=False
        )
        batch = pipeline.collate(
            [ex],
            batch_size=1,
            buckets=self.buckets,
            max_boxes=max(1, len(ex["boxes"])),
            compact_boxes=False,
        )
        return batch, ex


def _as_image(image: ImageLike) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from seqnet_jax.search.gallery import read_image

        path = os.fspath(image)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such image file: {path}")
        try:
            return read_image(path)
        except Exception as e:  # PIL raises several types for unreadable files
            raise ValueError(f"could not read image {path}: {e}") from e
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {a.shape}")
    return a


def _check_box(box, height: int, width: int) -> np.ndarray:
    b = np.asarray(box, np.float32).reshape(-1)
    if b.shape != (4,) or not np.isfinite(b).all():
        raise ValueError(f"box must be 4 finite numbers x1, y1, x2, y2, got {box!r}")
    x1, y1, x2, y2 = (float(v) for v in b)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {list(b)} must have x2 > x1 and y2 > y1 (x1, y1, x2, y2 order)")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise ValueError(f"box {list(b)} lies outside the {width}x{height} (w x h) image")
    return b


def _default_config():
    from configs import default

    return default.get_config()


def _workdir_config(workdir: str):
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: pass config= (the config the checkpoint was trained with)"
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


# -- command line ---------------------------------------------------------------------------------
def _load_config_file(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_seqnet_user_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"--config {path}: not a Python config file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m seqnet_jax.predictor",
        description="Detect people, or embed a query person and rank a gallery, with a checkpoint.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("detect", "query"):
        p = sub.add_parser(name)
        p.add_argument("--checkpoint", required=True, help=".pth / .npz file or a workdir")
        p.add_argument("--config", default="", help="configs/*.py (default: see from_checkpoint)")
        p.add_argument("--step", type=int, default=None, help="workdir checkpoint step")
        p.add_argument("--image", required=True)
        p.add_argument("--min_score", type=float, default=0.0, help="report detections above")
    q = sub.choices["query"]
    q.add_argument("--box", required=True, help="x1,y1,x2,y2 of the query person (pixels)")
    q.add_argument("--gallery", nargs="*", default=[], help="images to rank against the query")
    args = parser.parse_args(argv)
    config = _load_config_file(args.config) if args.config else None
    pred = Predictor.from_checkpoint(args.checkpoint, config, args.step)

    def people_json(people: People, sims=None) -> list:
        out = people.to_json()
        for i, d in enumerate(out):
            if sims is not None:
                d["similarity"] = float(sims[i])
        return [d for d in out if d["score"] > args.min_score]

    if args.command == "detect":
        result = {"image": args.image, "people": people_json(pred.detect(args.image))}
    else:
        try:
            box = [float(v) for v in args.box.split(",")]
        except ValueError:
            parser.error(f"--box {args.box!r}: expected x1,y1,x2,y2")
        query = pred.query(args.image, box)
        result = {
            "image": args.image,
            "box": [float(v) for v in query.box],
            "context": people_json(query.context),
            "gallery": [],
        }
        for g in args.gallery:
            people = pred.detect(g)
            result["gallery"].append(
                {"image": g, "people": people_json(people, pred.similarity(query, people))}
            )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
