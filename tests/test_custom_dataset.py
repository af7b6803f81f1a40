"""Our dataset format: reader, derived protocols, bad input, validator, importers.

Includes the proof that the CUHK-SYSU / PRW importers lose nothing: through the converted fake
official folders the training batches and every evaluation number equal the native readers'.
"""

from __future__ import annotations

import functools
import json
import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seqnet_jax.data import convert, custom, validate
from seqnet_jax.data.cuhk_sysu import read_cuhk_sysu
from seqnet_jax.data.fake_datasets import write_fake_cuhk_sysu, write_fake_prw
from seqnet_jax.data.pipeline import TrainLoader
from seqnet_jax.data.prw import read_prw
from seqnet_jax.data.types import UNLABELED_PID
from seqnet_jax.evaluation import evaluate_all

# ------------------------------------------------------------------------------------------------
# Helpers.


def _image(path: Path, w: int, h: int, seed: int = 0, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, fmt)


def _write(root: Path, doc: dict, sizes=None) -> Path:
    """Writes ``doc`` as ``root/annotations.json`` and an image per entry of ``doc["images"]``."""
    root.mkdir(parents=True, exist_ok=True)
    for k, im in enumerate(doc.get("images", [])):
        size = (im.get("width"), im.get("height"))
        if not all(isinstance(v, int) and v > 0 for v in size):
            size = (100, 80)  # a test of a bad width / height: the file still needs a size
        w, h = (sizes or {}).get(im["file_name"], size)
        _image(root / "images" / im["file_name"], w, h, seed=k)
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _img(i, name, cam=None, w=100, h=80):
    rec = {"id": i, "file_name": name, "width": w, "height": h}
    if cam is not None:
        rec["camera_id"] = cam
    return rec


def _ann(image_id, bbox, pid):
    return {"image_id": image_id, "bbox": bbox, "person_id": pid}


def small_doc() -> dict:
    """3 train images (one without boxes), 5 test images (one without boxes), 3 cameras."""
    return {
        "info": {"name": "hand"},
        "images": [
            _img(1, "a.png", 0),
            _img(2, "b.png", 1),
            _img(3, "c.png", 0),
            _img(4, "t1.png", 0),
            _img(5, "t2.png", 1),
            _img(6, "t3.png", 1),
            _img(7, "t4.png", 0),
            _img(8, "t5.png", 2),
        ],
        "annotations": [
            _ann(1, [10, 10, 20, 40], 7),
            _ann(1, [50, 5, 20, 50], -1),
            _ann(1, [60, 0, 0, 10], 3),  # zero width: dropped by the reader
            _ann(2, [5, 5, 30, 60], 3),
            _ann(2, [40, 10, 20.5, 30.25], 7),
            _ann(4, [0, 0, 10, 20], 100),
            _ann(4, [20, 0, 10, 20], 200),
            _ann(5, [1, 1, 10, 20], 100),
            _ann(6, [2, 2, 10, 20], 200),
            _ann(6, [30, 2, 10, 20], 300),  # seen once: no query
            _ann(7, [3, 3, 10, 20], 100),
            _ann(7, [40, 3, 10, 20], -1),
        ],
        "splits": {"train": [1, 2, 3], "test": [4, 5, 6, 7, 8]},
    }


@pytest.fixture()
def small(tmp_path):
    return _write(tmp_path / "ds", small_doc())


# ------------------------------------------------------------------------------------------------
# Reader.


def test_reader_boxes_ids_splits(small):
    ds = custom.read_custom(small, gallery_sizes=(2, 3))
    assert ds.name == "hand" and (ds.cbgm_k1, ds.cbgm_k2) == (10, 3)
    assert [a.name for a in ds.train] == ["a.png", "b.png"]  # c.png has no box: skipped
    np.testing.assert_array_equal(ds.train[0].boxes, [[10, 10, 30, 50], [50, 5, 70, 55]])
    np.testing.assert_array_equal(ds.train[1].boxes, [[5, 5, 35, 65], [40, 10, 60.5, 40.25]])
    assert ds.train[0].boxes.dtype == np.float32 and ds.train[0].pids.dtype == np.int32
    # raw ids 3, 7 -> 1, 2 in increasing raw order
    assert ds.num_train_pids == 2 and ds.stats["train_raw_ids"] == [3, 7]
    assert ds.train[0].pids.tolist() == [2, UNLABELED_PID]
    assert ds.train[1].pids.tolist() == [1, 2]
    assert [(a.cam_id, a.height, a.width) for a in ds.train] == [(0, 80, 100), (1, 80, 100)]
    assert [a.name for a in ds.gallery] == ["t1.png", "t2.png", "t3.png", "t4.png", "t5.png"]
    assert ds.gallery[0].pids.tolist() == [100, 200]  # test ids stay raw
    assert ds.gallery[4].boxes.shape == (0, 4)
    s = ds.stats
    assert s["dropped_degenerate_boxes"] == 1
    assert s["skipped_train_images_without_valid_box"] == 1
    assert s["gallery_images_without_valid_box"] == 1
    img = ds.load_image("train", "a.png")
    assert img.shape == (80, 100, 3) and img.dtype == np.uint8


