"""TFDS builders (array_record, no TensorFlow) on the fake CUHK-SYSU and PRW folders."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")

from seqnet_jax.data import tfds_builders  # noqa: E402
from seqnet_jax.data.cuhk_sysu import ImageReadError, read_cuhk_sysu  # noqa: E402
from seqnet_jax.data.fake_datasets import write_fake_cuhk_sysu, write_fake_prw  # noqa: E402
from seqnet_jax.data.prw import read_prw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _tree(root):
    return sorted(
        (os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
        for d, _, fs in os.walk(root)
        for f in fs
    )


@pytest.fixture(scope="module", params=["cuhk_sysu", "prw"])
def prepared(request, tmp_path_factory):
    """(name, raw folder, data_dir, reader output, tree of the raw folder before preparing)."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "cuhk_sysu":
        fake = write_fake_cuhk_sysu(tmp / "raw")
        ref = read_cuhk_sysu(fake.root)
    else:
        fake = write_fake_prw(tmp / "raw")
        ref = read_prw(fake.root)
    before = _tree(fake.root)
    data_dir = tmp / "tfds"
    tfds_builders.get_builder(request.param, data_dir, fake.root)
    return request.param, fake.root, data_dir, ref, before


def test_splits_read_back_like_the_reader(prepared):
    name, _, data_dir, ref, _ = prepared
    for split, anns in (("train", ref.train), ("gallery", ref.gallery)):
        src = tfds_builders.load_tfds_split(name, data_dir, None, split)
        assert len(src) == len(anns)
        for i, a in enumerate(anns):
            item = src[i]
            assert set(item) == {"image", "boxes", "pids", "name", "cam_id"}
            assert item["name"] == a.name and item["cam_id"] == a.cam_id
            np.testing.assert_array_equal(item["boxes"], a.boxes)
            np.testing.assert_array_equal(item["pids"], a.pids)
            assert item["boxes"].dtype == np.float32 and item["boxes"].shape == (len(a.boxes), 4)
            assert item["pids"].dtype == np.int32
            assert item["image"].dtype == np.uint8 and item["image"].shape == (a.height, a.width, 3)
        np.testing.assert_array_equal(src[0]["image"], ref.load_image(split, anns[0].name))


def test_query_split_carries_query_box_and_pid(prepared):
    name, _, data_dir, ref, _ = prepared
    src = tfds_builders.load_tfds_split(name, data_dir, None, "query")
    assert len(src) == len(ref.queries)
    for i, q in enumerate(ref.queries):
        item = src[i]
        assert item["name"] == q.name and item["cam_id"] == q.cam_id
        np.testing.assert_array_equal(item["boxes"], q.box[None])
        assert item["pids"].tolist() == [q.pid]
    items = src.__getitems__([1, 0])
    assert [it["name"] for it in items] == [ref.queries[1].name, ref.queries[0].name]


def test_dataset_with_protocols_round_trips(prepared):
    name, _, data_dir, ref, _ = prepared
    ds = tfds_builders.load_tfds_dataset(name, data_dir)
    assert (ds.name, ds.num_train_pids) == (ref.name, ref.num_train_pids)
    assert ds.stats == ref.stats
    for got, want in ((ds.train, ref.train), (ds.gallery, ref.gallery)):
        assert [a.name for a in got] == [a.name for a in want]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g.boxes, w.boxes)
            np.testing.assert_array_equal(g.pids, w.pids)
            assert (g.cam_id, g.height, g.width) == (w.cam_id, w.height, w.width)
    assert [(q.name, q.pid, q.cam_id, q.box.tolist()) for q in ds.queries] == [
        (q.name, q.pid, q.cam_id, q.box.tolist()) for q in ref.queries
    ]
    assert [(p.name, p.gallery_size, p.rule) for p in ds.protocols] == [
        (p.name, p.gallery_size, p.rule) for p in ref.protocols
    ]
    assert (ds.cbgm_k1, ds.cbgm_k2) == (ref.cbgm_k1, ref.cbgm_k2)  # the reader's, by dataset
    for got, want in zip(ds.protocols, ref.protocols, strict=True):
        assert (got.gallery_indices is None) == (want.gallery_indices is None)
        if want.gallery_indices is not None:
            for a, b in zip(got.gallery_indices, want.gallery_indices, strict=True):
                np.testing.assert_array_equal(a, b)
            for a, b in zip(got.gt_boxes, want.gt_boxes, strict=True):
                np.testing.assert_array_equal(a, b)  # NaN rows compare equal
    img = ds.load_image("query", ref.queries[0].name)
    np.testing.assert_array_equal(img, ref.load_image("query", ref.queries[0].name))
    loader = pickle.loads(pickle.dumps(ds.load_image))
    np.testing.assert_array_equal(
        loader("train", ref.train[-1].name), ref.load_image("train", ref.train[-1].name)
    )


