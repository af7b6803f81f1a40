"""Tests of the built-in procedural person-search dataset (seqnet_jax.data.synthetic)."""

import pickle
import time

import numpy as np
import pytest
from PIL import Image

from seqnet_jax.data.synthetic import make_synthetic_dataset, save_preview
from seqnet_jax.data.types import UNLABELED_PID, PersonSearchDataset

SMALL = dict(
    num_train_ids=6,
    num_test_ids=5,
    num_train_images=14,
    num_gallery_images=18,
    gallery_size=10,
    extra_gallery_sizes=(6,),
    num_unlabeled_appearances=10,
)


@pytest.fixture(scope="module")
def ds() -> PersonSearchDataset:
    return make_synthetic_dataset(seed=0, **SMALL)


def _all_images(ds):
    return [("train", a) for a in ds.train] + [("gallery", a) for a in ds.gallery]


def test_structure(ds):
    assert isinstance(ds, PersonSearchDataset)
    assert ds.num_train_pids == 6
    assert len(ds.train) == 14 and len(ds.gallery) == 18
    assert [p.name for p in ds.protocols] == ["TestG10", "TestG6"]
    names = [a.name for _, a in _all_images(ds)]
    assert len(set(names)) == len(names)
    for split, ann in _all_images(ds)[:6]:
        img = ds.load_image(split, ann.name)
        assert img.dtype == np.uint8 and img.shape == (ann.height, ann.width, 3)
        assert img.std() > 5  # not a flat image


def test_determinism():
    a = make_synthetic_dataset(seed=3, **SMALL)
    b = make_synthetic_dataset(seed=3, **SMALL)
    c = make_synthetic_dataset(seed=4, **SMALL)
    for x, y in zip(a.train + a.gallery, b.train + b.gallery, strict=True):
        assert x.name == y.name and x.cam_id == y.cam_id
        np.testing.assert_array_equal(x.boxes, y.boxes)
        np.testing.assert_array_equal(x.pids, y.pids)
    for x, y in zip(a.queries, b.queries, strict=True):
        assert (x.name, x.pid) == (y.name, y.pid)
        np.testing.assert_array_equal(x.box, y.box)
    for pa, pb in zip(a.protocols, b.protocols, strict=True):
        assert pa.gallery_indices == pb.gallery_indices
    for split, anns in (("train", a.train), ("gallery", a.gallery)):
        for ann in anns[:3]:
            np.testing.assert_array_equal(
                a.load_image(split, ann.name), b.load_image(split, ann.name)
            )
    # Rendering does not depend on the order of calls or on the cache.
    name = a.gallery[1].name
    first = a.load_image("gallery", name)
    a.load_image("train", a.train[5].name)
    np.testing.assert_array_equal(first, a.load_image.render(a.load_image.scene("query", name)))
    # Another seed gives other data.
    assert not np.array_equal(
        a.load_image("train", a.train[0].name), c.load_image("train", c.train[0].name)
    )
    # Pickling (worker processes) keeps the pixels.
    d = pickle.loads(pickle.dumps(a.load_image))
    np.testing.assert_array_equal(d("gallery", name), first)


def test_ids_disjoint_and_contiguous(ds):
    train_pids = {int(p) for a in ds.train for p in a.pids}
    test_pids = {int(p) for a in ds.gallery for p in a.pids}
    labeled_train = train_pids - {UNLABELED_PID}
    labeled_test = test_pids - {UNLABELED_PID}
    assert labeled_train == set(range(1, ds.num_train_pids + 1))
    assert len(labeled_test) == 5 and min(labeled_test) > 0
    assert not labeled_train & labeled_test
    assert UNLABELED_PID in train_pids and UNLABELED_PID in test_pids
    assert {q.pid for q in ds.queries} == labeled_test
    for a in ds.train:
        assert (a.pids > 0).any()  # every training image has a labeled person
    for a in ds.train + ds.gallery:  # a labeled identity appears at most once per image
        lab = a.pids[a.pids > 0]
        assert len(set(lab.tolist())) == len(lab)
    # Appearances of different identities differ (train vs test included).
    r = ds.load_image
    apps = {}
    for scenes in r.scenes.values():
        for scene in scenes.values():
            for p in scene.people:
                if p.pid != UNLABELED_PID:
                    assert apps.setdefault(p.pid, p.app) == p.app
    assert len(set(apps.values())) == len(apps)


def test_boxes(ds):
    for _, a in _all_images(ds):
        assert a.boxes.dtype == np.float32 and a.boxes.shape == (len(a.pids), 4)
        assert a.pids.dtype == np.int32
        assert 2 <= len(a.pids) <= 6
        x1, y1, x2, y2 = a.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all()
        assert (x2 <= a.width).all() and (y2 <= a.height).all()
        assert (x2 - x1 >= 8).all() and (y2 - y1 >= 30).all()
        assert (y2 - y1 <= 135).all() and (y2 - y1 > x2 - x1).all()


