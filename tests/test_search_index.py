"""The gallery index is saved atomically as a whole: a kill mid-save never pairs one save's
arrays with another save's manifest."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from seqnet_jax.search.gallery import GalleryFile
from seqnet_jax.search.index import GalleryIndex, empty_record

DIM = 4


def _record(key: str, n: int, value: float):
    r = empty_record(GalleryFile(key, key, "image", 10, 20), 0.0, DIM)
    r.frame_index = np.zeros(1, np.int64)
    r.frame_pts = np.full(1, -1, np.int64)
    r.frame_time = np.full(1, np.nan)
    r.frame_hw = np.asarray([[30, 40]], np.int32)
    r.det_frame = np.zeros(n, np.int32)
    r.boxes = np.full((n, 4), value, np.float32)
    r.scores = np.full(n, 0.9, np.float32)
    r.embeddings = np.full((n, DIM), value, np.float32)
    return r


def _index(tmp_path, recs):
    idx = GalleryIndex(str(tmp_path), "fp", DIM)
    for r in recs:
        idx.records[r.key] = r
    return idx


def test_kill_between_arrays_and_manifest_keeps_the_old_pair(tmp_path, monkeypatch):
    _index(tmp_path, [_record("a.jpg", 2, 1.0), _record("b.jpg", 1, 2.0)]).save("root")
    # The next save dies after writing its arrays, before the manifest is replaced.
    new = _index(tmp_path, [_record("b.jpg", 3, 7.0), _record("a.jpg", 1, 5.0)])

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", killed)
    with pytest.raises(KeyboardInterrupt):
        new.save("root")
    monkeypatch.undo()
    assert len([f for f in os.listdir(tmp_path) if f.startswith("arrays-")]) == 2
    got = GalleryIndex.load(str(tmp_path), "fp", DIM).records
    assert sorted(got) == ["a.jpg", "b.jpg"]
    np.testing.assert_array_equal(got["a.jpg"].boxes, np.full((2, 4), 1.0))
    np.testing.assert_array_equal(got["b.jpg"].embeddings, np.full((1, DIM), 2.0))
    # the next complete save removes the orphan
    new.save("root")
    assert len([f for f in os.listdir(tmp_path) if f.startswith("arrays-")]) == 1
    got = GalleryIndex.load(str(tmp_path), "fp", DIM).records
    np.testing.assert_array_equal(got["b.jpg"].boxes, np.full((3, 4), 7.0))


def test_arrays_that_do_not_match_the_manifest_are_rebuilt(tmp_path, caplog):
    _index(tmp_path, [_record("a.jpg", 2, 1.0)]).save("root")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    arrays = tmp_path / manifest["arrays"]
    arrays.write_bytes(arrays.read_bytes() + b"x")  # another file under the same name
    with caplog.at_level("WARNING"):
        got = GalleryIndex.load(str(tmp_path), "fp", DIM)
    assert got.records == {} and "unreadable" in caplog.text and "bytes" in caplog.text
