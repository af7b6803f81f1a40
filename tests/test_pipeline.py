"""Tests for seqnet_jax.data.pipeline (padded static-shape batches, shuffling, resume)."""

import itertools
import logging

import numpy as np
import pytest

from seqnet_jax.data import pipeline, transforms
from seqnet_jax.data.types import UNLABELED_PID, ImageAnnotation

MIN_SIZE, MAX_SIZE = 48, 80  # small images keep the tests fast; same rule as 900 / 1500


def make_dataset(num_images=12, seed=0, boxes_per_image=3):
    """Random-size images with white boxes on black; returns (annotations, images dict)."""
    rng = np.random.default_rng(seed)
    annotations, images = [], {}
    for i in range(num_images):
        h, w = (int(v) for v in rng.integers(24, 72, 2))
        image = np.zeros((h, w, 3), np.uint8)
        boxes = []
        for _ in range(boxes_per_image):
            x1, y1 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
            x2, y2 = x1 + int(rng.integers(4, w - x1 + 1)), y1 + int(rng.integers(4, h - y1 + 1))
            boxes.append((x1, y1, min(x2, w), min(y2, h)))
        name = f"img{i:03d}.jpg"
        images[name] = image
        pids = rng.integers(1, 5, len(boxes)).astype(np.int32)
        pids[0] = UNLABELED_PID
        annotations.append(
            ImageAnnotation(name, np.array(boxes, np.int32), pids, height=h, width=w)
        )
    return annotations, images


def train_loader(annotations, images, **kwargs):
    defaults = dict(
        batch_size=5, min_size=MIN_SIZE, max_size=MAX_SIZE, max_boxes=8, seed=3, num_workers=2
    )
    defaults.update(kwargs)
    return pipeline.TrainLoader(annotations, images.__getitem__, **defaults)


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batch_shapes_dtypes_and_masks():
    annotations, images = make_dataset()
    loader = train_loader(annotations, images, flip_prob=0.0)
    batches = list(loader)
    assert len(batches) == loader.num_batches_per_epoch == 2
    buckets = transforms.default_buckets(MIN_SIZE, MAX_SIZE)
    for batch in batches:
        b, hb, wb, c = batch["images"].shape
        assert (b, c) == (5, 3) and (hb, wb) in buckets
        assert batch["images"].dtype == np.float32
        assert batch["image_sizes"].dtype == np.int32 and batch["image_sizes"].shape == (5, 2)
        assert batch["orig_sizes"].dtype == np.int32 and batch["scales"].dtype == np.float32
        assert batch["boxes"].shape == (5, 8, 4) and batch["boxes"].dtype == np.float32
        assert batch["pids"].shape == (5, 8) and batch["pids"].dtype == np.int32
        assert batch["box_valid"].shape == (5, 8) and batch["box_valid"].dtype == bool
        assert batch["index"].dtype == np.int32 and batch["image_valid"].all()
        for i in range(5):
            ann = annotations[batch["index"][i]]
            big_h, big_w = batch["orig_sizes"][i]
            assert (big_h, big_w) == images[ann.name].shape[:2]
            h, w = batch["image_sizes"][i]
            s = transforms.resize_scale(big_h, big_w, MIN_SIZE, MAX_SIZE)
            assert (h, w) == transforms.resized_size(big_h, big_w, s)
            np.testing.assert_allclose(batch["scales"][i], [h / big_h, w / big_w], rtol=1e-6)
            assert not batch["images"][i, h:].any() and not batch["images"][i, :, w:].any()
            want = transforms.resize_image(images[ann.name], h, w)
            np.testing.assert_array_equal(batch["images"][i, :h, :w], want)
            n = len(ann.boxes)
            assert batch["box_valid"][i].tolist() == [True] * n + [False] * (8 - n)
            want_boxes = transforms.scale_boxes(ann.boxes, (h / big_h, w / big_w))
            np.testing.assert_allclose(batch["boxes"][i, :n], want_boxes, rtol=1e-6)
            np.testing.assert_array_equal(batch["pids"][i, :n], ann.pids)
            assert not batch["boxes"][i, n:].any() and not batch["pids"][i, n:].any()