def test_derived_queries_and_protocols(small):
    ds = custom.read_custom(small, gallery_sizes=(2, 3, 4), protocol_seed=5)
    # One query per test identity seen in two images or more (300 is seen once), in pid order,
    # image drawn by default_rng([seed, pid]) among the identity's images (gallery order).
    assert [q.pid for q in ds.queries] == [100, 200]
    assert ds.stats["test_ids_without_query"] == [300]
    images_of = {100: [0, 1, 3], 200: [0, 2]}
    box_of = {
        (100, 0): [0, 0, 10, 20],
        (100, 1): [1, 1, 11, 21],
        (100, 3): [3, 3, 13, 23],
        (200, 0): [20, 0, 30, 20],
        (200, 2): [2, 2, 12, 22],
    }
    chosen = {}
    for q in ds.queries:
        imgs = images_of[q.pid]
        gi = imgs[int(np.random.default_rng([5, q.pid]).integers(len(imgs)))]
        chosen[q.pid] = gi
        assert q.name == ds.gallery[gi].name and q.cam_id == ds.gallery[gi].cam_id
        np.testing.assert_array_equal(q.box, box_of[q.pid, gi])
    # 'all', 'cross-camera' (every test image has a camera, 3 cameras), TestG2, TestG3; TestG4 is
    # not smaller than the 4 other test images.
    assert ds.protocol_names == ["all", "cross-camera", "TestG2", "TestG3"]
    assert [p.rule for p in ds.protocols[:2]] == ["all_but_query_frame", "other_cameras"]
    assert "TestG4" in ds.stats["derived_protocols"]["skipped"]
    g2, g3 = ds.protocols[2], ds.protocols[3]
    for qi, q in enumerate(ds.queries):
        hits = [g for g in images_of[q.pid] if g != chosen[q.pid]]
        for p, size in ((g2, 2), (g3, 3)):
            idx, gt = p.gallery_indices[qi].tolist(), p.gt_boxes[qi]
            assert len(idx) == max(size, len(hits)) and idx[: len(hits)] == hits
            assert chosen[q.pid] not in idx and len(set(idx)) == len(idx)
            for k, g in enumerate(idx):
                if k < len(hits):
                    np.testing.assert_array_equal(gt[k], box_of[q.pid, g])
                else:  # a distractor: the person is not there
                    assert np.isnan(gt[k]).all() and q.pid not in ds.gallery[g].pids
        assert g3.gallery_indices[qi][:2].tolist() == g2.gallery_indices[qi].tolist()  # nested
    again = custom.read_custom(small, gallery_sizes=(2, 3, 4), protocol_seed=5)
    assert [(q.name, q.pid) for q in again.queries] == [(q.name, q.pid) for q in ds.queries]
    for a, b in zip(again.protocols[3].gallery_indices, g3.gallery_indices, strict=True):
        np.testing.assert_array_equal(a, b)
    # Another seed picks another image for pid 100 (3 candidates) for some seed below 20.
    names = {custom.read_custom(small, protocol_seed=s).queries[0].name for s in range(20)}
    assert len(names) > 1
    assert (
        ds.stats["fingerprint"] != custom.read_custom(small, protocol_seed=6).stats["fingerprint"]
    )


def test_no_cross_camera_without_every_camera(tmp_path):
    doc = small_doc()
    del doc["images"][7]["camera_id"]
    ds = custom.read_custom(_write(tmp_path / "d", doc))
    assert ds.protocol_names == ["all"] and ds.gallery[4].cam_id == -1
    assert "cross-camera" in ds.stats["derived_protocols"]["skipped"]


def test_given_queries_and_protocols(tmp_path):
    doc = small_doc()
    doc["images"].append(_img(9, "q.png", 3))  # a query-only image, in no split
    doc["queries"] = [
        {"image_id": 9, "bbox": [5, 6, 10, 20], "person_id": 100},
        {"image_id": 6, "bbox": [2, 2, 10, 20], "person_id": 200},
    ]
    root = _write(tmp_path / "q", doc)
    ds = custom.read_custom(root, gallery_sizes=(3,))
    assert [(q.name, q.pid, q.cam_id, q.box.tolist()) for q in ds.queries] == [
        ("q.png", 100, 3, [5, 6, 15, 26]),
        ("t3.png", 200, 1, [2, 2, 12, 22]),
    ]
    assert ds.protocol_names == ["all", "cross-camera", "TestG3"]
    # the query image is not in the gallery: all three images with pid 100 are positives
    assert ds.protocols[2].gallery_indices[0].tolist() == [0, 1, 3]
    doc["protocols"] = [
        {"name": "mine", "gallery_size": 2, "galleries": [
            {"image_ids": [5, 8], "bboxes": [[1, 1, 10, 20], None]},
            {"image_ids": [4, 4], "bboxes": [[20, 0, 10, 20], [20, 0, 10, 20]]},
        ]},
        {"name": "everything", "rule": "all_but_query_frame"},
    ]  # fmt: skip
    doc["cbgm"] = {"k1": 30, "k2": 4}
    ds = custom.read_custom(_write(tmp_path / "p", doc))
    assert ds.protocol_names == ["mine", "everything"] and (ds.cbgm_k1, ds.cbgm_k2) == (30, 4)
    p = ds.protocols[0]
    assert p.rule == "explicit" and p.gallery_size == 2
    assert [i.tolist() for i in p.gallery_indices] == [[1, 4], [0, 0]]  # duplicates kept
    np.testing.assert_array_equal(p.gt_boxes[0], [[1, 1, 11, 21], [np.nan] * 4])
    assert ds.protocols[1].gallery_indices is None