def test_sources_pickle(prepared):
    name, _, data_dir, _, _ = prepared
    src = tfds_builders.load_tfds_split(name, data_dir, None, "gallery")
    again = pickle.loads(pickle.dumps(src))
    assert again[1]["name"] == src[1]["name"]


def test_grain_reads_the_source(prepared):
    grain = pytest.importorskip("grain")
    name, _, data_dir, ref, _ = prepared
    src = tfds_builders.load_tfds_split(name, data_dir, None, "train")
    ds = grain.MapDataset.source(src).shuffle(seed=0).map(lambda x: x["name"])
    assert sorted(ds[i] for i in range(len(src))) == sorted(a.name for a in ref.train)


def test_raw_folder_untouched(prepared):
    _, raw, _, _, before = prepared
    assert _tree(raw) == before


def test_not_prepared_without_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        tfds_builders.load_tfds_split("prw", tmp_path / "tfds", None, "train")
    with pytest.raises(FileNotFoundError, match="query_info.txt|frame_train.mat"):
        (tmp_path / "raw").mkdir()
        tfds_builders.load_tfds_split("prw", tmp_path / "tfds", tmp_path / "raw", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        tfds_builders.get_builder("market1501", tmp_path / "tfds")


def test_corrupt_image_at_preparation(tmp_path):
    fake = write_fake_cuhk_sysu(tmp_path / "raw")
    bad = fake.train[1].name
    path = fake.root / "Image" / "SSM" / bad
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # only a full decode notices
    with pytest.raises(ImageReadError, match=bad):
        tfds_builders.get_builder("cuhk_sysu", tmp_path / "tfds", fake.root)
    ds = tfds_builders.load_tfds_dataset(
        "cuhk_sysu", tmp_path / "tfds2", fake.root, skip_bad_images=True
    )
    assert bad not in [a.name for a in ds.train] and ds.stats["bad_images"] == [bad]
    assert len(tfds_builders.load_tfds_split("cuhk_sysu", tmp_path / "tfds2", None, "train")) == (
        len(ds.train)
    )


def test_works_without_tensorflow(tmp_path):
    """Prepare + read in a fresh interpreter never imports TensorFlow (absent or not).

    (Blocking the import is no faithful stand-in for "not installed": tfds branches on
    ``"tensorflow" in sys.modules``. Where TensorFlow is absent, as on the project machines, this
    test is the real thing; where it is installed, it still proves it is never imported.)
    """
    script = textwrap.dedent(f"""
        import sys
        import seqnet_jax.data.cuhk_sysu, seqnet_jax.data.prw, seqnet_jax.data.fake_datasets
        assert "tensorflow_datasets" not in sys.modules, "readers must not import tfds"
        from seqnet_jax.data import tfds_builders
        from seqnet_jax.data.fake_datasets import write_fake_prw
        fake = write_fake_prw({str(tmp_path / "raw")!r})
        src = tfds_builders.load_tfds_split("prw", {str(tmp_path / "tfds")!r}, fake.root,
                                            "gallery")
        item = src[0]
        assert item["image"].shape == (300, 400, 3) and item["name"] == fake.gallery[0].name
        ds = tfds_builders.load_tfds_dataset("prw", {str(tmp_path / "tfds")!r})
        assert ds.num_train_pids == 4
        assert "tensorflow" not in sys.modules, "TensorFlow was imported"
        print("OK")
    """)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
