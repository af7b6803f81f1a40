"""Parity with torch/torchvision (random weights, float32, CPU). Skipped without torch.

* a torch model with the reference's exact module names (its ``state_dict`` is checked against
  ``shared/spec/reference_state_dict_keys.txt``) imported with :mod:`seqnet_jax.weights`: stem,
  RPN head, both res5 heads, both predictors, NAE and the whole query-embedding path;
* torchvision ``resnet50`` → :func:`load_imagenet_into` → our stem and res5 heads;
* RoIAlign (``aligned=False``), NMS, BoxCoder and AnchorGenerator against torchvision's.

Run: ``pip install torch==2.14.1 torchvision==0.29.1`` then ``pytest -m torch``.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torch import nn  # noqa: E402

from seqnet_jax import weights as W  # noqa: E402
from seqnet_jax import weights_cli  # noqa: E402
from seqnet_jax.modeling import seqnet  # noqa: E402
from seqnet_jax.modeling.backbone import Backbone, Res5Head  # noqa: E402
from seqnet_jax.modeling.heads import (  # noqa: E402
    BBoxRegressor,
    FastRCNNPredictor,
    NormAwareEmbedding,
    RPNHead,
)

pytestmark = pytest.mark.torch

KEYS_FILE = (
    Path(__file__).resolve().parents[2] / "shared" / "spec" / "reference_state_dict_keys.txt"
)
RTOL = 1e-4  # relative error bound (max |a - b| / max |b|) for float32 network outputs


def rel_err(ours, ref) -> float:
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-12))


def nhwc(t) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).contiguous().numpy()


def nchw(x) -> "torch.Tensor":
    return torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(x), (0, 3, 1, 2))))


def randomize_(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics (eval-mode BN is then not ~id)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module.eval()


# -- a torch model with the reference's module names ----------------------------------------------
class _RPNHead(nn.Module):
    def __init__(self, c=1024, a=15):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.cls_logits = nn.Conv2d(c, a, 1)
        self.bbox_pred = nn.Conv2d(c, a * 4, 1)

    def forward(self, x):
        t = torch.relu(self.conv(x))
        return self.cls_logits(t), self.bbox_pred(t)


class _Res5Head(nn.Module):
    def __init__(self, layer4):
        super().__init__()
        self.layer4 = layer4

    def forward(self, x):
        r4 = torch.amax(x, dim=(2, 3))
        r5 = torch.amax(self.layer4(x), dim=(2, 3))  # == adaptive_max_pool2d(., 1)
        return r4, r5


def _seq(i, o):
    return nn.Sequential(nn.Linear(i, o), nn.BatchNorm1d(o))


class _NAE(nn.Module):
    """The reference's NormAwareEmbedding (two feature maps, dim 256)."""

    def __init__(self):
        super().__init__()
        self.projectors = nn.ModuleDict(
            OrderedDict(feat_res4=_seq(1024, 128), feat_res5=_seq(2048, 128))
        )
        self.rescaler = nn.BatchNorm1d(1, affine=True)

    def forward(self, r4, r5):
        e = torch.cat([self.projectors["feat_res4"](r4), self.projectors["feat_res5"](r5)], 1)
        norms = e.norm(2, 1, keepdim=True)
        emb = e / norms.expand_as(e).clamp(min=1e-12)
        return emb, self.rescaler(norms).squeeze(1)


class _BoxPredictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.bbox_pred = _seq(2048, 8)


class _FastRCNNPredictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_score = nn.Linear(2048, 2)
        self.bbox_pred = nn.Linear(2048, 8)


class _OIM(nn.Module):
    def __init__(self, lut, cq):
        super().__init__()
        self.register_buffer("lut", torch.zeros(lut, 256))
        self.register_buffer("cq", torch.zeros(cq, 256))


class _RoIHeads(nn.Module):
    def __init__(self, layer4, lut, cq):
        super().__init__()
        self.box_head = _Res5Head(layer4)
        self.box_predictor = _BoxPredictor()
        self.embedding_head = _NAE()
        self.reid_loss = _OIM(lut, cq)
        self.faster_rcnn_predictor = _FastRCNNPredictor()
        self.reid_head = copy.deepcopy(self.box_head)


