"""The search command (``eval.mode=search``): outputs, videos, the gallery index, bad input.

One tiny model is trained for a few steps on the synthetic data at the start of the module (the
``tests/tiny.py`` configuration; about half a minute on two CPU cores, mostly compilation).

About the ranking assertions: a model trained for seconds detects people but its embeddings are
not yet discriminative (every pair of people has a cosine similarity above ~0.99), so "the query
identity is found in other scenes" would only test luck; training long enough for that does not fit
the test budget. The assertions therefore use a property that holds for any model with a working
pipeline: when the query picture itself is in the gallery (once as a photo, once more as a copy
in a sub-folder, or as a frame of a video), the query person's own detections must be the best
appearance matches (highest cosine), found at the query box in the right file, frame and time
stamp. This exercises everything between the pictures and the ranking (decoding, resizing,
batching, detection, embedding, back-scaling of the boxes, the index, the video time stamps).
The overall similarity (detection score × cosine, the reference's) is checked to be exactly that
product and to define the ranks.
"""

import glob
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from seqnet_jax import run
from seqnet_jax import search as S
from seqnet_jax.data import build_dataset
from seqnet_jax.train_lib import train as train_lib
from tests.tiny import tiny_config

av = pytest.importorskip("av")


BATCH = 3  # gallery frames per model call in these tests: one compilation, filler images


def _config(**search):
    c = tiny_config(max_steps=6)
    c.eval.mode = "search"
    c.search.batch_size = BATCH
    c.search.jax_cache = False  # no process-wide JAX setting from inside the test session
    for k, v in search.items():
        setattr(c.search, k, v)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``(workdir, searcher, dataset, scenes)``: a tiny trained model and synthetic scene files."""
    root = tmp_path_factory.mktemp("search")
    workdir = str(root / "work")
    config = tiny_config(max_steps=6)
    train_lib.train_and_evaluate(config, workdir)
    dataset = build_dataset(config)
    scenes = root / "scenes"
    scenes.mkdir()
    for ann in dataset.gallery[:6]:
        Image.fromarray(dataset.load_image("test", ann.name)).save(scenes / ann.name)
    searcher = S.PersonSearcher.from_config(_config(), workdir)
    return workdir, searcher, dataset, scenes


class _CountingDetect:
    """Wraps ``inference.detect`` and counts the gallery images it sees."""

    def __init__(self, searcher, monkeypatch):
        self.images = 0
        inner = searcher.inference.detect

        def detect(batch, query_boxes=None):
            if query_boxes is None:
                self.images += int(batch["image_valid"].sum())
            return inner(batch, query_boxes)

        monkeypatch.setattr(searcher.inference, "detect", detect)


def _best_box(searcher, image: np.ndarray) -> np.ndarray:
    """The model's most confident detection in ``image`` (original coordinates)."""
    ex = S.process_image(image, min_size=searcher.min_size, max_size=searcher.max_size)
    batch = S.collate([ex], batch_size=BATCH, buckets=searcher.buckets, max_boxes=1)
    det = searcher.inference.detect(batch)[0]
    assert len(det.boxes), "the tiny model detects nobody in the query scene"
    return det.boxes[0]


def _box_arg(box) -> str:
    return ",".join(f"{v:.1f}" for v in box)