def test_flipped_boxes_cover_their_pixels():
    annotations, images = [], {}
    for i in range(4):
        h, w = 40 + 3 * i, 70 - 5 * i
        box = (5 + i, 8, 30 + 2 * i, 33)
        name = f"w{i}.png"
        images[name] = np.zeros((h, w, 3), np.uint8)
        images[name][box[1] : box[3], box[0] : box[2]] = 255
        annotations.append(ImageAnnotation(name, np.array([box]), np.array([1]), height=h, width=w))
    for flip_prob in (0.0, 1.0):
        loader = train_loader(annotations, images, batch_size=2, flip_prob=flip_prob)
        for batch in loader:
            for i in range(2):
                h, w = batch["image_sizes"][i]
                image = batch["images"][i, :h, :w].mean(-1)
                x1, y1, x2, y2 = batch["boxes"][i, 0]
                cy, cx = np.mgrid[0:h, 0:w] + 0.5
                inside = (cx > x1 + 1) & (cx < x2 - 1) & (cy > y1 + 1) & (cy < y2 - 1)
                outside = (cx < x1 - 1) | (cx > x2 + 1) | (cy < y1 - 1) | (cy > y2 + 1)
                assert (image[inside] > 254).all() and (image[outside] < 1).all()
                ann = annotations[batch["index"][i]]
                left = ann.boxes[0, 0] * w / ann.width
                right = (ann.width - ann.boxes[0, 2]) * w / ann.width
                want_x1 = right if flip_prob else left
                assert x1 == pytest.approx(want_x1, abs=1e-3)


def test_flip_fraction_and_determinism():
    loader = train_loader(*make_dataset(), flip_prob=0.5)
    flips = [loader.flip_decision(e, p) for e in range(20) for p in range(10)]
    assert 70 < sum(flips) < 130
    assert flips == [loader.flip_decision(e, p) for e in range(20) for p in range(10)]


def test_epoch_shuffling_is_deterministic():
    annotations, images = make_dataset(num_images=20)
    a = train_loader(annotations, images, seed=7)
    b = train_loader(annotations, images, seed=7)
    c = train_loader(annotations, images, seed=8)
    np.testing.assert_array_equal(a.epoch_order(0), b.epoch_order(0))
    assert sorted(a.epoch_order(0)) == list(range(20))
    assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
    assert not np.array_equal(a.epoch_order(0), c.epoch_order(0))
    epoch0 = [bt["index"].tolist() for bt in a]
    assert a.state_dict() == {"epoch": 1, "position": 0}
    epoch1 = [bt["index"].tolist() for bt in a]
    assert a.state_dict() == {"epoch": 2, "position": 0}
    assert epoch0 == [bt["index"].tolist() for bt in b]
    assert sum(epoch0, []) == a.epoch_order(0).tolist()
    assert sum(epoch1, []) == a.epoch_order(1).tolist()


def test_resume_gives_identical_remaining_batches():
    annotations, images = make_dataset(num_images=17)
    full = train_loader(annotations, images)
    want = list(full) + list(full)  # epochs 0 and 1 (3 batches each)

    run = train_loader(annotations, images)
    it = iter(run)
    got = [next(it), next(it)]
    state = run.state_dict()
    assert state == {"epoch": 0, "position": 2}
    it.close()  # the interrupted run stops with prefetched batches in flight

    resumed = train_loader(annotations, images, num_workers=1)
    resumed.load_state_dict(state)
    got += list(resumed)
    assert resumed.state_dict() == {"epoch": 1, "position": 0}
    got += list(resumed)
    assert_batches_equal(got, want)

    # A checkpoint taken after the last batch of an epoch resumes at the next epoch.
    last = train_loader(annotations, images)
    last.load_state_dict({"epoch": 0, "position": 3})
    assert last.state_dict() == {"epoch": 1, "position": 0}
    with pytest.raises(ValueError):
        last.load_state_dict({"epoch": 0, "position": 4})


def test_drop_last_count():
    annotations, images = make_dataset(num_images=12)
    assert len(train_loader(annotations, images)) == 2
    loader = train_loader(annotations, images, drop_last=False)
    batches = list(loader)
    assert len(batches) == loader.num_batches_per_epoch == 3
    last = batches[-1]
    assert last["image_valid"].tolist() == [True, True, False, False, False]
    assert last["index"][2:].tolist() == [-1, -1, -1]
    assert not last["box_valid"][2:].any()
    assert sorted(np.concatenate([b["index"] for b in batches]).tolist())[3:] == list(range(12))
    with pytest.raises(ValueError, match="no batch"):
        train_loader(annotations[:4], images)