class _RPN(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = _RPNHead()


class RefLikeSeqNet(nn.Module):
    """Parameters and names of the reference SeqNet (§2, §8), built from torchvision parts."""

    def __init__(self, lut=5532, cq=5000):
        super().__init__()
        r = torchvision.models.resnet50()
        self.backbone = nn.Sequential(
            OrderedDict(
                conv1=r.conv1,
                bn1=r.bn1,
                relu=r.relu,
                maxpool=r.maxpool,
                layer1=r.layer1,
                layer2=r.layer2,
                layer3=r.layer3,
            )
        )
        self.rpn = _RPN()
        self.roi_heads = _RoIHeads(r.layer4, lut, cq)


@pytest.fixture(scope="module")
def ref_model():
    torch.manual_seed(0)
    m = RefLikeSeqNet()
    with torch.no_grad():  # reid_head must differ from box_head
        for p in m.roi_heads.reid_head.parameters():
            p.mul_(1.1)
        m.roi_heads.reid_loss.lut.normal_()
        m.roi_heads.reid_loss.cq.normal_()
    return randomize_(m, 1)


@pytest.fixture(scope="module")
def our_variables(ref_model):
    abstract = jax.eval_shape(
        lambda k: seqnet.init_variables(seqnet.SeqNet(), k), jax.random.PRNGKey(0)
    )
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    variables, report = W.import_reference_state_dict(template, ref_model.state_dict())
    assert report.missing == [] and report.unused == [] and len(report.ignored) == 67
    return variables


def sub(variables, name):
    return {c: variables[c][name] for c in ("params", "batch_stats") if name in variables[c]}


def test_checkpoint_saved_under_new_torchvision_imports_the_same(ref_model, our_variables):
    """The reference model's RPN head as torchvision >= 0.13 builds it (``RPNHead`` v2, which
    converts the released ``rpn.head.conv.*`` keys on load and saves ``rpn.head.conv.0.0.*``)."""
    from torchvision.models.detection.rpn import RPNHead as TVRPNHead

    head = TVRPNHead(1024, 15)
    old = {k[len("rpn.head.") :]: v for k, v in ref_model.state_dict().items() if "rpn.head." in k}
    head.load_state_dict(old)  # torchvision's own old → new key conversion
    new = {f"rpn.head.{k}": v for k, v in head.state_dict().items()}
    assert "rpn.head.conv.0.0.weight" in new and "rpn.head.conv.weight" not in new
    sd = {k: v for k, v in ref_model.state_dict().items() if "rpn.head." not in k}
    sd.update(new)
    template = jax.tree.map(np.zeros_like, our_variables)
    variables, report = W.import_reference_state_dict(template, sd)
    assert report.missing == [] and report.unused == []
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(our_variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_reference_like_model_matches_the_spec_key_list(ref_model):
    if not KEYS_FILE.is_file():
        pytest.skip(f"{KEYS_FILE} not found")
    spec = []
    for line in KEYS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, rest = line.split(" ", 1)
            spec.append((key, rest.rsplit(" ", 1)[0]))
    ours = [(k, str(tuple(v.shape))) for k, v in ref_model.state_dict().items()]
    assert ours == spec


def test_stem_parity(ref_model, our_variables):
    x = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
    with torch.no_grad():
        ref = nhwc(ref_model.backbone(nchw(x)))
    out = Backbone(50).apply(sub(our_variables, "backbone"), jnp.asarray(x), False)
    assert out.shape == (2, 4, 6, 1024)
    assert rel_err(out, ref) <= RTOL


@pytest.mark.parametrize("head", ["box_head", "reid_head"])
def test_res5_head_parity(ref_model, our_variables, head):
    x = np.random.default_rng(1).standard_normal((3, 14, 14, 1024)).astype(np.float32)
    x = np.maximum(x, 0)  # post-ReLU features, as the trunk gives
    with torch.no_grad():
        r4, r5 = getattr(ref_model.roi_heads, head)(nchw(x))
    o4, o5 = Res5Head(50).apply(sub(our_variables, head), jnp.asarray(x), False)
    assert rel_err(o4, r4.numpy()) == 0.0
    assert rel_err(o5, r5.numpy()) <= RTOL


def test_rpn_head_parity_and_delta_layout(ref_model, our_variables):
    x = np.maximum(np.random.default_rng(2).standard_normal((1, 5, 7, 1024)), 0).astype(np.float32)
    with torch.no_grad():
        logits, deltas = ref_model.rpn.head(nchw(x))
    n, a4, h, w = deltas.shape
    ref_logits = nhwc(logits)  # (N, H, W, A)
    # torchvision: (N, A*4, H, W) → view (N, A, 4, H, W) → permute (N, H, W, A, 4)
    ref_deltas = deltas.view(n, a4 // 4, 4, h, w).permute(0, 3, 4, 1, 2).numpy()
    ol, od = RPNHead(15).apply(sub(our_variables, "rpn_head"), jnp.asarray(x))
    assert rel_err(ol, ref_logits) <= RTOL
    assert rel_err(od, ref_deltas) <= RTOL


def test_predictors_and_nae_parity(ref_model, our_variables):
    rng = np.random.default_rng(3)
    r4 = np.abs(rng.standard_normal((6, 1024))).astype(np.float32)
    r5 = np.abs(rng.standard_normal((6, 2048))).astype(np.float32)
    rh = ref_model.roi_heads
    with torch.no_grad():
        cls = rh.faster_rcnn_predictor.cls_score(torch.from_numpy(r5))
        box = rh.faster_rcnn_predictor.bbox_pred(torch.from_numpy(r5))
        reg = rh.box_predictor.bbox_pred(torch.from_numpy(r5))
        emb, logit = rh.embedding_head(torch.from_numpy(r4), torch.from_numpy(r5))
    oc, ob = FastRCNNPredictor(2).apply(sub(our_variables, "faster_rcnn_predictor"), r5)
    assert rel_err(oc, cls.numpy()) <= RTOL and rel_err(ob, box.numpy()) <= RTOL
    oreg = BBoxRegressor(2).apply(sub(our_variables, "box_predictor"), r5, False)
    assert rel_err(oreg, reg.numpy()) <= RTOL
    oemb, ologit = NormAwareEmbedding(256).apply(
        sub(our_variables, "embedding_head"), r4, r5, False
    )
    assert rel_err(oemb, emb.numpy()) <= RTOL
    assert rel_err(ologit, logit.numpy()) <= RTOL


def test_query_embedding_path_parity(ref_model, our_variables):
    """Image (0..255) → normalise → stem → RoIAlign → reid_head → NAE, end to end (§2.10)."""
    from torchvision.ops import roi_align as tv_roi_align

    rng = np.random.default_rng(4)
    img = rng.uniform(0, 255, (1, 96, 128, 3)).astype(np.float32)
    boxes = np.asarray([[[8.0, 4.0, 60.0, 90.0], [50.5, 10.2, 120.3, 70.7]]], np.float32)
    mean = np.asarray(seqnet.IMAGENET_MEAN, np.float32)
    std = np.asarray(seqnet.IMAGENET_STD, np.float32)
    rh = ref_model.roi_heads
    with torch.no_grad():
        feat = ref_model.backbone(nchw((img / 255.0 - mean) / std))
        pooled = tv_roi_align(feat, [torch.from_numpy(boxes[0])], 14, 1 / 16, 2, aligned=False)
        emb_ref, _ = rh.embedding_head(*rh.reid_head(pooled))
    emb = seqnet.embed_boxes(
        seqnet.SeqNet(),
        our_variables,
        jnp.asarray(img),
        jnp.asarray([[96, 128]]),
        jnp.asarray(boxes),
        jnp.ones((1, 2), bool),
    )
    assert emb.shape == (1, 2, 256)
    assert rel_err(emb[0], emb_ref.numpy()) <= RTOL


# -- torchvision ImageNet ResNet -------------------------------------------------------------------
def test_imagenet_resnet50_into_stem_and_heads(tmp_path):
    torch.manual_seed(5)
    r = randomize_(torchvision.models.resnet50(), 6)
    path = tmp_path / "resnet50-random.pth"
    torch.save(r.state_dict(), path)
    abstract = jax.eval_shape(
        lambda k: seqnet.init_variables(seqnet.SeqNet(), k), jax.random.PRNGKey(0)
    )
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    from configs import default

    v = W.load_imagenet_into(template, str(path), default.get_config().model)
    # the .npz conversion gives the same variables
    npz = tmp_path / "resnet50-random.npz"
    assert weights_cli.main(["weights", "convert", str(path), str(npz)]) == 0
    v2 = W.load_imagenet_into(template, str(npz))
    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(v2), strict=True):
        np.testing.assert_array_equal(a, b)

    x = np.random.default_rng(7).standard_normal((1, 64, 64, 3)).astype(np.float32)
    stem = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3)
    with torch.no_grad():
        ref = nhwc(stem(nchw(x)))
    out = Backbone(50).apply(sub(v, "backbone"), jnp.asarray(x), False)
    assert rel_err(out, ref) <= RTOL

    roi = np.maximum(np.random.default_rng(8).standard_normal((2, 14, 14, 1024)), 0)
    roi = roi.astype(np.float32)
    with torch.no_grad():
        ref5 = torch.amax(r.layer4(nchw(roi)), dim=(2, 3)).numpy()
    for head in ("box_head", "reid_head"):
        _, o5 = Res5Head(50).apply(sub(v, head), jnp.asarray(roi), False)
        assert rel_err(o5, ref5) <= RTOL


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_imagenet_name_map_is_torchvision_keys(depth):
    sd = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    want = {k for k in sd if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
    got = [k for k, _ in W.imagenet_name_map(depth)]
    layer4 = [k for k in got if k.startswith("layer4.")]
    assert set(got) == want
    assert len(got) == len(want) + len(layer4) // 2  # layer4 twice: box_head and reid_head


# -- ops -------------------------------------------------------------------------------------------
def test_roi_align_matches_torchvision_legacy():
    from torchvision.ops import roi_align as tv_roi_align

    from seqnet_jax.ops.roi_align import roi_align, roi_align_batched

    rng = np.random.default_rng(9)
    feat = rng.standard_normal((2, 10, 12, 8)).astype(np.float32)  # image 160 × 192 at 1/16
    n = 24
    x1 = rng.uniform(-60, 200, n)
    y1 = rng.uniform(-60, 170, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0.5, 150, n), y1 + rng.uniform(0.5, 150, n)], 1)
    special = np.asarray(
        [
            [-50.0, -40.0, 250.0, 230.0],  # covers the whole map and beyond
            [150.0, 130.0, 400.0, 300.0],  # past the bottom-right border
            [190.0, 158.0, 260.0, 200.0],  # starts right at the border
            [300.0, 300.0, 340.0, 330.0],  # completely outside: zeros
            [-80.0, -90.0, -20.0, -17.0],  # completely outside (top-left): zeros
            [10.0, 20.0, 10.0, 20.0],  # degenerate (roi size clamps to 1 feature pixel)
            [0.0, 0.0, 192.0, 160.0],  # exactly the image
            [31.9, 47.3, 32.4, 50.1],  # tiny
        ]
    )
    boxes = np.concatenate([boxes, special]).astype(np.float32)
    boxes = np.stack([boxes, boxes[::-1]])  # (2, R, 4): different boxes per image
    with torch.no_grad():
        ref = tv_roi_align(
            torch.from_numpy(np.transpose(feat, (0, 3, 1, 2)).copy()),
            [torch.from_numpy(boxes[0]), torch.from_numpy(boxes[1])],
            output_size=14,
            spatial_scale=1 / 16,
            sampling_ratio=2,
            aligned=False,
        )
    ref = nhwc(ref).reshape(2, -1, 14, 14, 8)
    out = roi_align_batched(jnp.asarray(feat), jnp.asarray(boxes), 14, 1 / 16, 2)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)
    out0 = roi_align(jnp.asarray(feat[0]), jnp.asarray(boxes[0]), 14, 1 / 16, 2)
    np.testing.assert_allclose(np.asarray(out0), ref[0], rtol=1e-5, atol=1e-5)
    assert np.all(ref[0, n + 3] == 0) and np.all(ref[0, n + 4] == 0)  # the test covers zeros


