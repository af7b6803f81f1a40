"""Weight import/export without torch: the reference key list, layouts, shape checks, reports.

A full reference-format state dict is built from random numpy arrays with the exact keys and
shapes of ``shared/spec/reference_state_dict_keys.txt`` (parsed at test time).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import jax
import numpy as np
import pytest

from seqnet_jax import weights as W
from seqnet_jax import weights_cli
from seqnet_jax.modeling import seqnet

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
KEYS_FILE = SPEC_DIR / "reference_state_dict_keys.txt"


def parse_key_file(path: Path):
    """``[(key, shape, dtype)]`` in file order."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, rest = line.split(" ", 1)
        shape_txt, dtype = rest.rsplit(" ", 1)
        out.append((key, tuple(ast.literal_eval(shape_txt)), dtype))
    return out


@pytest.fixture(scope="module")
def spec_keys():
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} not found")
    return parse_key_file(KEYS_FILE)


def random_state_dict(spec, seed=0, overrides=None):
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape, dtype in spec:
        shape = (overrides or {}).get(key, shape)
        if dtype == "int64":
            sd[key] = np.asarray(rng.integers(0, 1000), np.int64).reshape(shape)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        else:
            sd[key] = rng.standard_normal(shape, dtype=np.float32)
    return sd


@functools.lru_cache(maxsize=None)
def abstract_variables(**kw):
    model = seqnet.SeqNet(**kw)
    return jax.eval_shape(lambda k: seqnet.init_variables(model, k), jax.random.PRNGKey(0))


def template(**kw):
    """Zero-filled variables with the structure of ``SeqNet(**kw)`` (no slow eager init)."""
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract_variables(**kw))


@pytest.fixture(scope="module")
def ref_sd(spec_keys):
    return random_state_dict(spec_keys)


@pytest.fixture(scope="module")
def imported(ref_sd):
    return W.import_reference_state_dict(template(), ref_sd)


def test_name_map_is_the_reference_key_list(spec_keys):
    expected = [k for k, _, _ in spec_keys if not k.endswith(".num_batches_tracked")]
    assert list(W.torch_to_flax_name_map(50)) == expected
    assert len(spec_keys) == 416 and len(expected) == 349


def test_export_layout_matches_spec_shapes(spec_keys):
    exported = W.export_reference_state_dict(template(), include_num_batches_tracked=True)
    assert [(k, v.shape, str(v.dtype)) for k, v in exported.items()] == spec_keys


def test_import_round_trips_every_tensor(ref_sd, imported):
    variables, report = imported
    assert report.missing == [] and report.unused == []
    assert len(report.loaded) == 349
    assert len(report.ignored) == 67
    assert all(k.endswith(".num_batches_tracked") for k in report.ignored)
    assert report.not_covered == ["oim_state/reid_loss/header"]
    back = W.export_reference_state_dict(variables)
    assert set(back) == {k for k in ref_sd if not k.endswith(".num_batches_tracked")}
    for k, v in back.items():
        assert v.shape == ref_sd[k].shape, k
        np.testing.assert_array_equal(v, ref_sd[k], err_msg=k)