def test_images_without_boxes_are_skipped(caplog):
    annotations, images = make_dataset(num_images=12)
    annotations[2].boxes = np.zeros((0, 4), np.int32)
    annotations[2].pids = np.zeros((0,), np.int32)
    annotations[7].boxes = np.array([[5, 5, 5, 9], [9, 9, 3, 20]], np.int32)  # degenerate only
    annotations[7].pids = np.array([1, 2], np.int32)
    with caplog.at_level(logging.WARNING):
        loader = train_loader(annotations, images, drop_last=False)
    assert loader.num_skipped_images == 2 and loader.num_images == 10
    assert "skipped 2" in caplog.text
    seen = np.concatenate([b["index"] for b in loader])
    assert 2 not in seen and 7 not in seen
    assert sorted(seen[seen >= 0].tolist()) == [i for i in range(12) if i not in (2, 7)]


def test_degenerate_boxes_dropped_and_counted():
    annotations, images = make_dataset(num_images=5)
    ann = annotations[0]
    w = ann.width
    ann.boxes = np.array([[1, 1, 9, 9], [4, 4, 4, 8], [w + 1, 2, w + 9, 9], [2, 2, 9, 9]], np.int32)
    ann.pids = np.array([5, 6, 7, 8], np.int32)
    loader = train_loader(annotations, images, flip_prob=0.0)
    batch = next(iter(loader))
    i = int(np.flatnonzero(batch["index"] == 0)[0])
    assert batch["box_valid"][i].tolist()[:3] == [True, True, False]
    assert batch["pids"][i, :2].tolist() == [5, 8]
    assert loader.num_dropped_boxes == 2


def test_too_many_boxes_error():
    annotations, images = make_dataset(num_images=6, boxes_per_image=9)
    with pytest.raises(ValueError, match=r"img000\.jpg.*9 boxes.*max_boxes is 8.*data\.max_boxes"):
        train_loader(annotations, images)
    with pytest.raises(ValueError, match="img000.jpg"):
        pipeline.EvalLoader([(a.name, a) for a in annotations], images.__getitem__, max_boxes=8)


def test_bucket_error_names_image():
    annotations, images = make_dataset(num_images=5)
    with pytest.raises(ValueError, match="fits none of the buckets"):
        list(train_loader(annotations, images, buckets=[(32, 32)]))


def test_load_error_names_image():
    annotations, images = make_dataset(num_images=5)

    def load(name):
        if name == "img003.jpg":
            raise OSError("truncated file")
        return images[name]

    loader = pipeline.TrainLoader(
        annotations, load, min_size=MIN_SIZE, max_size=MAX_SIZE, max_boxes=8
    )
    with pytest.raises(RuntimeError, match=r"img003\.jpg.*truncated"):
        list(loader)


def test_eval_loader_order_filler_and_rows():
    annotations, images = make_dataset(num_images=7)
    annotations[1].boxes = np.array([[3, 3, 1, 9], [2, 2, 12, 14]], np.int32)  # row 0 degenerate
    annotations[1].pids = np.array([4, 9], np.int32)
    items = [(a.name, a) for a in annotations]
    items[4] = (items[4][0], None)
    loader = pipeline.EvalLoader(
        items, images.__getitem__, batch_size=3, min_size=MIN_SIZE, max_size=MAX_SIZE, max_boxes=8
    )
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [3, 4, 5], [6, -1, -1]]
    assert batches[-1]["image_valid"].tolist() == [True, False, False]
    assert not batches[-1]["box_valid"][1:].any()
    # Filler images repeat the last real image (sane sizes, ignored through image_valid).
    np.testing.assert_array_equal(batches[-1]["image_sizes"][1], batches[-1]["image_sizes"][0])
    # Rows keep their annotation order; the degenerate row is marked invalid, not removed.
    assert batches[0]["box_valid"][1, :3].tolist() == [False, True, False]
    assert batches[0]["pids"][1, 1] == 9
    assert not batches[1]["box_valid"][1].any()  # no annotation
    assert_batches_equal(batches, list(loader))  # deterministic, no flip


def test_break_mid_epoch_does_not_hang():
    annotations, images = make_dataset(num_images=30)
    loader = train_loader(annotations, images, num_workers=3, prefetch=4)
    for batch in itertools.islice(loader, 1):
        assert batch["images"].shape[0] == 5
    assert loader.state_dict() == {"epoch": 0, "position": 1}