def test_string_image_ids(tmp_path):
    """Image ids may be strings (the explicit galleries then map ids with a dict, not a table)."""
    doc = small_doc()
    doc["queries"] = [{"image_id": 4, "bbox": [0, 0, 10, 20], "person_id": 100}]
    doc["protocols"] = [
        {"name": "g", "gallery_size": 3, "galleries": [
            {"image_ids": [7, 5, 6], "bboxes": [[3, 3, 10, 20], [1, 1, 10, 20], None]}
        ]}
    ]  # fmt: skip
    ints = custom.read_custom(_write(tmp_path / "i", doc))
    text = json.dumps(doc)
    for k in range(1, 9):
        text = text.replace(f'"id": {k},', f'"id": "im{k}",').replace(
            f'"image_id": {k},', f'"image_id": "im{k}",'
        )
    doc = json.loads(text)
    doc["splits"] = {s: [f"im{k}" for k in v] for s, v in doc["splits"].items()}
    doc["protocols"][0]["galleries"][0]["image_ids"] = ["im7", "im5", "im6"]
    strs = custom.read_custom(_write(tmp_path / "s", doc))
    assert [a.name for a in strs.gallery] == [a.name for a in ints.gallery]
    assert strs.protocols[0].gallery_indices[0].tolist() == [3, 1, 2]
    assert ints.protocols[0].gallery_indices[0].tolist() == [3, 1, 2]
    np.testing.assert_array_equal(strs.protocols[0].gt_boxes[0], ints.protocols[0].gt_boxes[0])


def test_json_file_as_root_and_image_root(tmp_path):
    doc = small_doc()
    doc["image_root"] = "frames"
    root = tmp_path / "x"
    for k, im in enumerate(doc["images"]):
        _image(root / "frames" / im["file_name"], 100, 80, k)
    (root / "mine.json").write_text(json.dumps(doc))
    ds = custom.read_custom(root / "mine.json")
    assert len(ds.train) == 2 and ds.load_image.folder == root / "frames"
    assert len(custom.read_custom(root, annotations="mine.json").gallery) == 5


@pytest.mark.parametrize(
    "edit, where, expected",
    [
        (lambda d: d["annotations"][1].update(bbox=[1, 2, 3]), "annotations[1].bbox", "4 finite"),
        (lambda d: d["annotations"][4].update(bbox=[1, 2, "3", 4]), "annotations[4].bbox", "x, y"),
        (
            lambda d: d["annotations"][2].update(person_id=0),
            "annotations[2].person_id",
            ">= 1 or -1",
        ),
        (lambda d: d["annotations"][3].pop("person_id"), "annotations[3].person_id", "missing"),
        (lambda d: d["annotations"][0].update(image_id=99), "annotations[0].image_id", "no image"),
        (lambda d: d["images"][0].update(width=-5), "images[0].width", "positive integer"),
        (lambda d: d["images"][2].update(id=1), "images[2].id", "duplicate image id"),
        (lambda d: d["images"][3].update(file_name="../x.png"), "images[3].file_name", "relative"),
        (lambda d: d["images"][1].update(camera_id="c1"), "images[1].camera_id", "integer >= 0"),
        (lambda d: d["splits"]["test"].append(1), "splits.test[5]", "also in splits.train"),
        (lambda d: d["splits"].pop("train"), "splits.train", "missing"),
        (lambda d: d.pop("annotations"), "annotations", "missing"),
        (lambda d: d.update(protocols=[]), "protocols", "without 'queries'"),
        (lambda d: d.update(cbgm={"k1": 0, "k2": 3}), "cbgm.k1", "integer >= 1"),
        (
            lambda d: d.update(
                queries=[{"image_id": 4, "bbox": [0, 0, 10, 20], "person_id": 100}],
                protocols=[{"name": "x", "galleries": []}],
            ),
            "protocols[0].galleries",
            "expected 1 galleries",
        ),
        (
            lambda d: d.update(
                queries=[{"image_id": 4, "bbox": [0, 0, 10, 20], "person_id": -1}],
            ),
            "queries[0].person_id",
            "integer >= 1",
        ),
    ],
)
def test_bad_json_names_the_key_path(tmp_path, edit, where, expected):
    doc = small_doc()
    edit(doc)
    root = _write(tmp_path / "bad", doc)
    with pytest.raises(custom.FormatError) as e:
        custom.read_custom(root)
    msg = str(e.value)
    assert str(root / "annotations.json") in msg
    line = next(line for line in msg.splitlines() if where + ":" in line or where + " " in line)
    assert expected in line, msg