def test_import_layouts_explicitly(ref_sd, imported):
    v, _ = imported
    p, bs, oim = v["params"], v["batch_stats"], v["oim_state"]
    w = ref_sd["backbone.conv1.weight"]  # (O, I, kh, kw)
    k = np.asarray(p["backbone"]["conv1"]["kernel"])  # (kh, kw, I, O)
    assert k.shape == (7, 7, 3, 64)
    assert k[2, 5, 1, 17] == w[17, 1, 2, 5]
    w = ref_sd["roi_heads.reid_head.layer4.0.downsample.0.weight"]
    k = np.asarray(p["reid_head"]["layer4_0"]["downsample_conv"]["kernel"])
    assert k.shape == (1, 1, 1024, 2048) and k[0, 0, 3, 9] == w[9, 3, 0, 0]
    w = ref_sd["roi_heads.embedding_head.projectors.feat_res5.0.weight"]  # (out, in)
    k = np.asarray(p["embedding_head"]["proj_feat_res5"]["kernel"])  # (in, out)
    assert k.shape == (2048, 128) and k[100, 7] == w[7, 100]
    w = ref_sd["rpn.head.bbox_pred.weight"]
    k = np.asarray(p["rpn_head"]["bbox_pred"]["kernel"])
    assert k.shape == (1, 1, 1024, 60) and k[0, 0, 5, 59] == w[59, 5, 0, 0]
    bn = "roi_heads.box_predictor.bbox_pred.1"
    np.testing.assert_array_equal(
        p["box_predictor"]["bbox_pred_bn"]["scale"], ref_sd[bn + ".weight"]
    )
    np.testing.assert_array_equal(p["box_predictor"]["bbox_pred_bn"]["bias"], ref_sd[bn + ".bias"])
    np.testing.assert_array_equal(
        bs["box_predictor"]["bbox_pred_bn"]["mean"], ref_sd[bn + ".running_mean"]
    )
    np.testing.assert_array_equal(
        bs["box_predictor"]["bbox_pred_bn"]["var"], ref_sd[bn + ".running_var"]
    )
    np.testing.assert_array_equal(
        bs["embedding_head"]["rescaler"]["var"],
        ref_sd["roi_heads.embedding_head.rescaler.running_var"],
    )
    np.testing.assert_array_equal(oim["reid_loss"]["lut"], ref_sd["roi_heads.reid_loss.lut"])
    np.testing.assert_array_equal(oim["reid_loss"]["cq"], ref_sd["roi_heads.reid_loss.cq"])
    assert np.asarray(oim["reid_loss"]["header"]).dtype == np.int32


def test_import_does_not_modify_input(ref_sd):
    t = template()
    W.import_reference_state_dict(t, ref_sd)
    assert not np.any(t["params"]["backbone"]["conv1"]["kernel"])


@pytest.mark.parametrize(
    "key, bad",
    [
        ("roi_heads.box_head.layer4.1.conv2.weight", (512, 512, 1, 1)),
        ("roi_heads.faster_rcnn_predictor.bbox_pred.weight", (2048, 8)),
        ("backbone.layer2.0.bn1.running_var", (64,)),
    ],
)
def test_shape_mismatch_names_key_expected_and_got(spec_keys, key, bad):
    sd = random_state_dict(spec_keys, overrides={key: bad})
    good = dict((k, s) for k, s, _ in spec_keys)[key]
    with pytest.raises(ValueError) as e:
        W.import_reference_state_dict(template(), sd)
    msg = str(e.value)
    assert key in msg and str(good) in msg and str(bad) in msg