def test_canvas_fast_path_matches_copy_path():
    """Known image sizes let workers resize into the batch canvas; unknown or wrong sizes copy."""
    annotations, images = make_dataset(num_images=10)
    want = list(train_loader(annotations, images))
    for extra_h, extra_w in [(None, None), (300, 0), (0, 300)]:  # unknown; wrong (other bucket)
        anns = [
            ImageAnnotation(
                a.name,
                a.boxes,
                a.pids,
                height=0 if extra_h is None else a.height + extra_h,
                width=0 if extra_w is None else a.width + extra_w,
            )
            for a in annotations
        ]
        assert_batches_equal(list(train_loader(anns, images)), want)


def test_group_by_aspect_ratio_batches_same_orientation():
    annotations, images = make_dataset(num_images=23, seed=5)
    portrait = {a.name: a.height > a.width for a in annotations}
    n_portrait = sum(portrait.values())
    assert 5 <= n_portrait <= 18  # both orientations are well represented

    plain = train_loader(annotations, images)
    grouped = train_loader(annotations, images, group_by_aspect_ratio=True)
    assert len(grouped) == len(plain) == 4
    for epoch in (0, 1):
        order = grouped.epoch_order(epoch)
        np.testing.assert_array_equal(np.sort(order), np.arange(23))  # a permutation
        np.testing.assert_array_equal(order, grouped.epoch_order(epoch))  # deterministic
        kinds = [
            {portrait[annotations[i].name] for i in order[b * 5 : b * 5 + 5]} for b in range(4)
        ]
        # Left-overs of both groups (23 = 5k + r) share at most one mixed full batch.
        assert sum(len(k) == 2 for k in kinds) <= 1
    assert any(
        len({portrait[annotations[i].name] for i in plain.epoch_order(0)[b * 5 : b * 5 + 5]}) == 2
        for b in range(4)
    )  # the reference's plain order does mix them here

    # Same-orientation batches land in the landscape or portrait bucket, never the square one.
    for batch in grouped:
        names = [annotations[i].name for i in batch["index"]]
        h, w = batch["images"].shape[1:3]
        if len({portrait[n] for n in names}) == 1:
            assert (h > w) == portrait[names[0]] and h != w


def test_skip_bad_images_repeats_a_good_row_in_training_and_marks_the_row_in_evaluation(caplog):
    annotations, images = make_dataset(num_images=10)

    def load(name):
        if name == "img003.jpg":
            raise OSError("image file is truncated (12 bytes not processed)")
        return images[name]

    loader = train_loader(annotations, images, skip_bad_images=True, flip_prob=0.0)
    loader.load_image = load
    with caplog.at_level(logging.WARNING):
        batches = list(loader)
    assert "'img003.jpg'" in caplog.text and "truncated" in caplog.text
    assert list(loader.bad_images) == ["img003.jpg"]
    order = loader.epoch_order(0)
    pos = int(np.flatnonzero(order == 3)[0])
    b, row = divmod(pos, 5)
    src = row - 1 if row > 0 else 1  # the row before it, else the one after
    batch = batches[b]
    assert batch["index"][row] == batch["index"][src] == order[b * 5 + src]
    for k in ("images", "boxes", "pids", "box_valid", "image_sizes"):
        np.testing.assert_array_equal(batch[k][row], batch[k][src], err_msg=k)
    # the same batches again (deterministic)
    again = train_loader(annotations, images, skip_bad_images=True, flip_prob=0.0)
    again.load_image = load
    assert_batches_equal(batches, list(again))
    # evaluation: the row is a filler that keeps its index, load_failed marks it
    items = [(a.name, a) for a in annotations]
    kw = dict(min_size=MIN_SIZE, max_size=MAX_SIZE, max_boxes=8, skip_bad_images=True)
    for bs in (3, 1):  # with batch 1 no image of the batch decodes
        ev = list(pipeline.EvalLoader(items, load, batch_size=bs, **kw))
        flat = [
            (int(x["index"][j]), bool(x["image_valid"][j]), bool(x["load_failed"][j]))
            for x in ev
            for j in range(bs)
        ]
        assert (3, False, True) in flat
        assert all(valid and not failed for i, valid, failed in flat if i not in (3, -1))
        failed_batch = ev[3 // bs]
        assert not failed_batch["box_valid"][3 % bs].any()
    # without skip_bad_images the error names the image (test_load_error_names_image)