def _iou(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _write_video(path, frames, fps=5):
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.height, s.width = frames[0].shape[:2]
        s.pix_fmt = "yuv420p"
        s.options = {"qscale": "2"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _check_outputs(out, results):
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["summary"] == results["summary"]
    dets = on_disk["detections"]
    assert [d["rank"] for d in dets] == list(range(1, len(dets) + 1))
    sims = [d["similarity"] for d in dets]
    assert sims == sorted(sims, reverse=True)
    for d in dets:
        assert set(d) >= {"file", "frame", "time", "box", "score", "similarity", "cosine", "rank"}
        if not on_disk["cbgm"]:
            assert d["similarity"] == pytest.approx(d["score"] * d["cosine"], abs=2e-4)
    assert on_disk["top_k"] == dets[: len(on_disk["top_k"])]
    with Image.open(out / "overview.png") as im:
        assert im.width > 100 and im.height > 100
    page = (out / "index.html").read_text()
    assert 'src="overview.png"' in page
    for f in on_disk["frames"]:
        if f["annotated"]:
            assert f["annotated"] in page
            with Image.open(out / f["annotated"]) as im:  # small frames are enlarged
                assert im.width * f["size"][1] == im.height * f["size"][0] >= 0
                assert im.width >= f["size"][0]
    return on_disk


# ---------------------------------------------------------------------------------------------
def test_folder_search_writes_outputs_and_finds_the_query_person(trained, tmp_path):
    _, searcher, _, scenes = trained
    gallery = tmp_path / "gallery"
    shutil.copytree(scenes, gallery)
    (gallery / "again").mkdir()
    query_name = sorted(os.listdir(scenes))[2]
    shutil.copy(scenes / query_name, gallery / "again" / query_name)
    (gallery / "broken.jpg").write_bytes(b"this is not a jpeg")
    (gallery / "broken.mp4").write_bytes(b"nor is this a video")
    (gallery / "notes.txt").write_text("ignored")
    image = S.read_image(str(scenes / query_name))
    box = _best_box(searcher, image)
    out = tmp_path / "out"
    opts = S.SearchOptions(
        query=str(scenes / query_name),
        query_box=_box_arg(box),
        gallery=str(gallery),
        output=str(out),
        top_k=5,
        annotate=-1,
        batch_size=BATCH,
    )
    results = _check_outputs(out, searcher.search(opts))

    assert results["summary"]["num_files"] == 9 and results["summary"]["num_frames"] == 7
    assert {s["file"] for s in results["skipped"]} == {"broken.jpg", "broken.mp4"}
    assert all(s["reason"] for s in results["skipped"])
    assert len([f for f in results["frames"] if f["annotated"]]) == 7
    # The query person's two appearances (the photo and its copy) are the best appearance matches.
    by_cos = sorted(results["detections"], key=lambda d: -d["cosine"])
    assert {d["file"] for d in by_cos[:2]} == {query_name, f"again/{query_name}"}
    for d in by_cos[:2]:
        assert _iou(d["box"], box) > 0.95 and d["cosine"] > 0.999
        assert d["time"] is None and d["frame"] == 0
    assert by_cos[2]["cosine"] < by_cos[1]["cosine"]


def test_video_is_searched_frame_by_frame_with_time_stamps(trained, tmp_path):
    _, searcher, dataset, _ = trained
    # 10 frames at 5 fps (t = 0.0 .. 1.8 s), each a different scene.
    frames = [dataset.load_image("test", a.name) for a in dataset.gallery[:10]]
    gallery = tmp_path / "videos"
    gallery.mkdir()
    _write_video(gallery / "walk.mp4", frames)
    # The query is frame 5 (t = 1.0 s) as the decoder returns it: the same pixels as in the video.
    decoded = {i: img for i, _, _, img in S.iter_video_frames(str(gallery / "walk.mp4"), 0)}
    assert len(decoded) == 10
    query = tmp_path / "query.png"
    Image.fromarray(decoded[5]).save(query)
    box = _best_box(searcher, decoded[5])
    out = tmp_path / "out"
    opts = S.SearchOptions(
        query=str(query),
        query_box=_box_arg(box),
        gallery=str(gallery),
        output=str(out),
        video_fps=0,
        annotate=3,
        batch_size=BATCH,
    )
    results = _check_outputs(out, searcher.search(opts))
    assert [f["frame"] for f in results["frames"]] == list(range(10))
    assert [f["time"] for f in results["frames"]] == pytest.approx([i / 5 for i in range(10)])
    best = max(results["detections"], key=lambda d: d["cosine"])
    assert best["file"] == "walk.mp4" and best["frame"] == 5 and best["time"] == pytest.approx(1.0)
    assert _iou(best["box"], box) > 0.95
    assert len(glob.glob(str(out / "frames" / "walk.mp4__t*.jpg"))) == 3
    # The frames drawn are those with the best-ranked (score-weighted) matches; the name carries
    # the time stamp and frame index. (The tiny model's own-box detection score can be low, so
    # the best-cosine frame need not be among them.)
    first = min(results["detections"], key=lambda d: d["rank"])
    name = f"walk.mp4__t{first['time']:010.3f}s_f{first['frame']:07d}"
    assert first["annotated"] and name in first["annotated"]
    assert first["time"] == pytest.approx(first["frame"] / 5)

    # Sampling at 2 frames/s keeps the first frame of every half second; the video is re-indexed.
    opts.video_fps = 2.0
    results = searcher.search(opts)
    assert results["index"]["processed"] == 1
    assert [f["time"] for f in results["frames"]] == pytest.approx([0.0, 0.6, 1.0, 1.6])


def test_second_query_reuses_the_index(trained, tmp_path, monkeypatch):
    _, searcher, dataset, scenes = trained
    gallery = tmp_path / "gallery"
    shutil.copytree(scenes, gallery)
    names = sorted(os.listdir(gallery))
    out = tmp_path / "out"
    counter = _CountingDetect(searcher, monkeypatch)
    opts = S.SearchOptions(
        query=str(gallery / names[0]),
        gallery=str(gallery),
        output=str(out),
        query_box="10,10,60,90",
        annotate=0,
        batch_size=BATCH,
    )
    first = searcher.search(opts)
    assert counter.images == 6 and first["index"]["processed"] == 6
    assert os.path.exists(out / "gallery_index" / "manifest.json")

    opts.query, opts.query_box = str(gallery / names[1]), ""  # another query, whole image
    second = searcher.search(opts)
    assert counter.images == 6  # no gallery image went through the model again
    assert second["index"] == {
        **first["index"],
        "reused": 6,
        "processed": 0,
        "frames_processed": 0,
        "extract_frames_per_s": None,
    }
    assert second["summary"] == first["summary"]
    a = sorted((d["file"], tuple(d["box"]), d["score"]) for d in first["detections"])
    b = sorted((d["file"], tuple(d["box"]), d["score"]) for d in second["detections"])
    assert a == b

    # Only new or changed files are processed; deleted ones leave the index.
    Image.fromarray(dataset.load_image("test", dataset.gallery[7].name)).save(gallery / "new.png")
    st = os.stat(gallery / names[2])
    os.utime(gallery / names[2], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    os.remove(gallery / names[3])
    third = searcher.search(opts)
    assert counter.images == 8
    assert third["index"]["processed"] == 2 and third["index"]["reused"] == 4
    assert third["index"]["dropped"] == 1 and third["summary"]["num_files"] == 6

    # An index built by another model (or config) is not trusted.
    monkeypatch.setattr(searcher, "fingerprint", "another-model")
    fourth = searcher.search(opts)
    assert fourth["index"]["processed"] == 6 and counter.images == 14


def test_main_search_mode_end_to_end_with_cbgm(trained, tmp_path, monkeypatch):
    workdir, searcher, _, scenes = trained
    out = tmp_path / "out"
    query = sorted(glob.glob(str(scenes / "*.png")))[1]
    config = _config(
        query=query, query_box="", gallery=str(scenes), output=str(out), cbgm=True, top_k=3
    )
    # The model is loaded from the workdir's checkpoint by the fixture (PersonSearcher.from_config,
    # the function the mode calls); re-using it here saves compiling the model a second time.
    calls = []

    def from_config(cfg, wd):
        calls.append((cfg.search.query, wd))
        return searcher

    monkeypatch.setattr(S.PersonSearcher, "from_config", from_config)
    results = run.run(config, workdir)
    assert calls == [(query, workdir)]
    on_disk = _check_outputs(out, results)
    assert on_disk["cbgm"] and len(on_disk["top_k"]) == 3
    assert on_disk["query"]["context_boxes"][0] == on_disk["query"]["box"]
    assert on_disk["index"]["processed"] == 6


# -- bad input ------------------------------------------------------------------------------------
def test_bad_query_and_empty_gallery_fail_before_any_work(tmp_path):
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((50, 40, 3), np.uint8)).save(query)
    gallery = tmp_path / "g"
    gallery.mkdir()
    Image.fromarray(np.zeros((50, 40, 3), np.uint8)).save(gallery / "a.png")
    workdir = str(tmp_path / "no_checkpoint")  # loading a model would fail: errors come first
    out = tmp_path / "out"
    cases = [
        ("10,10,60,30", "not inside the query image, which is 40x50"),
        ("-5,0,20,20", "not inside"),
        ("10,10,10,30", "zero area"),
        ("10,30,20,30", "zero area"),
        ("1,2,3", "x1,y1,x2,y2"),
    ]
    for box, message in cases:
        config = _config(query=str(query), query_box=box, gallery=str(gallery), output=str(out))
        with pytest.raises(S.SearchInputError, match=message):
            run.run(config, workdir)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no pictures here")
    config = _config(query=str(query), gallery=str(empty), output=str(out))
    with pytest.raises(S.SearchInputError, match="is empty"):
        run.run(config, workdir)
    (query.parent / "bad.jpg").write_bytes(b"garbage")
    config = _config(query=str(query.parent / "bad.jpg"), gallery=str(gallery), output=str(out))
    with pytest.raises(S.SearchInputError, match="cannot read the query image"):
        run.run(config, workdir)
    config = _config(query=str(query), gallery=str(gallery), output=str(out))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run.run(config, workdir)
    assert not out.exists()


def test_checkpoint_that_does_not_fit_the_config_names_the_mismatch(trained, tmp_path):
    workdir, _, _, scenes = trained
    query = sorted(glob.glob(str(scenes / "*.png")))[0]
    config = _config(query=query, gallery=str(scenes), output=str(tmp_path / "out"))
    config.model.emb_dim = 32
    with pytest.raises(S.CheckpointMismatchError) as err:
        run.run(config, workdir)
    msg = str(err.value)
    assert "does not fit the model built from the config" in msg
    assert "model.emb_dim=16 (config: 32)" in msg  # from the workdir's training config.json
    assert "params/embedding_head/" in msg and "vs config" in msg  # the arrays that differ


def test_parse_box_and_gallery_listing(tmp_path):
    np.testing.assert_array_equal(S.parse_box("", 40, 50), [0, 0, 40, 50])
    np.testing.assert_array_equal(S.parse_box(" 1, 2,30 ,40", 40, 50), [1, 2, 30, 40])
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.JPG", "sub/a.png", "sub/c.mkv", ".hidden/x.png", "z.txt"):
        (tmp_path / name).write_bytes(b"")
    os.makedirs(tmp_path / "out")
    (tmp_path / "out" / "frame.jpg").write_bytes(b"")
    root, files = S.list_gallery(str(tmp_path), exclude=[str(tmp_path / "out")])
    assert root == str(tmp_path)
    assert [(f.key, f.kind) for f in files] == [
        ("b.JPG", "image"),
        ("sub/a.png", "image"),
        ("sub/c.mkv", "video"),
    ]
    root, files = S.list_gallery(str(tmp_path / "sub" / "c.mkv"))
    assert [f.key for f in files] == ["c.mkv"]
    with pytest.raises(S.SearchInputError, match="does not exist"):
        S.list_gallery(str(tmp_path / "missing"))