def test_missing_and_unused_are_reported(ref_sd, caplog):
    sd = dict(ref_sd)
    del sd["rpn.head.conv.bias"]
    sd["roi_heads.some_new_module.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(ValueError, match="rpn.head.conv.bias"):
        W.import_reference_state_dict(template(), sd)
    t = template()
    t["params"]["rpn_head"]["conv"]["bias"] = np.full((1024,), 7.0, np.float32)
    v, report = W.import_reference_state_dict(t, sd, allow_missing=True)
    assert report.missing == ["rpn.head.conv.bias"]
    assert report.unused == ["roi_heads.some_new_module.weight"]
    assert "params/rpn_head/conv/bias" in report.not_covered
    np.testing.assert_array_equal(v["params"]["rpn_head"]["conv"]["bias"], 7.0)
    assert "MISSING" in report.summary() and "UNUSED" in report.summary()
    with caplog.at_level("WARNING"):
        W.load_reference_checkpoint(t, sd, allow_missing=True)


def test_missing_oim_buffers_only_warn(ref_sd):
    sd = {k: v for k, v in ref_sd.items() if ".reid_loss." not in k}
    v, report = W.import_reference_state_dict(template(), sd)
    assert report.missing == list(W.OIM_KEYS)
    assert not np.any(v["oim_state"]["reid_loss"]["lut"])


def test_lut_size_mismatch_says_which_flag(spec_keys):
    sd = random_state_dict(
        spec_keys,
        overrides={"roi_heads.reid_loss.lut": (482, 256), "roi_heads.reid_loss.cq": (500, 256)},
    )
    with pytest.raises(ValueError, match=r"--config\.model\.oim\.lut_size=482") as e:
        W.import_reference_state_dict(template(num_pids=483, cq_size=500), sd)
    assert "483" in str(e.value)
    with pytest.raises(ValueError, match=r"--config\.model\.oim\.cq_size=500"):
        W.import_reference_state_dict(template(num_pids=482, cq_size=5000), sd)
    v, report = W.import_reference_state_dict(template(num_pids=482, cq_size=500), sd)
    assert report.missing == [] and v["oim_state"]["reid_loss"]["lut"].shape == (482, 256)


def test_depth_and_emb_dim_mismatch(ref_sd):
    with pytest.raises(ValueError, match=r"ResNet-50 .* model is ResNet-101.*depth=50"):
        W.import_reference_state_dict(template(depth=101), ref_sd)
    with pytest.raises(ValueError, match=r"256 dimensions.*has 128.*emb_dim=256"):
        W.import_reference_state_dict(template(emb_dim=128), ref_sd)
    with pytest.raises(ValueError, match=r"width 64.*has 32.*width=64"):
        W.import_reference_state_dict(template(width=32), ref_sd)


def test_load_from_npz_and_wrapped_dict(tmp_path, ref_sd, imported):
    small = {k: v for k, v in ref_sd.items() if k.startswith("backbone.")}
    path = tmp_path / "ckpt.npz"
    np.savez(path, **small)
    v1 = W.load_reference_checkpoint(template(), str(path), allow_missing=True)
    v2 = W.load_reference_checkpoint(
        template(), {"model": small, "epoch": 19, "optimizer": {}}, allow_missing=True
    )
    want = imported[0]["params"]["backbone"]["layer3_5"]["conv3"]["kernel"]
    for v in (v1, v2):
        np.testing.assert_array_equal(v["params"]["backbone"]["layer3_5"]["conv3"]["kernel"], want)
    with pytest.raises(FileNotFoundError):
        W.load_reference_checkpoint(template(), str(tmp_path / "nope.pth"))


def imagenet_state_dict(ref_sd):
    """torchvision resnet50 keys, derived from the reference's (plus ``fc``)."""
    sd = {}
    for k, v in ref_sd.items():
        if k.startswith("backbone."):
            sd[k[len("backbone.") :]] = v
        elif k.startswith("roi_heads.box_head."):
            sd[k[len("roi_heads.box_head.") :]] = v
    sd["fc.weight"] = np.ones((1000, 2048), np.float32)
    sd["fc.bias"] = np.ones((1000,), np.float32)
    return sd


def test_imagenet_into_stem_and_both_heads(tmp_path, ref_sd, imported):
    sd = imagenet_state_dict(ref_sd)
    path = tmp_path / "resnet50.npz"
    np.savez(path, **sd)
    t = template()
    from configs import default

    v = W.load_imagenet_into(t, str(path), default.get_config().model)
    _, report = W.import_imagenet_state_dict(t, sd)
    assert report.missing == [] and report.unused == ["fc.weight", "fc.bias"]
    want = imported[0]
    for col in ("params", "batch_stats"):
        for head in ("backbone", "box_head"):
            for a, b in zip(
                jax.tree.leaves(v[col][head]), jax.tree.leaves(want[col][head]), strict=True
            ):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(v[col]["reid_head"]),
            jax.tree.leaves(want[col]["box_head"]),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
    assert not np.any(v["params"]["rpn_head"]["conv"]["kernel"])  # untouched


def test_imagenet_errors(tmp_path, ref_sd):
    with pytest.raises(FileNotFoundError, match=r"resnet50-0676ba61\.pth.*imagenet_weights"):
        W.load_imagenet_into(template(), str(tmp_path / "resnet50.pth"))
    sd = imagenet_state_dict(ref_sd)
    with pytest.raises(ValueError, match="model is ResNet-18"):
        W.import_imagenet_state_dict(template(depth=18), sd)
    sd2 = dict(sd)
    del sd2["layer4.2.bn3.running_var"]
    with pytest.raises(ValueError, match=r"layer4\.2\.bn3\.running_var"):
        W.import_imagenet_state_dict(template(), sd2)
    sd3 = dict(sd, **{"layer1.0.conv2.weight": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(
        ValueError, match=r"layer1\.0\.conv2\.weight.*\(64, 64, 3, 3\).*\(64, 64, 1, 1\)"
    ):
        W.import_imagenet_state_dict(template(), sd3)


@pytest.mark.parametrize("depth", [18, 34, 101])
def test_other_depths_round_trip(depth):
    t = template(depth=depth, num_pids=8, cq_size=16)
    rng = np.random.default_rng(depth)
    t = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), t)
    sd = W.export_reference_state_dict(t)
    v, report = W.import_reference_state_dict(template(depth=depth, num_pids=8, cq_size=16), sd)
    assert report.missing == [] and report.unused == []
    for a, b in zip(jax.tree.leaves(v["params"]), jax.tree.leaves(t["params"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_convert_cli_npz(tmp_path, ref_sd):
    src, dst = tmp_path / "a.npz", tmp_path / "b.npz"
    small = {k: ref_sd[k] for k in list(ref_sd)[:20]}
    np.savez(src, **small)
    assert weights_cli.main(["weights", "convert", str(src), str(dst)]) == 0
    with np.load(dst) as z:
        assert sorted(z.files) == sorted(small)
    assert weights_cli.main(["weights"]) == 2


def test_torchvision_v2_rpn_keys_load_like_the_released_ones(ref_sd, imported):
    """The reference code run under torchvision >= 0.13 saves the RPN conv as
    ``rpn.head.conv.0.0.*`` (RPNHead v2): same weights, same import."""
    sd = dict(ref_sd)
    for k in ("weight", "bias"):
        sd[f"rpn.head.conv.0.0.{k}"] = sd.pop(f"rpn.head.conv.{k}")
    v, report = W.import_reference_state_dict(template(), sd)
    assert not report.missing and not report.unused
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(imported[0]), strict=True):
        np.testing.assert_array_equal(a, b)
    both = dict(sd, **{"rpn.head.conv.weight": ref_sd["rpn.head.conv.weight"]})
    with pytest.raises(ValueError, match=r"both rpn\.head\.conv\.0\.0\.weight .* and rpn\.head"):
        W.import_reference_state_dict(template(), both)


def test_unknown_key_layout_names_the_unplaced_keys_and_the_known_spellings(ref_sd):
    sd = dict(ref_sd)
    for k in ("weight", "bias"):  # a layout we do not know
        sd[f"rpn.head.conv.1.{k}"] = sd.pop(f"rpn.head.conv.{k}")
    with pytest.raises(ValueError) as e:
        W.import_reference_state_dict(template(), sd)
    msg = str(e.value)
    assert "could not place 2 weights" in msg
    assert "rpn.head.conv.weight (released layout) or rpn.head.conv.0.0.weight" in msg
    assert "the checkpoint has rpn.head.conv.1.weight (1024, 1024, 3, 3)" in msg
    assert "allow_missing" not in msg


@pytest.mark.parametrize(
    "content, name, reason",
    [
        (b"\xff\xd8\xff\xe0" + b"\0" * 100, "photo.jpg", "it is a JPEG image"),
        (bytes(range(256)) * 4, "random.npz", "not a readable .npz"),
        (None, "truncated.npz", "not a readable .npz"),
        (b"\x80\x04garbage", "broken.pth", "torch.load failed"),
    ],
)
def test_files_that_are_not_weights_name_the_file_and_the_field(tmp_path, content, name, reason):
    path = tmp_path / name
    if content is None:  # the first half of a real .npz
        np.savez(tmp_path / "ok.npz", a=np.zeros(1000, np.float32))
        content = (tmp_path / "ok.npz").read_bytes()[:600]
    path.write_bytes(content)
    if name.endswith(".pth"):
        pytest.importorskip("torch")
    with pytest.raises(W.WeightsFileError) as e:
        W.load_imagenet_into(template(), path)
    msg = str(e.value)
    assert f"{path} is not a state-dict / checkpoint file" in msg
    assert "--config.init.imagenet_weights" in msg and reason in msg
    with pytest.raises(W.WeightsFileError, match="init.reference_checkpoint"):
        W.load_reference_checkpoint(template(), str(path))