def test_not_json_and_missing_files(tmp_path):
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "annotations.json").write_text('{"images": [1, 2,]}')
    with pytest.raises(custom.FormatError, match=r"not valid JSON.*line 1 column"):
        custom.read_custom(tmp_path / "j")
    with pytest.raises(FileNotFoundError, match="annotations.json"):
        custom.read_custom(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        custom.read_custom(tmp_path / "nowhere")


def test_image_problems(tmp_path):
    doc = small_doc()
    root = _write(tmp_path / "s", doc, sizes={"t2.png": (90, 80)})
    with pytest.raises(ValueError, match=r"images\[4\] \(t2.png\) says 100x80 .* file is 90x80"):
        custom.read_custom(root)
    root = _write(tmp_path / "m", doc)
    (root / "images" / "t4.png").unlink()
    with pytest.raises(custom.ImageReadError, match="t4.png"):
        custom.read_custom(root)
    ds = custom.read_custom(root, skip_bad_images=True)
    assert "t4.png" not in [a.name for a in ds.gallery] and ds.stats["bad_images"] == ["t4.png"]
    assert all(q.name != "t4.png" for q in ds.queries)


# ------------------------------------------------------------------------------------------------
# Validator.


def test_validator_finds_each_problem(tmp_path):
    doc = small_doc()
    doc["images"] += [_img(9, "missing.png"), _img(10, "broken.jpg"), _img(11, "size.png")]
    doc["images"].append(_img(12, "unused.png"))
    doc["splits"]["test"] += [9, 10, 11]
    doc["annotations"] += [
        _ann(10, [0, 0, 10, 10], -1),
        _ann(11, [95, 70, 20, 20], -1),  # index 13: partly outside (warning)
        _ann(11, [120, 10, 10, 10], -1),  # 14: entirely outside (error)
        _ann(11, [5, 5, 10, 0], -1),  # 15: zero height (error)
        _ann(2, [60, 20, 10, 20], 100),  # 16: test id 100 also in train
        _ann(5, [50, 40, 10, 20], 100),  # 17: pid 100 twice in t2.png
    ]
    root = _write(tmp_path / "v", doc, sizes={"size.png": (100, 60)})
    (root / "images" / "missing.png").unlink()
    broken = root / "images" / "broken.jpg"
    _image(broken, 100, 80, fmt="JPEG")
    broken.write_bytes(broken.read_bytes()[:300])
    report = validate.validate(root)
    errors = [str(p) for p in report.errors]
    warnings = [str(p) for p in report.warnings]

    def has(lines, *parts):
        return any(all(p in line for p in parts) for line in lines)

    assert has(errors, "images[8]", "missing.png", "not found")
    assert has(errors, "images[9]", "broken.jpg", "cannot decode")
    assert has(errors, "images[10]", "size.png", "100x80", "100x60")
    assert has(errors, "annotations[14].bbox", "size.png", "outside")
    assert has(errors, "annotations[15].bbox", "size.png", "zero area")
    assert has(errors, "annotations[2].bbox", "a.png", "zero area")
    assert has(warnings, "annotations[13].bbox", "size.png", "extends beyond")
    assert has(warnings, "annotations[9]", "t3.png", "person_id 300", "only one test image")
    assert has(warnings, "annotations[5]", "t1.png", "person_id 100", "both the train and")
    assert has(warnings, "annotations[7]", "t2.png", "person_id 100 appears 2 times")
    assert has(warnings, "images[2]", "c.png", "no person (train split")
    assert has(warnings, "images[7]", "t5.png", "no person (test split")
    assert has(warnings, "images[11]", "unused.png", "in no split")
    assert len(errors) == 6 and not report.ok
    assert report.stats["errors"] == 6 and report.stats["warnings"] == len(warnings)
    # The validator in front of training stops on the errors, listing them.
    with pytest.raises(validate.DatasetValidationError, match=r"(?s)6 error\(s\).*missing.png"):
        validate.check(root, check_images="decode")
    # Format errors are listed too, all of them.
    doc["annotations"][0]["bbox"] = [1, 2]
    doc["images"][1]["height"] = 0
    (root / "annotations.json").write_text(json.dumps(doc))
    errors = [str(p) for p in validate.validate(root, check_images="none").errors]
    assert has(errors, "annotations[0].bbox", "4 finite numbers")
    assert has(errors, "images[1].height", "positive integer")


def test_validator_statistics_and_cli(tmp_path, capsys):
    doc = small_doc()
    del doc["annotations"][2]  # the zero-width box (an error)
    small = _write(tmp_path / "ok", doc)
    report = validate.validate(small, gallery_sizes=(2,))
    assert report.ok
    assert sorted((p.where, p.file) for p in report.warnings) == [
        ("annotations[2]", "b.png"),  # person 3 seen in one training image
        ("annotations[8]", "t3.png"),  # person 300 seen once
        ("images[2]", "c.png"),  # no person
        ("images[7]", "t5.png"),
    ]
    s = report.stats
    assert s["images"]["total"] == 8 and s["images"]["train"] == 3 and s["images"]["test"] == 5
    assert s["images"]["cameras"] == 3 and s["images"]["without people"] == 2
    assert s["boxes"] == {"total": 11, "labeled": 9, "unlabeled": 2}
    assert s["identities"]["train"] == 2 and s["identities"]["test"] == 3
    assert s["identities"]["seen once (test)"] == 1 and s["identities"]["in both splits"] == 0
    # valid boxes: heights 40, 50, 60, 30.25 (train) and 20 x 7 (test)
    h = s["box height (px)"]
    assert (h["count"], h["min"], h["max"], h["median"]) == (11, 20, 60, 20)
    assert (
        s["boxes per image"]["train"]["max"] == 2 and s["boxes per image"]["test"]["mean"] == 7 / 5
    )
    assert s["images per identity"]["test"] == {
        "count": 3, "min": 1.0, "median": 2.0, "mean": 2.0, "max": 3.0
    }  # fmt: skip
    assert s["queries"] == {"derived": 2, "test identities without a query": 1}
    assert s["protocols"] == ["all", "cross-camera", "TestG2"]
    png, out = tmp_path / "h.png", tmp_path / "r.json"
    rc = validate.main([str(small), "--plot", str(png), "--json", str(out), "--gallery_sizes", "2"])
    assert rc == 0
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300
    assert json.loads(out.read_text())["stats"]["boxes"]["total"] == 11
    text = capsys.readouterr().out
    assert "0 errors" in text and "box height (px)" in text
    (small / "images" / "t1.png").unlink()
    assert validate.main([str(small), "--plot", "none"]) == 1
    assert "images[3] (t1.png)" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Importers: CUHK-SYSU / PRW through the format give the native numbers.


def _tree(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, fs in os.walk(root)
        for f in fs
    )


@pytest.fixture(scope="module", params=["cuhk_sysu", "prw"])
def converted(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "cuhk_sysu":
        fake = write_fake_cuhk_sysu(tmp / "raw", image_size=(120, 160))
        native = read_cuhk_sysu(fake.root)
        before = _tree(fake.root)
        report = convert.convert_cuhk_sysu(fake.root, tmp / "out")
        offset = 10  # 4 training ids -> test ids from 11
    else:
        fake = write_fake_prw(tmp / "raw", image_size=(120, 160))
        native = read_prw(fake.root)
        before = _tree(fake.root)
        report = convert.convert_prw(fake.root, tmp / "out", images_mode="hardlink")
        offset = 0
    assert _tree(fake.root) == before  # nothing written into the source
    assert report.ok
    return native, custom.read_custom(tmp / "out"), offset, fake.root, tmp / "out"


def test_converted_dataset_equals_native(converted):
    native, ds, offset, _, _ = converted
    assert (ds.name, ds.num_train_pids) == (native.name, native.num_train_pids)
    assert (ds.cbgm_k1, ds.cbgm_k2) == (native.cbgm_k1, native.cbgm_k2)
    assert ds.stats["train_raw_ids"] == native.stats["train_raw_ids"]
    for got, want, off in ((ds.train, native.train, 0), (ds.gallery, native.gallery, offset)):
        assert [a.name for a in got] == [a.name for a in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.boxes, w.boxes)
            assert g.boxes.dtype == np.float32
            np.testing.assert_array_equal(g.pids, np.where(w.pids > 0, w.pids + off, w.pids))
            assert (g.cam_id, g.height, g.width) == (w.cam_id, w.height, w.width)
    assert [(q.name, q.pid - offset, q.cam_id, q.box.tolist()) for q in ds.queries] == [
        (q.name, q.pid, q.cam_id, q.box.tolist()) for q in native.queries
    ]
    assert [(p.name, p.gallery_size, p.rule) for p in ds.protocols] == [
        (p.name, p.gallery_size, p.rule) for p in native.protocols
    ]
    for got, want in zip(ds.protocols, native.protocols, strict=True):
        assert (got.gallery_indices is None) == (want.gallery_indices is None)
        if want.gallery_indices is not None:
            for a, b in zip(got.gallery_indices, want.gallery_indices, strict=True):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(got.gt_boxes, want.gt_boxes, strict=True):
                np.testing.assert_array_equal(a, b)
    name = native.train[0].name
    np.testing.assert_array_equal(ds.load_image("train", name), native.load_image("train", name))


def test_converted_training_batches_equal_native(converted):
    native, ds, _, _, _ = converted

    def batches(d):
        loader = TrainLoader(
            d.train,
            functools.partial(d.load_image, "train"),
            batch_size=2,
            min_size=120,
            max_size=160,
            seed=3,
            num_workers=1,
        )
        return [b for _ in range(2) for b in loader]  # two epochs (shuffles and flips)

    got, want = batches(ds), batches(native)
    assert len(got) == len(want) >= 4
    for g, w in zip(got, want, strict=True):
        assert sorted(g) == sorted(w)
        for k in w:
            np.testing.assert_array_equal(np.asarray(g[k]), np.asarray(w[k]), err_msg=k)


def _features(ds, dim=8):
    """Deterministic detections / features keyed by image name (equal for equal datasets)."""
    dets, feats, ctx_dets, ctx_feats = [], [], [], []
    for a in ds.gallery:
        rng = np.random.default_rng(zlib.crc32(a.name.encode()))
        boxes = np.asarray(a.boxes, np.float64).reshape(-1, 4) + rng.uniform(
            -3, 3, (len(a.boxes), 4)
        )
        extra = rng.uniform(0, 60, (2, 2))
        boxes = np.concatenate([boxes, np.concatenate([extra, extra + 30], 1)])
        scores = rng.uniform(0.3, 1.0, (len(boxes), 1))
        dets.append(np.concatenate([boxes, scores], 1).astype(np.float32))
        feats.append(rng.normal(size=(len(boxes), dim)).astype(np.float32))
    qf = []
    for i, q in enumerate(ds.queries):
        rng = np.random.default_rng([i, zlib.crc32(q.name.encode())])
        f = rng.normal(size=dim)
        qf.append(f / np.linalg.norm(f))
        other = np.array([[5, 5, 40, 90, 0.9]], np.float32)
        ctx_dets.append(np.concatenate([np.r_[q.box, 1.0][None].astype(np.float32), other]))
        c = rng.normal(size=(2, dim)).astype(np.float32)
        c[0] = qf[-1]
        ctx_feats.append(c)
    return {
        "gallery_dets": dets,
        "gallery_feats": feats,
        "query_box_feats": np.asarray(qf, np.float32),
        "query_context_dets": ctx_dets,
        "query_context_feats": ctx_feats,
    }


def _assert_close(got, want, path="results", offset=0):
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for k in want:
            if k == "query_pid":
                assert got[k] - offset == want[k], path
            else:
                _assert_close(got[k], want[k], f"{path}.{k}", offset)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_close(g, w, f"{path}[{i}]", offset)
    elif isinstance(want, float):
        assert abs(got - want) <= 1e-9, (path, got, want)
    else:
        assert got == want, (path, got, want)


def test_converted_evaluation_numbers_equal_native(converted):
    native, ds, offset, _, _ = converted
    feats = _features(native)
    want = evaluate_all(native, **feats)
    got = evaluate_all(ds, **feats)
    assert len(want["search"]) == 2 * len(native.protocols)
    assert any(r["mAP"] > 0 for r in want["search"])  # the features do find someone
    _assert_close(dict(got), dict(want), offset=offset)


def test_converter_refuses_to_overwrite_and_overlap(converted, tmp_path):
    _, _, _, raw, out = converted
    fmt = "cuhk_sysu" if (raw / "annotation").exists() else "prw"
    fn = convert.convert_cuhk_sysu if fmt == "cuhk_sysu" else convert.convert_prw
    with pytest.raises(FileExistsError, match="not empty.*--overwrite"):
        fn(raw, out)
    with pytest.raises(convert.ConversionError, match="overlap"):
        fn(raw, raw / "converted")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "full" / "images").mkdir()
    (tmp_path / "full" / "images" / "old.jpg").write_text("x")
    assert fn(raw, tmp_path / "full", overwrite=True).ok
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "full" / "images" / "old.jpg").exists()
    assert convert.main([fmt, str(raw), str(out)]) == 1  # the CLI reports, exit status 1