@pytest.mark.parametrize("iou", [0.3, 0.5, 0.7])
def test_nms_matches_torchvision(iou):
    from torchvision.ops import nms as tv_nms

    from seqnet_jax.host.nms import nms

    rng = np.random.default_rng(int(iou * 10))
    n = 600
    xy = rng.uniform(0, 300, (n, 2))
    wh = rng.uniform(2, 80, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    boxes[:50] = boxes[50:100] + rng.uniform(-3, 3, (50, 4)).astype(np.float32)  # near-dupes
    boxes[100:110] = boxes[110:120]  # exact duplicates
    scores = rng.permutation(n).astype(np.float32) / n + 0.01  # distinct, no ties
    ref = tv_nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()
    keep = np.asarray(nms(boxes, scores, iou))
    np.testing.assert_array_equal(keep, ref)
    keep = np.asarray(nms(boxes, scores, iou, max_output=17))
    np.testing.assert_array_equal(keep, ref[:17])


def test_box_coder_matches_torchvision():
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

    from seqnet_jax.ops.box_ops import BoxCoder

    rng = np.random.default_rng(11)
    n = 200
    xy = rng.uniform(0, 500, (n, 2))
    props = np.concatenate([xy, xy + rng.uniform(1, 200, (n, 2))], 1).astype(np.float32)
    xy2 = xy + rng.uniform(-30, 30, (n, 2))
    gt = np.concatenate([xy2, xy2 + rng.uniform(1, 200, (n, 2))], 1).astype(np.float32)
    deltas = rng.standard_normal((n, 8)).astype(np.float32)
    deltas[:10, 2] = 8.0  # dw beyond the clamp log(1000/16)
    deltas[10:20, 7] = 50.0  # dh beyond the clamp (class 1)
    clip = math.log(1000.0 / 16)
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        tv = TVBoxCoder(weights, clip)
        ours = BoxCoder(weights, clip)
        ref_enc = tv.encode_single(torch.from_numpy(gt), torch.from_numpy(props)).numpy()
        ref_dec = tv.decode_single(torch.from_numpy(deltas), torch.from_numpy(props)).numpy()
        for xp in (np, jnp):
            enc = np.asarray(ours.encode(xp.asarray(gt), xp.asarray(props)))
            dec = np.asarray(ours.decode(xp.asarray(deltas), xp.asarray(props)))
            np.testing.assert_allclose(enc, ref_enc, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(dec, ref_dec, rtol=1e-5, atol=1e-3)


def test_anchors_match_torchvision_anchor_generator():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    from seqnet_jax.ops.anchors import cell_anchors, grid_anchors

    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    gen = AnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))
    images = ImageList(torch.zeros(2, 3, 128, 160), [(128, 160), (112, 150)])
    feats = [torch.zeros(2, 4, 8, 10)]
    ref = gen(images, feats)
    cell = cell_anchors(sizes, ratios)
    np.testing.assert_array_equal(cell, gen.cell_anchors[0].numpy())
    ours = grid_anchors(8, 10, 16, cell)
    assert ours.shape == (8 * 10 * 15, 4)
    for r in ref:
        np.testing.assert_array_equal(ours, r.numpy())
    np.testing.assert_array_equal(seqnet.anchors_for(seqnet.SeqNet(), 8, 10), ref[0].numpy())