def test_boxes_are_tight(ds):
    # The resized sprite pasted at a box has visible pixels on all four box edges.
    r = ds.load_image
    scene = r.scene("train", ds.train[0].name)
    p = scene.people[-1]  # nearest person: drawn last, not occluded by other people
    spr = r.sprite(p.app, p.pose).resize((p.w, p.h), Image.Resampling.BILINEAR)
    alpha = np.asarray(spr.getchannel("A")) > 0
    assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()


def test_protocols(ds):
    name_to_idx = {a.name: i for i, a in enumerate(ds.gallery)}
    for proto in ds.protocols:
        assert proto.rule == "explicit"
        assert len(proto.gallery_indices) == len(proto.gt_boxes) == len(ds.queries)
        for q, idx, gt in zip(ds.queries, proto.gallery_indices, proto.gt_boxes, strict=True):
            qi = name_to_idx[q.name]
            assert qi not in idx
            assert len(set(idx)) == len(idx)
            assert gt.shape == (len(idx), 4) and gt.dtype == np.float32
            assert len(idx) >= min(proto.gallery_size, len(ds.gallery) - 1)
            has = ~np.isnan(gt).any(axis=1)
            assert has.sum() >= 1
            for gi, box, h in zip(idx, gt, has, strict=True):
                ann = ds.gallery[gi]
                match = ann.pids == q.pid
                assert match.sum() == int(h)
                if h:
                    np.testing.assert_array_equal(ann.boxes[match][0], box)
            # Every image holding the person (but the query's) is in the gallery.
            holders = {i for i, a in enumerate(ds.gallery) if (a.pids == q.pid).any()} - {qi}
            assert holders == {gi for gi, h in zip(idx, has, strict=True) if h}
    # The query box is the person's box in the query image.
    for q in ds.queries:
        ann = ds.gallery[name_to_idx[q.name]]
        np.testing.assert_array_equal(ann.boxes[ann.pids == q.pid][0], q.box)
        assert q.cam_id == ann.cam_id
    # Smaller galleries are nested in larger ones.
    big, small = ds.protocols
    for a, b in zip(big.gallery_indices, small.gallery_indices, strict=True):
        assert set(b) <= set(a)


def test_protocol_names_and_cbgm_defaults(ds):
    from seqnet_jax.data import synthetic

    assert (
        ds.protocol_names == ["TestG10", "TestG6"] == [synthetic.protocol_name(s) for s in (10, 6)]
    )
    assert (ds.cbgm_k1, ds.cbgm_k2) == (synthetic.CBGM_K1, synthetic.CBGM_K2) == (10, 3)


def test_speed_sanity():
    ds = make_synthetic_dataset(seed=1, **SMALL)
    r = ds.load_image
    t = time.perf_counter()
    for a in ds.train:
        img = r.render(r.scene("train", a.name))
        assert img.shape == (a.height, a.width, 3)
    ms = (time.perf_counter() - t) / len(ds.train) * 1e3
    print(f"synthetic: {ms:.2f} ms/image")


def test_unknown_name_and_split(ds):
    with pytest.raises(KeyError, match="no image named 'nope.jpg' in split 'gallery'"):
        ds.load_image("gallery", "nope.jpg")
    with pytest.raises(KeyError, match="no image named"):
        ds.load_image("train", ds.gallery[0].name)  # a gallery image is not a train image
    with pytest.raises(KeyError, match="unknown split 'val'"):
        ds.load_image("val", ds.train[0].name)
    assert ds.load_image(None, ds.train[0].name).shape[2] == 3


def test_bad_arguments():
    with pytest.raises(ValueError, match="appearances_per_test_id"):
        make_synthetic_dataset(**{**SMALL, "appearances_per_test_id": (1, 2)})
    with pytest.raises(ValueError, match="person_height"):
        make_synthetic_dataset(**{**SMALL, "image_size": (96, 160), "person_height": (40, 130)})


def test_orientations():
    ds = make_synthetic_dataset(seed=0, **{**SMALL, "num_train_images": 40})
    shapes = {(a.height, a.width) for a in ds.train}
    assert shapes == {(192, 320), (320, 192)}
    img = ds.load_image("train", next(a.name for a in ds.train if a.height > a.width))
    assert img.shape == (320, 192, 3)


def test_small_images_scale_people():
    ds = make_synthetic_dataset(seed=0, image_size=(96, 160), **SMALL)
    hs = np.concatenate([a.boxes[:, 3] - a.boxes[:, 1] for a in ds.train])
    assert hs.max() <= 66 and hs.min() >= 19


def test_preview(ds, tmp_path):
    path = tmp_path / "preview.png"
    save_preview(ds, str(path), n=4)
    im = Image.open(path)
    assert im.size[0] > 300 and im.size[1] > 150
