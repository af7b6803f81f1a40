"""The inference API for a checkpoint brought from elsewhere (seqnet_jax.predictor)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from PIL import Image

from seqnet_jax import weights as W
from seqnet_jax.data import pipeline
from seqnet_jax.inference import SeqNetInference
from seqnet_jax.modeling import seqnet
from seqnet_jax.predictor import Predictor, main
from tests.tiny import tiny_config


def _config():
    c = tiny_config()
    c.model.roi_head.score_thresh_test = 0.3  # random weights: a few detections pass
    return c


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A reference-format ``.npz`` of a random tiny model, and that model's variables."""
    config = _config()
    model = seqnet.build_model(config.model, num_pids=6)
    variables = seqnet.init_variables(model, jax.random.PRNGKey(3))
    path = tmp_path_factory.mktemp("ckpt") / "tiny_reference.npz"
    np.savez(path, **W.export_reference_state_dict(variables))
    return path, model, variables


@pytest.fixture(scope="module")
def image():
    """A 150 x 250 picture (resized to 96 x 160 by the tiny config: boxes must come back
    scaled by 1 / 0.64)."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (150, 250, 3)).astype(np.uint8)


def test_detect_equals_the_evaluation_path_in_original_pixels(checkpoint, image, tmp_path):
    path, model, variables = checkpoint
    config = _config()
    pred = Predictor.from_checkpoint(path, config)
    people = pred.detect(image)
    assert len(people) > 0

    # the evaluation path: the eval loader's batch through SeqNetInference (CWS features)
    loader = pipeline.EvalLoader(
        [("img", None)], lambda n: image, min_size=96, max_size=160, max_boxes=1
    )
    (batch,) = list(loader)
    (ref,) = SeqNetInference(model, variables, config.model).detect(batch)
    np.testing.assert_allclose(people.boxes, ref.boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(people.scores, ref.scores, rtol=1e-6)
    np.testing.assert_allclose(people.features, ref.embeddings, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(people.embeddings, axis=1), 1.0, rtol=1e-5)
    assert people.boxes[:, 2].max() > 160  # original pixels (width 250), not resized (160)

    # a file gives the same as the array
    f = tmp_path / "img.png"
    Image.fromarray(image).save(f)
    from_file = pred.detect(str(f))
    np.testing.assert_allclose(from_file.boxes, people.boxes)


def test_query_embedding_context_and_similarity(checkpoint, image):
    path, model, variables = checkpoint
    config = _config()
    pred = Predictor.from_checkpoint(path, config)
    box = (40.0, 30.0, 100.0, 140.0)
    q = pred.query(image, box)
    np.testing.assert_allclose(q.box, box)
    np.testing.assert_allclose(np.linalg.norm(q.embedding), 1.0, rtol=1e-5)
    # context: the query box first with score 1, then the other people, unit embeddings
    np.testing.assert_allclose(q.context.boxes[0], box)
    assert q.context.scores[0] == 1.0
    np.testing.assert_allclose(np.linalg.norm(q.context.embeddings, axis=1), 1.0, rtol=1e-5)
    # the query embedding is SeqNetInference.embed of the box in resized coordinates (x 0.64)
    loader = pipeline.EvalLoader(
        [("img", None)], lambda n: image, min_size=96, max_size=160, max_boxes=1
    )
    (batch,) = list(loader)
    sx, sy = 160 / 250, 96 / 150
    rbox = np.asarray([[[40 * sx, 30 * sy, 100 * sx, 140 * sy]]], np.float32)
    want = SeqNetInference(model, variables, config.model).embed(batch, rbox, np.ones((1, 1), bool))
    np.testing.assert_allclose(q.embedding, want[0, 0], rtol=1e-5, atol=1e-6)
    people = pred.detect(image)
    sims = pred.similarity(q, people)
    np.testing.assert_allclose(sims, people.scores * (people.embeddings @ q.embedding), rtol=1e-5)


@pytest.mark.parametrize(
    "box, match",
    [
        ((10, 10, 5, 50), "x2 > x1"),
        ((300, 10, 320, 50), "outside the 250x150"),
        ((1, 2, 3), "4 finite numbers"),
    ],
)
def test_bad_query_box(checkpoint, image, box, match):
    pred = Predictor.from_checkpoint(checkpoint[0], _config())
    with pytest.raises(ValueError, match=match):
        pred.query(image, box)


def test_bad_sources(tmp_path, checkpoint):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        Predictor.from_checkpoint(tmp_path / "nothing.pth", _config())
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        Predictor.from_checkpoint(tmp_path)
    pred = Predictor.from_checkpoint(checkpoint[0], _config())
    with pytest.raises(FileNotFoundError, match="no such image file"):
        pred.detect(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        pred.detect(np.zeros((10, 10)))


def test_cli_query_ranks_a_gallery(checkpoint, image, tmp_path, capsys):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "from tests.test_predictor import _config\n\n\ndef get_config():\n    return _config()\n"
    )
    f = tmp_path / "img.png"
    Image.fromarray(image).save(f)
    args = ["--checkpoint", str(checkpoint[0]), "--config", str(cfg), "--image", str(f)]
    assert main(["query", *args, "--box", "40,30,100,140", "--gallery", str(f)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["box"] == [40.0, 30.0, 100.0, 140.0]
    assert out["context"][0]["score"] == 1.0
    (g,) = out["gallery"]
    assert g["people"] and all("similarity" in d for d in g["people"])
    assert main(["detect", *args]) == 0
    det = json.loads(capsys.readouterr().out)
    assert len(det["people"]) == len(g["people"])