# ------------------------------------------------------------------------------------------------
# Importers: MOTChallenge, COCO from labelling tools, synthetic.


def _mot_sequence(root: Path, name: str, rows, length: int, w: int = 64, h: int = 48) -> Path:
    seq = root / name
    (seq / "gt").mkdir(parents=True, exist_ok=True)
    (seq / "seqinfo.ini").write_text(
        f"[Sequence]\nname={name}\nimDir=img1\nframeRate=25\nseqLength={length}\n"
        f"imWidth={w}\nimHeight={h}\nimExt=.jpg\n"
    )
    (seq / "gt" / "gt.txt").write_text("".join(",".join(map(str, r)) + "\n" for r in rows))
    for t in range(1, length + 1):
        _image(seq / "img1" / f"{t:06d}.jpg", w, h, seed=t, fmt="JPEG")
    return seq


MOT_A = [
    (1, 1, 10, 10, 10, 20, 1, 1, 1.0),
    (1, 2, 50, 30, 20, 30, 1, 1, 0.9),  # clipped to the 64x48 image: 50, 30, 14, 18
    (1, 3, 5, 5, 5, 5, 0, 1, 1.0),  # flag 0: ignored
    (2, 1, 11, 10, 10, 20, 1, 1, 1.0),  # frame 2 is not sampled (every 2)
    (3, 1, 12, 10, 10, 20, 1, 1, 0.8),
    (3, 4, 20, 10, 10, 20, 1, 7, 1.0),  # class 7 (static person): not in --classes 1
    (3, 2, 30, 10, 10, 20, 1, 1, 0.1),  # visibility below 0.25
    (5, 1, 14, 10, 10, 20, 1, 1, 1.0),
    (5, 2, 40, 10, 10, 20, 1, 1, 0.5),
    (5, 5, 70, 10, 5, 5, 1, 1, 1.0),  # outside the image: dropped
]
MOT_B = [(1, 7, 1, 2, 10, 20, 1, 1, 1.0), (3, 7, 2, 2, 10, 20, 1, 1, 1.0)]


