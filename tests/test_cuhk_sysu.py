"""CUHK-SYSU reader on fake data written in the official on-disk format."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from seqnet_jax.data.cuhk_sysu import FULL_PROTOCOL_NAME, ImageReadError, read_cuhk_sysu
from seqnet_jax.data.fake_datasets import write_fake_cuhk_sysu
from seqnet_jax.data.types import UNLABELED_PID, PersonSearchDataset


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.stat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_cuhk_sysu(tmp_path_factory.mktemp("cuhk") / "CUHK-SYSU")


@pytest.fixture(scope="module")
def ds(fake):
    return read_cuhk_sysu(fake.root)


def _assert_annotations_equal(got, want):
    assert [a.name for a in got] == [a.name for a in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.boxes, w.boxes, err_msg=g.name)
        np.testing.assert_array_equal(g.pids, w.pids, err_msg=g.name)
        assert g.boxes.dtype == np.float32 and g.pids.dtype == np.int32
        assert (g.cam_id, g.height, g.width) == (w.cam_id, w.height, w.width)


def test_train_and_gallery_annotations(fake, ds):
    assert isinstance(ds, PersonSearchDataset) and ds.name == "CUHK-SYSU"
    _assert_annotations_equal(ds.train, fake.train)
    _assert_annotations_equal(ds.gallery, fake.gallery)
    # Train split = sorted(all - pool), in string order as the reference.
    assert [a.name for a in ds.train] == sorted(a.name for a in ds.train)


def test_training_ids_are_contiguous(fake, ds):
    ids = np.concatenate([a.pids for a in ds.train])
    labeled = np.unique(ids[ids != UNLABELED_PID])
    assert ds.num_train_pids == fake.num_train_pids == 4
    np.testing.assert_array_equal(labeled, np.arange(1, ds.num_train_pids + 1))
    assert (ids == UNLABELED_PID).any()
    assert ds.stats["train_raw_ids"] == [1, 2, 3, 4]


def test_queries(fake, ds):
    assert len(ds.queries) == len(fake.queries) == 2
    for got, want in zip(ds.queries, fake.queries, strict=True):
        assert (got.name, got.pid, got.cam_id) == (want.name, want.pid, -1)
        np.testing.assert_array_equal(got.box, want.box)
        assert got.box.dtype == np.float32


def _protocol_by_name(ds, name):
    return next(p for p in ds.protocols if p.name == name)


def _assert_protocol(ds, proto, expected):
    assert proto.rule == "explicit"
    assert len(proto.gallery_indices) == len(proto.gt_boxes) == len(ds.queries)
    for idx, gt, want in zip(proto.gallery_indices, proto.gt_boxes, expected, strict=True):
        assert [ds.gallery[i].name for i in idx] == [n for n, _ in want]
        assert gt.shape == (len(want), 4) and gt.dtype == np.float32
        for row, (_, box) in zip(gt, want, strict=True):
            if box is None:
                assert np.isnan(row).all()
            else:
                np.testing.assert_array_equal(row, box)


def test_protocols(fake, ds):
    assert [p.name for p in ds.protocols] == ["TestG50", "TestG100", FULL_PROTOCOL_NAME]
    for name in ("TestG50", "TestG100"):
        proto = _protocol_by_name(ds, name)
        assert proto.gallery_size == int(name[5:])
        _assert_protocol(ds, proto, fake.protocols[name])
    full = _protocol_by_name(ds, FULL_PROTOCOL_NAME)
    assert (full.gallery_size, full.rule) == (-1, "all_but_query_frame")
    assert full.gallery_indices is None and full.gt_boxes is None


def test_protocol_names_and_cbgm_defaults_are_the_references(ds):
    from seqnet_jax.data import cuhk_sysu

    assert ds.protocol_names == [cuhk_sysu.TESTG50, cuhk_sysu.TESTG100, FULL_PROTOCOL_NAME]
    assert cuhk_sysu.protocol_name(4000) == "TestG4000" and cuhk_sysu.TESTG100 == "TestG100"
    assert set(ds.protocol_names) <= set(cuhk_sysu.PROTOCOL_NAMES)
    assert (ds.cbgm_k1, ds.cbgm_k2) == (cuhk_sysu.CBGM_K1, cuhk_sysu.CBGM_K2) == (10, 3)


def test_query_person_labeled_in_gallery(ds):
    """The test id sits on the query box and on every positive gallery box (TestG50)."""
    gallery_by_name = {a.name: a for a in ds.gallery}
    proto = _protocol_by_name(ds, "TestG50")
    for q, idx, gt in zip(ds.queries, proto.gallery_indices, proto.gt_boxes, strict=True):
        qa = gallery_by_name[q.name]
        assert q.pid in qa.pids[np.all(qa.boxes == q.box, axis=1)]
        for i, row in zip(idx, gt, strict=True):
            a = ds.gallery[i]
            if np.isnan(row).any():
                assert q.pid not in a.pids
            else:
                assert a.pids[np.all(a.boxes == row, axis=1)].tolist() == [q.pid]


def test_degenerate_boxes_dropped_and_counted(fake, ds):
    assert ds.stats["dropped_degenerate_boxes"] == fake.dropped_boxes == 2
    assert ds.stats["skipped_train_images_without_valid_box"] == 1
    skipped = set(fake.skipped_train_images)
    assert skipped and not skipped & {a.name for a in ds.train + ds.gallery}
    for a in ds.train + ds.gallery:
        assert np.all(a.boxes[:, 2] > a.boxes[:, 0]) and np.all(a.boxes[:, 3] > a.boxes[:, 1])


def test_load_image(fake, ds):
    name = ds.gallery[1].name
    img = ds.load_image("gallery", name)
    assert img.dtype == np.uint8 and img.shape == (300, 400, 3)
    with Image.open(fake.root / "Image" / "SSM" / name) as ref:
        np.testing.assert_array_equal(img, np.asarray(ref.convert("RGB")))


def test_larger_protocols_in_another_query_order(tmp_path):
    fake = write_fake_cuhk_sysu(tmp_path / "c", reverse_larger_protocols=True)
    ds = read_cuhk_sysu(fake.root)
    _assert_protocol(ds, _protocol_by_name(ds, "TestG100"), fake.protocols["TestG100"])


def test_gallery_sizes_argument(fake):
    ds = read_cuhk_sysu(fake.root, gallery_sizes=(50,), check_images="none")
    assert [p.name for p in ds.protocols] == ["TestG50", FULL_PROTOCOL_NAME]
    assert ds.train[0].height == 0  # sizes unknown without the image check


def test_parent_folder_is_accepted(fake):
    ds = read_cuhk_sysu(fake.root.parent)
    assert len(ds.gallery) == len(fake.gallery)


@pytest.mark.parametrize(
    "rel",
    [
        "annotation/pool.mat",
        "annotation/test/train_test/TestG50.mat",
        "annotation/test/train_test/Train.mat",
        "annotation/Images.mat",
    ],
)
def test_missing_file_names_path_and_download(tmp_path, rel):
    fake = write_fake_cuhk_sysu(tmp_path / "c", num_train_images=4, num_gallery_images=4)
    (fake.root / rel).unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_cuhk_sysu(fake.root)
    msg = str(e.value)
    assert os.path.basename(rel) in msg and "CUHK-SYSU" in msg and "ownload" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not-there"):
        read_cuhk_sysu(tmp_path / "not-there")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Images.mat"):
        read_cuhk_sysu(tmp_path / "empty")


def test_corrupt_image_raises_or_is_skipped(tmp_path):
    fake = write_fake_cuhk_sysu(tmp_path / "c")
    bad = fake.gallery[3].name  # a positive gallery entry of query 0 (gallery image 3 % 2 == 1)
    (fake.root / "Image" / "SSM" / bad).write_bytes(b"this is not a jpeg")
    with pytest.raises(ImageReadError, match=bad):
        read_cuhk_sysu(fake.root)
    ds = read_cuhk_sysu(fake.root, skip_bad_images=True)
    assert ds.stats["skipped_bad_images"] == 1 and ds.stats["bad_images"] == [bad]
    assert bad not in [a.name for a in ds.gallery]
    assert ds.stats["dropped_protocol_entries"] > 0
    for proto in ds.protocols[:2]:
        for idx, gt in zip(proto.gallery_indices, proto.gt_boxes, strict=True):
            assert len(idx) == len(gt) and bad not in [ds.gallery[i].name for i in idx]


def test_bad_query_image_skips_query(tmp_path):
    fake = write_fake_cuhk_sysu(tmp_path / "c")
    (fake.root / "Image" / "SSM" / fake.queries[0].name).unlink()
    with pytest.raises(ImageReadError, match=fake.queries[0].name):
        read_cuhk_sysu(fake.root)
    ds = read_cuhk_sysu(fake.root, skip_bad_images=True)
    assert [q.pid for q in ds.queries] == [2]
    assert ds.stats["skipped_queries"] == 1
    assert all(len(p.gallery_indices) == 1 for p in ds.protocols[:2])


def test_truncated_jpeg_found_by_decode_check(tmp_path):
    fake = write_fake_cuhk_sysu(tmp_path / "c")
    name = fake.train[0].name
    path = fake.root / "Image" / "SSM" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixel data cut
    ds = read_cuhk_sysu(fake.root)  # header check passes
    with pytest.raises(ImageReadError, match=name):
        ds.load_image("train", name)
    with pytest.raises(ImageReadError, match=name):
        read_cuhk_sysu(fake.root, check_images="decode")
    ds = read_cuhk_sysu(fake.root, check_images="decode", skip_bad_images=True)
    assert name not in [a.name for a in ds.train]


def test_nothing_written_into_dataset_folder(tmp_path):
    fake = write_fake_cuhk_sysu(tmp_path / "c")
    before = _snapshot(fake.root)
    ds = read_cuhk_sysu(fake.root, check_images="decode")
    ds.load_image("train", ds.train[0].name)
    assert _snapshot(fake.root) == before
