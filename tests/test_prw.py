"""PRW reader on fake data written in the official on-disk format."""

from __future__ import annotations

import os

import numpy as np
import pytest

from seqnet_jax.data.fake_datasets import write_fake_prw
from seqnet_jax.data.prw import ImageReadError, cam_id_of, read_prw
from seqnet_jax.data.types import UNLABELED_PID


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_prw(tmp_path_factory.mktemp("prw") / "PRW")


@pytest.fixture(scope="module")
def ds(fake):
    return read_prw(fake.root)


def _assert_annotations_equal(got, want):
    assert [a.name for a in got] == [a.name for a in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.boxes, w.boxes, err_msg=g.name)
        np.testing.assert_array_equal(g.pids, w.pids, err_msg=g.name)
        assert g.boxes.dtype == np.float32 and g.pids.dtype == np.int32
        assert (g.cam_id, g.height, g.width) == (w.cam_id, w.height, w.width)


def test_annotations(fake, ds):
    assert ds.name == "PRW"
    _assert_annotations_equal(ds.train, fake.train)
    _assert_annotations_equal(ds.gallery, fake.gallery)


def test_training_ids_mapped_contiguously(ds):
    # Raw ids 1, 2, 5, 932 → 1..4 in increasing raw order; -2 → UNLABELED_PID.
    assert ds.num_train_pids == 4
    assert ds.stats["train_raw_ids"] == [1, 2, 5, 932]
    ids = np.concatenate([a.pids for a in ds.train])
    np.testing.assert_array_equal(np.unique(ids), [UNLABELED_PID, 1, 2, 3, 4])
    # Frame 0 shows raw ids 1 and 2, frame 3 shows raw 932 and 1.
    assert ds.train[0].pids[:2].tolist() == [1, 2]
    assert ds.train[3].pids[:2].tolist() == [4, 1]


def test_test_ids_stay_raw(ds):
    ids = np.concatenate([a.pids for a in ds.gallery])
    np.testing.assert_array_equal(np.unique(ids), [UNLABELED_PID, 3, 7])


def test_reference_box_conversion(ds):
    # [-2, -6.0, 20.5, 30.3, 80.9]: x clipped to 0, x2 = 0 + 30.3, y2 = 20.5 + 80.9, truncated.
    boxes = ds.train[0].boxes
    assert [0, 20, 30, 101] in boxes.tolist()
    assert ds.train[0].pids[boxes.tolist().index([0, 20, 30, 101])] == UNLABELED_PID


def test_degenerate_and_empty(fake, ds):
    assert ds.stats["dropped_degenerate_boxes"] == fake.dropped_boxes == 1
    assert ds.stats["skipped_train_images_without_valid_box"] == 1
    assert fake.skipped_train_images[0] not in [a.name for a in ds.train]
    empty = [a for a in ds.gallery if len(a.boxes) == 0]
    assert len(empty) == 1 and ds.stats["gallery_images_without_valid_box"] == 1
    assert empty[0].boxes.shape == (0, 4) and empty[0].pids.shape == (0,)


def test_cam_ids(ds):
    assert cam_id_of("c3s2_012345.jpg") == 3 and cam_id_of("frame.jpg") == -1
    for a in ds.train + ds.gallery:
        assert a.cam_id == int(a.name[1])
    assert len({a.cam_id for a in ds.gallery}) == 3


def test_queries_crlf(fake, ds):
    raw = (fake.root / "query_info.txt").read_bytes()
    assert raw.count(b"\r\n") == len(fake.queries)
    assert len(ds.queries) == 2
    for got, want in zip(ds.queries, fake.queries, strict=True):
        assert (got.name, got.pid, got.cam_id) == (want.name, want.pid, want.cam_id)
        np.testing.assert_array_equal(got.box, want.box)
        assert got.name in {a.name for a in ds.gallery}


def test_queries_lf_read_the_same(tmp_path, ds):
    fake = write_fake_prw(tmp_path / "p", line_ending="\n")
    assert b"\r" not in (fake.root / "query_info.txt").read_bytes()
    got = read_prw(fake.root, check_images="none").queries
    assert [(q.name, q.pid) for q in got] == [(q.name, q.pid) for q in ds.queries]


def test_query_box_is_a_gallery_box(ds):
    by_name = {a.name: a for a in ds.gallery}
    for q in ds.queries:
        a = by_name[q.name]
        hit = np.all(a.boxes == q.box, axis=1)
        assert a.pids[hit].tolist() == [q.pid]


def test_protocols(ds):
    assert [(p.name, p.gallery_size, p.rule) for p in ds.protocols] == [
        ("PRW", -1, "all_but_query_frame"),
        ("PRW-multiview", -1, "other_cameras"),
    ]
    assert all(p.gallery_indices is None and p.gt_boxes is None for p in ds.protocols)


def test_protocol_names_and_cbgm_defaults_are_the_references(ds):
    from seqnet_jax.data import prw

    assert ds.protocol_names == list(prw.PROTOCOL_NAMES) == [prw.PROTOCOL, prw.MULTIVIEW_PROTOCOL]
    assert (ds.cbgm_k1, ds.cbgm_k2) == (prw.CBGM_K1, prw.CBGM_K2) == (30, 4)  # eval_search_prw


@pytest.mark.parametrize("rel", ["query_info.txt", "frame_test.mat", "frame_train.mat", "frames"])
def test_missing_file_names_path_and_download(tmp_path, rel):
    fake = write_fake_prw(tmp_path / "p")
    path = fake.root / rel
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    else:
        path.unlink()
    with pytest.raises(FileNotFoundError) as e:
        read_prw(fake.root)
    msg = str(e.value)
    assert rel in msg and "PRW" in msg and "ownload" in msg


def test_missing_annotation_file(tmp_path):
    fake = write_fake_prw(tmp_path / "p")
    path = fake.root / "annotations" / (fake.gallery[0].name + ".mat")
    path.unlink()
    with pytest.raises(FileNotFoundError, match=path.name):
        read_prw(fake.root)


def test_corrupt_frame_raises_or_is_skipped(tmp_path):
    fake = write_fake_prw(tmp_path / "p")
    bad = fake.queries[1].name
    (fake.root / "frames" / bad).write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ImageReadError, match=bad):
        read_prw(fake.root)
    ds = read_prw(fake.root, skip_bad_images=True)
    assert ds.stats["skipped_bad_images"] == 1 and ds.stats["skipped_queries"] == 1
    assert bad not in [a.name for a in ds.gallery]
    assert [q.pid for q in ds.queries] == [fake.queries[0].pid]


def test_nothing_written_into_dataset_folder(tmp_path):
    fake = write_fake_prw(tmp_path / "p")
    before = sorted(
        (p, os.stat(os.path.join(d, p)).st_mtime_ns) for d, _, fs in os.walk(fake.root) for p in fs
    )
    read_prw(fake.root, check_images="decode")
    after = sorted(
        (p, os.stat(os.path.join(d, p)).st_mtime_ns) for d, _, fs in os.walk(fake.root) for p in fs
    )
    assert before == after