def test_mot_importer(tmp_path):
    src = tmp_path / "MOT17" / "train"
    _mot_sequence(src, "MOT17-02-FRCNN", MOT_A, 6)
    _mot_sequence(src, "MOT17-02-SDP", MOT_A, 6)  # same ground truth: skipped
    _mot_sequence(src, "MOT17-05-FRCNN", MOT_B, 4)
    before = _tree(src)
    report = convert.convert_mot(src, tmp_path / "out", every=2)
    assert _tree(src) == before
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    # time split: the last half of each sequence's sampled frames (1, 3, 5 / 1, 3) is test
    assert [names[i] for i in doc["splits"]["train"]] == [
        "MOT17-02-FRCNN/000001.jpg",
        "MOT17-05-FRCNN/000001.jpg",
    ]
    assert [names[i] for i in doc["splits"]["test"]] == [
        "MOT17-02-FRCNN/000003.jpg",
        "MOT17-02-FRCNN/000005.jpg",
        "MOT17-05-FRCNN/000003.jpg",
    ]
    boxes = {}
    for a in doc["annotations"]:
        boxes.setdefault(names[a["image_id"]], []).append((a["bbox"], a["person_id"]))
    # person ids: (sequence, track) in name order: 02/1 -> 1, 02/2 -> 2, 05/7 -> 3
    assert boxes["MOT17-02-FRCNN/000001.jpg"] == [([10, 10, 10, 20], 1), ([50, 30, 14, 18], 2)]
    assert boxes["MOT17-02-FRCNN/000003.jpg"] == [([12, 10, 10, 20], 1)]
    assert boxes["MOT17-02-FRCNN/000005.jpg"] == [([14, 10, 10, 20], 1), ([40, 10, 10, 20], 2)]
    assert boxes["MOT17-05-FRCNN/000003.jpg"] == [([2, 2, 10, 20], 3)]
    im = {i["file_name"]: i for i in doc["images"]}
    assert im["MOT17-02-FRCNN/000005.jpg"]["camera_id"] == 0
    assert im["MOT17-05-FRCNN/000003.jpg"]["camera_id"] == 1
    assert im["MOT17-02-FRCNN/000005.jpg"]["time"] == 4 / 25
    conv = doc["info"]["conversion"]
    assert conv["duplicate_sequences_skipped"] == 1 and conv["clipped_boxes"] == 1
    assert conv["dropped_boxes_outside_or_empty"] == 1
    assert report.ok  # ids in both splits are warnings
    assert any("both the train and the test split" in p.message for p in report.warnings)
    ds = custom.read_custom(tmp_path / "out")
    assert ds.protocol_names == ["all", "cross-camera"] and ds.num_train_pids == 3
    assert ds.load_image("test", "MOT17-05-FRCNN/000003.jpg").shape == (48, 64, 3)
    # whole sequences as test; and the visibility / class options
    convert.convert_mot(
        src,
        tmp_path / "seq",
        every=1,
        test_sequences=["MOT17-05-FRCNN"],
        min_visibility=0.0,
        classes=(1, 7),
    )
    doc = json.loads((tmp_path / "seq" / "annotations.json").read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    assert {names[i].split("/")[0] for i in doc["splits"]["test"]} == {"MOT17-05-FRCNN"}
    assert len(doc["splits"]["train"]) == 6
    frame3 = [a for a in doc["annotations"] if names[a["image_id"]] == "MOT17-02-FRCNN/000003.jpg"]
    assert len(frame3) == 3  # class 7 and the 0.1-visible pedestrian now included
    with pytest.raises(convert.ConversionError, match="no MOTChallenge sequence"):
        convert.convert_mot(tmp_path / "out", tmp_path / "o2")
    bad = tmp_path / "bad"
    _mot_sequence(bad, "S", [(1, 1, 2, 3)], 1)
    with pytest.raises(convert.ConversionError, match=r"gt.txt:1: expected 9 values"):
        convert.convert_mot(bad, tmp_path / "o3")


def _coco(root: Path) -> Path:
    """A CVAT-style export: annotations/instances_default.json next to images/."""
    images = [{"id": k + 1, "file_name": f"frame_{k:06d}.jpg", "width": 64, "height": 48}
              for k in range(4)]  # fmt: skip
    for im in images:
        _image(root / "images" / im["file_name"], 64, 48, seed=im["id"], fmt="JPEG")

    def a(i, img, box, track=None, cat=1, **kw):
        rec = {"id": i, "image_id": img, "category_id": cat, "bbox": box, "iscrowd": 0}
        rec["attributes"] = {"occluded": False} if track is None else {"track_id": track}
        rec.update(kw)
        return rec

    doc = {
        "images": images,
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
        "annotations": [
            a(1, 1, [1, 2, 10, 20], track=0),
            a(2, 1, [30, 2, 10, 20], track=5),
            a(3, 2, [2, 2, 10, 20], track=0),
            a(4, 2, [20, 20, 30, 10], cat=2),  # a car
            a(5, 3, [3, 2, 10, 20], track=5),
            a(6, 3, [40, 5, 10, 20]),  # no track: unlabeled
            a(7, 4, [4, 2, 10, 20], track=0),
            a(8, 4, [0, 0, 64, 48], track=9, iscrowd=1),  # a crowd region
            a(9, 4, [58, 40, 10, 20], track=5),  # clipped to 58, 40, 6, 8
        ],
    }
    (root / "annotations").mkdir(parents=True)
    path = root / "annotations" / "instances_default.json"
    path.write_text(json.dumps(doc))
    return path


def test_coco_importer(tmp_path):
    src = _coco(tmp_path / "cvat")
    report = convert.convert_coco(src, tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert doc["info"]["id_field"] == "attributes.track_id"
    assert doc["info"]["person_id_of_identity"] == [[0, 1], [5, 2]]  # track 0 -> 1, 5 -> 2
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    assert [names[i] for i in doc["splits"]["train"]] == ["frame_000000.jpg", "frame_000001.jpg"]
    assert [names[i] for i in doc["splits"]["test"]] == ["frame_000002.jpg", "frame_000003.jpg"]
    got = [(names[a["image_id"]][-5], a["bbox"], a["person_id"]) for a in doc["annotations"]]
    assert got == [
        ("0", [1, 2, 10, 20], 1),
        ("0", [30, 2, 10, 20], 2),
        ("1", [2, 2, 10, 20], 1),
        ("2", [3, 2, 10, 20], 2),
        ("2", [40, 5, 10, 20], -1),
        ("3", [4, 2, 10, 20], 1),
        ("3", [58, 40, 6, 8], 2),
    ]
    conv = doc["info"]["conversion"]
    assert conv["skipped_other_categories"] == 1 and conv["skipped_crowd"] == 1
    assert report.ok and custom.read_custom(tmp_path / "out").num_train_pids == 2
    # identity split: disjoint identities, training ids seen in test frames become unlabeled
    convert.convert_coco(src, tmp_path / "ids", split="identity", seed=1)
    doc = json.loads((tmp_path / "ids" / "annotations.json").read_text())
    split = {i: s for s in ("train", "test") for i in doc["splits"][s]}
    ids = {
        s: {a["person_id"] for a in doc["annotations"] if split[a["image_id"]] == s}
        for s in split.values()
    }
    assert (ids["train"] - {-1}).isdisjoint(ids["test"] - {-1})
    assert len(ids["test"] - {-1}) == 1
    with pytest.raises(convert.ConversionError, match="no category named"):
        convert.convert_coco(src, tmp_path / "c", categories=["pedestrians"])
    doc = json.loads(src.read_text())
    for a in doc["annotations"]:
        a.pop("attributes")
    src.write_text(json.dumps(doc))
    with pytest.raises(convert.ConversionError, match="no identity field.*--id_field"):
        convert.convert_coco(src, tmp_path / "c")


def test_synthetic_export_cli(tmp_path):
    from seqnet_jax.data.synthetic import make_synthetic_dataset

    params = {
        "num_train_ids": 4,
        "num_test_ids": 3,
        "num_train_images": 6,
        "num_gallery_images": 8,
        "image_size": (64, 96),
        "extra_gallery_sizes": (),
    }
    args = [f"--param={k}={v!r}" for k, v in params.items()]
    assert convert.main(["synthetic", "-", str(tmp_path / "syn"), "--seed", "2", *args]) == 0
    ds = custom.read_custom(tmp_path / "syn", gallery_sizes=(4,))
    ref = make_synthetic_dataset(seed=2, **params)
    assert ds.num_train_pids == ref.num_train_pids == 4
    for got, want in ((ds.train, ref.train), (ds.gallery, ref.gallery)):
        assert [a.name for a in got] == [a.name for a in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.boxes, w.boxes)
            np.testing.assert_array_equal(g.pids, w.pids)
            assert (g.cam_id, g.height, g.width) == (w.cam_id, w.height, w.width)
    np.testing.assert_array_equal(  # lossless PNG
        ds.load_image("gallery", ref.gallery[1].name),
        ref.load_image("gallery", ref.gallery[1].name),
    )
    assert ds.protocol_names == ["all", "cross-camera", "TestG4"]
    assert "queries" not in json.loads((tmp_path / "syn" / "annotations.json").read_text())
    with pytest.raises(SystemExit):  # argparse: synthetic takes '-' as SRC
        convert.main(["synthetic", "x", str(tmp_path / "s2")])


def test_tfds_builder_on_a_custom_dataset(small, tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from seqnet_jax.data import tfds_builders

    ref = custom.read_custom(small, gallery_sizes=(2,))
    kw = {"gallery_sizes": (2,)}
    ds = tfds_builders.load_tfds_dataset("custom", tmp_path / "tfds", small, reader_kwargs=kw)
    assert ds.protocol_names == ref.protocol_names and ds.stats == ref.stats
    assert (ds.cbgm_k1, ds.cbgm_k2) == (ref.cbgm_k1, ref.cbgm_k2)
    for got, want in ((ds.train, ref.train), (ds.gallery, ref.gallery)):
        for g, w in zip(got, want, strict=True):
            assert g.name == w.name and np.array_equal(g.boxes, w.boxes)
            assert np.array_equal(g.pids, w.pids)
    for a, b in zip(
        ds.protocols[-1].gallery_indices, ref.protocols[-1].gallery_indices, strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert ds.load_image("train", "a.png").shape == (80, 100, 3)
    # prepared once: found again without the raw folder; another seed is another config
    again = tfds_builders.load_tfds_dataset("custom", tmp_path / "tfds")
    assert [q.name for q in again.queries] == [q.name for q in ref.queries]
    tfds_builders.load_tfds_dataset(
        "custom", tmp_path / "tfds", small, reader_kwargs=dict(kw, protocol_seed=1)
    )
    with pytest.raises(FileNotFoundError, match="several custom datasets"):
        tfds_builders.load_tfds_dataset("custom", tmp_path / "tfds")


def test_readme_example_is_a_valid_dataset(tmp_path):
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("\n## Train and evaluate on your own dataset\n")
    body = text[start : text.find("\n## ", start + 1)]
    doc = json.loads(re.findall(r"```json\n(.*?)```", body, flags=re.S)[0])
    root = tmp_path / "my_dataset"
    for im in doc["images"]:
        path = root / "images" / im["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (im["width"], im["height"]), (90, 120, 150)).save(path, "JPEG")
    (root / "annotations.json").write_text(json.dumps(doc))
    report = validate.validate(root)
    assert report.ok and not report.warnings, report.format()
    ds = custom.read_custom(root)
    assert ds.name == "shop-cameras" and ds.num_train_pids == 1
    assert [(q.name, q.pid) for q in ds.queries] in (
        [("cam0/000250.jpg", 2)],
        [("cam1/000250.jpg", 2)],
    )
    assert ds.protocol_names == ["all", "cross-camera"]  # TestG50/100: the test split is smaller
