"""Pretrained weights: torchvision ImageNet ResNets and released PyTorch SeqNet checkpoints.

Two imports, both explicit name maps with layout conversion and loud shape checks:

* :func:`load_imagenet_into` — a torchvision ``resnet{18,34,50,101}`` state dict (e.g.
  ``resnet50-0676ba61.pth``, or the reference's ``resnet50-19c8e357.pth``) into the stem
  (``conv1``, ``bn1``, ``layer1..3``) and into **both** res5 heads (``box_head`` and
  ``reid_head`` each start from the same ``layer4`` weights, §2.5). ``fc.*`` is unused.
* :func:`load_reference_checkpoint` — a checkpoint of the reference implementation
  (``{'model': state_dict, 'optimizer': ..., 'epoch': ...}`` or a bare state dict; every key of
  ``shared/spec/reference_state_dict_keys.txt``) into ``params``, ``batch_stats`` and the OIM
  lookup table / circular queue. Unlike the reference's ``strict=False`` nothing is hidden: the
  unused and missing keys are logged and returned by :func:`import_reference_state_dict`.

Layouts: torch conv ``(O, I, kh, kw)`` → Flax ``(kh, kw, I, O)``; torch linear ``(out, in)`` →
Flax Dense ``(in, out)``; BatchNorm ``weight, bias, running_mean, running_var`` → params
``scale, bias`` and batch_stats ``mean, var``; ``num_batches_tracked`` is ignored (torch uses it
only when ``momentum=None``) and reported as such.

torch is needed only to read ``.pth`` files and is imported only there. ``.npz`` files holding the
same flat key → array dict are read with numpy; convert once with::

    python -m seqnet_jax.weights convert resnet50-0676ba61.pth resnet50.npz
    python -m seqnet_jax.weights convert epoch_19.pth seqnet_cuhk_epoch19.npz

and turn a reference checkpoint into an orbax checkpoint of this code base with (the command
line is :mod:`seqnet_jax.weights_cli`)::

    python -m seqnet_jax.weights to_orbax --config configs/cuhk.py --workdir runs/cuhk_ref \\
        --config.init.reference_checkpoint=epoch_19.pth
    python main.py --config configs/cuhk.py --workdir runs/cuhk_ref --config.eval.mode=eval
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
from absl import logging

from seqnet_jax.modeling.backbone import STAGE_BLOCKS, is_bottleneck

StateDict = Dict[str, np.ndarray]
Path = Tuple[str, ...]

IMAGENET_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    101: "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
OIM_KEYS = ("roi_heads.reid_loss.lut", "roi_heads.reid_loss.cq")
_IGNORED_SUFFIX = ".num_batches_tracked"


# -- the name map ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """Where a torch tensor goes: ``variables[collection][path...]``, converted per ``layout``.

    ``layout``: ``conv`` (OIHW ↔ HWIO), ``linear`` ((out, in) ↔ (in, out)) or ``same``.
    """

    collection: str
    path: Path
    layout: str


def _bn(torch_prefix: str, flax_path: Path) -> Dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target("params", flax_path + ("scale",), "same"),
        f"{torch_prefix}.bias": Target("params", flax_path + ("bias",), "same"),
        f"{torch_prefix}.running_mean": Target("batch_stats", flax_path + ("mean",), "same"),
        f"{torch_prefix}.running_var": Target("batch_stats", flax_path + ("var",), "same"),
    }


def _conv(torch_prefix: str, flax_path: Path, bias: bool = False) -> Dict[str, Target]:
    out = {f"{torch_prefix}.weight": Target("params", flax_path + ("kernel",), "conv")}
    if bias:
        out[f"{torch_prefix}.bias"] = Target("params", flax_path + ("bias",), "same")
    return out


def _linear(torch_prefix: str, flax_path: Path) -> Dict[str, Target]:
    return {
        f"{torch_prefix}.weight": Target("params", flax_path + ("kernel",), "linear"),
        f"{torch_prefix}.bias": Target("params", flax_path + ("bias",), "same"),
    }


def resnet_stage_map(
    depth: int, stage: int, torch_prefix: str, flax_path: Path
) -> Dict[str, Target]:
    """torchvision ``layer{stage}.{i}.*`` (under ``torch_prefix``) → our ``layer{stage}_{i}``."""
    n_convs = 3 if is_bottleneck(depth) else 2
    out: Dict[str, Target] = {}
    for i in range(STAGE_BLOCKS[depth][stage - 1]):
        t, f = f"{torch_prefix}layer{stage}.{i}", flax_path + (f"layer{stage}_{i}",)
        for c in range(1, n_convs + 1):
            out.update(_conv(f"{t}.conv{c}", f + (f"conv{c}",)))
            out.update(_bn(f"{t}.bn{c}", f + (f"bn{c}",)))
        # Block 0 of every stage has a projection shortcut for these ResNets (except layer1 of
        # ResNet-18/34, whose input already has the output width and stride 1).
        if i == 0 and (stage > 1 or is_bottleneck(depth)):
            out.update(_conv(f"{t}.downsample.0", f + ("downsample_conv",)))
            out.update(_bn(f"{t}.downsample.1", f + ("downsample_bn",)))
    return out


def _check_depth(depth: int) -> None:
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")


def imagenet_name_map(depth: int = 50) -> List[Tuple[str, Target]]:
    """torchvision ``resnet{depth}`` keys → our variables, as ``(torch key, Target)`` pairs.

    ``conv1``, ``bn1``, ``layer1..3`` go to the backbone; every ``layer4`` key appears twice, once
    for ``box_head`` and once for ``reid_head`` (both heads start from the same weights, §2.5).
    """
    _check_depth(depth)
    out: Dict[str, Target] = {}
    out.update(_conv("conv1", ("backbone", "conv1")))
    out.update(_bn("bn1", ("backbone", "bn1")))
    for stage in (1, 2, 3):
        out.update(resnet_stage_map(depth, stage, "", ("backbone",)))
    pairs = list(out.items())
    for head in ("box_head", "reid_head"):
        pairs.extend(resnet_stage_map(depth, 4, "", (head,)).items())
    return pairs


def torch_to_flax_name_map(depth: int = 50, bn_neck: bool = True) -> Dict[str, Target]:
    """Every reference SeqNet state-dict key (except ``num_batches_tracked``) → its :class:`Target`.

    In the reference's registration order (the order of ``reference_state_dict_keys.txt``).
    ``depth`` is the ResNet depth of ``config.model.backbone.depth``; ``bn_neck`` that of
    ``config.model.roi_head.bn_neck`` (without it the box regressor is a bare Linear).
    """
    _check_depth(depth)
    out: Dict[str, Target] = {}
    out.update(_conv("backbone.conv1", ("backbone", "conv1")))
    out.update(_bn("backbone.bn1", ("backbone", "bn1")))
    for stage in (1, 2, 3):
        out.update(resnet_stage_map(depth, stage, "backbone.", ("backbone",)))
    for name in ("conv", "cls_logits", "bbox_pred"):
        out.update(_conv(f"rpn.head.{name}", ("rpn_head", name), bias=True))
    out.update(resnet_stage_map(depth, 4, "roi_heads.box_head.", ("box_head",)))
    if bn_neck:
        out.update(_linear("roi_heads.box_predictor.bbox_pred.0", ("box_predictor", "bbox_pred")))
        out.update(_bn("roi_heads.box_predictor.bbox_pred.1", ("box_predictor", "bbox_pred_bn")))
    else:
        out.update(_linear("roi_heads.box_predictor.bbox_pred", ("box_predictor", "bbox_pred")))
    for f in ("feat_res4", "feat_res5"):
        t = f"roi_heads.embedding_head.projectors.{f}"
        out.update(_linear(f"{t}.0", ("embedding_head", f"proj_{f}")))
        out.update(_bn(f"{t}.1", ("embedding_head", f"proj_{f}_bn")))
    out.update(_bn("roi_heads.embedding_head.rescaler", ("embedding_head", "rescaler")))
    out["roi_heads.reid_loss.lut"] = Target("oim_state", ("reid_loss", "lut"), "same")
    out["roi_heads.reid_loss.cq"] = Target("oim_state", ("reid_loss", "cq"), "same")
    for name in ("cls_score", "bbox_pred"):
        out.update(
            _linear(f"roi_heads.faster_rcnn_predictor.{name}", ("faster_rcnn_predictor", name))
        )
    out.update(resnet_stage_map(depth, 4, "roi_heads.reid_head.", ("reid_head",)))
    return out


# -- layout conversion ----------------------------------------------------------------------------
def to_flax_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """torch layout → ours (see :class:`Target`)."""
    if layout == "conv":
        return np.transpose(x, (2, 3, 1, 0))
    if layout == "linear":
        return np.transpose(x, (1, 0))
    return x


def to_torch_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """Our layout → torch's (inverse of :func:`to_flax_layout`)."""
    if layout == "conv":
        return np.transpose(x, (3, 2, 0, 1))
    if layout == "linear":
        return np.transpose(x, (1, 0))
    return x


def torch_shape(flax_shape: Tuple[int, ...], layout: str) -> Tuple[int, ...]:
    """The torch shape that converts to ``flax_shape``."""
    s = tuple(int(d) for d in flax_shape)
    if layout == "conv" and len(s) == 4:
        return (s[3], s[2], s[0], s[1])
    if layout == "linear" and len(s) == 2:
        return (s[1], s[0])
    return s


# -- variables helpers ----------------------------------------------------------------------------
def _flatten(tree: Mapping, prefix: Path = ()) -> Dict[Path, Any]:
    out: Dict[Path, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[Path, Any]) -> Dict:
    out: Dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _flat_variables(variables: Mapping) -> Dict[Tuple[str, Path], Any]:
    out = {}
    for col, tree in variables.items():
        for path, v in _flatten(tree).items():
            out[(col, path)] = v
    return out


def _var_name(col: str, path: Path) -> str:
    return col + "/" + "/".join(path)


@dataclasses.dataclass
class ModelLayout:
    """What the structure of a variables tree (or of a checkpoint) says about its model."""

    depth: int
    width: int
    emb_dim: Optional[int] = None
    lut_size: Optional[int] = None
    cq_size: Optional[int] = None
    bn_neck: bool = True


def _depth_from_blocks(blocks: Tuple[int, ...], bottleneck: bool) -> Optional[int]:
    for d, b in STAGE_BLOCKS.items():
        if b == blocks and is_bottleneck(d) == bottleneck:
            return d
    return None


def _describe_blocks(blocks: Tuple[int, ...], bottleneck: bool) -> str:
    depth = _depth_from_blocks(blocks, bottleneck)
    kind = "bottleneck" if bottleneck else "basic"
    name = f"ResNet-{depth}" if depth else "an unknown ResNet"
    return f"{name} ({kind} blocks per stage {blocks})"


def model_layout(variables: Mapping) -> ModelLayout:
    """Depth, width, embedding size, OIM sizes and BN-neck flag of a SeqNet variables tree.

    Leaves may be arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
    """
    p = variables["params"]
    bb = p["backbone"]
    blocks = tuple(sum(1 for k in bb if re.fullmatch(rf"layer{s}_\d+", k)) for s in (1, 2, 3)) + (
        sum(1 for k in p.get("box_head", {}) if re.fullmatch(r"layer4_\d+", k)),
    )
    bottleneck = "conv3" in bb["layer1_0"]
    depth = _depth_from_blocks(blocks, bottleneck)
    if depth is None:
        raise ValueError(f"variables describe {_describe_blocks(blocks, bottleneck)}")
    width = int(bb["conv1"]["kernel"].shape[-1])
    out = ModelLayout(depth, width)
    eh = p.get("embedding_head")
    if eh is not None:
        out.emb_dim = int(eh["proj_feat_res4"]["kernel"].shape[1]) + int(
            eh["proj_feat_res5"]["kernel"].shape[1]
        )
    bp = p.get("box_predictor")
    if bp is not None:
        out.bn_neck = "bbox_pred_bn" in bp
    oim = variables.get("oim_state", {}).get("reid_loss")
    if oim is not None:
        out.lut_size = int(oim["lut"].shape[0])
        out.cq_size = int(oim["cq"].shape[0])
    return out


def _checkpoint_blocks(state_dict: Mapping[str, Any], prefixes: Dict[int, str]):
    """Blocks per stage and block type from torchvision-style keys (``{stage: prefix}``)."""
    blocks = []
    for stage in (1, 2, 3, 4):
        pat = re.compile(re.escape(prefixes[stage]) + rf"layer{stage}\.(\d+)\.")
        idx = {int(m.group(1)) for k in state_dict if (m := pat.match(k))}
        blocks.append(max(idx) + 1 if idx else 0)
    bottleneck = any(k.startswith(prefixes[1] + "layer1.0.conv3.") for k in state_dict)
    return tuple(blocks), bottleneck


def _blocks_differ(blocks: Tuple[int, ...], bottleneck: bool, depth: int) -> bool:
    """Whether checkpoint stages that are present disagree with ResNet-``depth`` (absent stages
    are left to the missing-key report)."""
    ours = STAGE_BLOCKS[depth]
    if any(b and b != o for b, o in zip(blocks, ours, strict=True)):
        return True
    return bool(blocks[0]) and bottleneck != is_bottleneck(depth)


# -- reading files --------------------------------------------------------------------------------
def _to_numpy(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return v


def _unwrap(obj: Any) -> Tuple[StateDict, Dict[str, Any]]:
    """``{'model': sd, ...}`` / ``{'state_dict': sd}`` / ``sd`` → ``(flat sd, other entries)``."""
    extras: Dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                extras = {k: v for k, v in obj.items() if k != wrapper}
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"expected a state dict (a mapping of names to tensors), got {type(obj)}")
    sd = {str(k): _to_numpy(v) for k, v in obj.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ValueError(f"state dict entries that are not tensors: {bad[:5]}")
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, extras


class WeightsFileError(ValueError):
    """A file that should hold weights does not (names the file and, when known, the field)."""


def _describe_bytes(head: bytes) -> str:
    for magic, what in (
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x89PNG", "a PNG image"),
        (b"GIF8", "a GIF image"),
        (b"\x1f\x8b", "a gzip archive"),
        (b"{", "a JSON / text file"),
    ):
        if head.startswith(magic):
            return what
    return "neither a torch pickle/zip nor a .npz"


def read_checkpoint_file(
    path: str, weights_only: bool = True, field: str = ""
) -> Tuple[StateDict, Dict[str, Any]]:
    """Read a ``.pth``/``.pt`` (needs torch) or ``.npz`` file → ``(state dict, other entries)``.

    ``other entries`` are the non-model items of a reference training checkpoint (``epoch``…;
    the optimizer state is dropped). ``weights_only=False`` allows arbitrary pickles: only for
    files you trust. A file that holds no state dict (an image, random bytes, a truncated file)
    raises :class:`WeightsFileError` naming it and ``field`` (the config field that named it).
    """
    path = os.fspath(path)
    where = f" (set by --config.{field})" if field else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}{where}")

    def bad(reason: str) -> WeightsFileError:
        return WeightsFileError(f"{path} is not a state-dict / checkpoint file{where}: {reason}")

    with open(path, "rb") as f:
        head = f.read(8)
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"
    if path.endswith(".npz") or (is_zip and _is_npz(path)):
        try:
            with np.load(path, allow_pickle=False) as z:
                sd = {k: np.asarray(z[k]) for k in z.files}
        except Exception as e:  # BadZipFile, pickled-data ValueError, truncated members, ...
            raise bad(f"not a readable .npz of arrays ({type(e).__name__}: {e})") from e
        if not sd:
            raise bad("the .npz holds no arrays")
        return sd, {}
    if not (is_zip or is_pickle):
        raise bad(f"it is {_describe_bytes(head)}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {path}{where} needs PyTorch (pip install torch), or convert it once "
            f"elsewhere with 'python -m seqnet_jax.weights convert {os.path.basename(path)} "
            "OUT.npz' and pass the .npz file"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as e:
        raise bad(f"torch.load failed ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    try:
        sd, extras = _unwrap(obj)
    except ValueError as e:
        raise bad(str(e)) from e
    extras = {k: v for k, v in extras.items() if isinstance(v, (int, float, str))}
    return sd, extras


def _is_npz(path: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except zipfile.BadZipFile:
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def read_state_dict(
    path_or_state_dict: Union[str, os.PathLike, Mapping], field: str = ""
) -> StateDict:
    """A flat ``{key: np.ndarray}`` from a file path or an in-memory (torch or numpy) state dict."""
    if isinstance(path_or_state_dict, Mapping):
        return _unwrap(path_or_state_dict)[0]
    return read_checkpoint_file(path_or_state_dict, field=field)[0]


# -- the import -----------------------------------------------------------------------------------
@dataclasses.dataclass
class ImportReport:
    """What an import did. Keys are torch state-dict keys; ``not_covered`` names our variables
    (``collection/path``) that no key wrote (they keep their previous value)."""

    loaded: List[str] = dataclasses.field(default_factory=list)
    missing: List[str] = dataclasses.field(default_factory=list)
    unused: List[str] = dataclasses.field(default_factory=list)
    ignored: List[str] = dataclasses.field(default_factory=list)
    not_covered: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        def few(keys: List[str]) -> str:
            return ", ".join(keys[:8]) + (f", … ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.ignored:
            lines.append(f"ignored {len(self.ignored)} num_batches_tracked buffers (unused)")
        if self.missing:
            lines.append(f"MISSING from the checkpoint ({len(self.missing)}): {few(self.missing)}")
        if self.unused:
            lines.append(f"UNUSED checkpoint keys ({len(self.unused)}): {few(self.unused)}")
        if self.not_covered:
            lines.append(
                f"model variables not set by the checkpoint (kept): {few(self.not_covered)}"
            )
        return "; ".join(lines)


def _assign(
    variables: Mapping,
    state_dict: Mapping[str, np.ndarray],
    pairs: Iterable[Tuple[str, Target]],
    what: str,
) -> Tuple[Dict, ImportReport]:
    """Copy ``state_dict[key]`` into ``variables`` for every ``(key, Target)``; shape-checked."""
    import jax.numpy as jnp

    flat = _flat_variables(variables)
    report = ImportReport()
    written = set()
    mapped_keys = set()
    for key, t in pairs:
        mapped_keys.add(key)
        dest = (t.collection, t.path)
        if dest not in flat:
            raise KeyError(
                f"internal name map error: {key} → {_var_name(*dest)}, which the model lacks"
            )
        if key not in state_dict:
            if key not in report.missing:
                report.missing.append(key)
            continue
        leaf = flat[dest]
        value = np.asarray(state_dict[key])
        expected = torch_shape(leaf.shape, t.layout)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"{what}: shape mismatch for {key}: expected {expected} (our "
                f"{_var_name(*dest)} has {tuple(leaf.shape)}), got {tuple(value.shape)}"
            )
        flat[dest] = jnp.asarray(to_flax_layout(value, t.layout), dtype=leaf.dtype)
        written.add(dest)
        if key not in report.loaded:
            report.loaded.append(key)
    for key in state_dict:
        if key in mapped_keys:
            continue
        (report.ignored if key.endswith(_IGNORED_SUFFIX) else report.unused).append(key)
    report.not_covered = [_var_name(*d) for d in flat if d not in written]
    cols: Dict[str, Dict[Path, Any]] = {}
    for (col, path), v in flat.items():
        cols.setdefault(col, {})[path] = v
    out = {col: _unflatten(f) for col, f in cols.items()}
    for col in variables:  # empty collections
        out.setdefault(col, {})
    return out, report


def _check_reference_structure(layout: ModelLayout, sd: Mapping[str, np.ndarray]) -> None:
    """Clear errors for a checkpoint of a differently built model (before per-key checks)."""
    prefixes = {1: "backbone.", 2: "backbone.", 3: "backbone.", 4: "roi_heads.box_head."}
    blocks, bottleneck = _checkpoint_blocks(sd, prefixes)
    if _blocks_differ(blocks, bottleneck, layout.depth):
        theirs = _depth_from_blocks(blocks, bottleneck)
        hint = f"; set --config.model.backbone.depth={theirs}" if theirs else ""
        raise ValueError(
            f"the checkpoint was built with {_describe_blocks(blocks, bottleneck)} but the "
            f"model is ResNet-{layout.depth}{hint}"
        )
    w = sd.get("backbone.conv1.weight")
    if w is not None and w.ndim == 4 and int(w.shape[0]) != layout.width:
        raise ValueError(
            f"the checkpoint's ResNet has width {int(w.shape[0])} (backbone.conv1.weight "
            f"{tuple(w.shape)}) but the model has {layout.width}; set "
            f"--config.model.backbone.width={int(w.shape[0])}"
        )
    p4 = sd.get("roi_heads.embedding_head.projectors.feat_res4.0.weight")
    p5 = sd.get("roi_heads.embedding_head.projectors.feat_res5.0.weight")
    if p4 is not None and p5 is not None and layout.emb_dim is not None:
        emb = int(p4.shape[0]) + int(p5.shape[0])
        if emb != layout.emb_dim:
            raise ValueError(
                f"the checkpoint's embedding has {emb} dimensions (projectors feat_res4 "
                f"{tuple(p4.shape)}, feat_res5 {tuple(p5.shape)}) but the model's has "
                f"{layout.emb_dim}; set --config.model.emb_dim={emb}"
            )
    has_neck = "roi_heads.box_predictor.bbox_pred.1.weight" in sd
    bare = "roi_heads.box_predictor.bbox_pred.weight" in sd
    if (has_neck and not layout.bn_neck) or (bare and layout.bn_neck):
        raise ValueError(
            f"the checkpoint's box regressor {'has' if has_neck else 'has no'} BN neck but the "
            f"model's {'has' if layout.bn_neck else 'has not'}; set "
            f"--config.model.roi_head.bn_neck={has_neck}"
        )
    for key, name, ours, flag in (
        (OIM_KEYS[0], "lookup table (labeled identities)", layout.lut_size, "lut_size"),
        (OIM_KEYS[1], "circular queue", layout.cq_size, "cq_size"),
    ):
        v = sd.get(key)
        if v is None or ours is None or v.ndim != 2:
            continue
        if int(v.shape[0]) != ours:
            raise ValueError(
                f"the checkpoint's OIM {name} {key} has {int(v.shape[0])} rows but the model's "
                f"has {ours}: set --config.model.oim.{flag}={int(v.shape[0])} (the released PRW "
                "model has lut 482 / cq 500, CUHK-SYSU 5532 / 5000; for evaluation only the "
                "embedding path matters, so matching the checkpoint is safe)"
            )


# Other spellings of reference keys, by the torchvision that saved them: the reference code run
# under torchvision >= 0.13 builds torchvision's RPNHead v2, whose 3x3 conv is
# ``Sequential(Conv2dNormActivation(Conv2d))`` (torchvision itself maps the old names on load).
KEY_LAYOUTS: Dict[str, Dict[str, str]] = {
    "torchvision >= 0.13 (RPNHead v2)": {
        "rpn.head.conv.0.0.weight": "rpn.head.conv.weight",
        "rpn.head.conv.0.0.bias": "rpn.head.conv.bias",
    },
}


def normalize_reference_keys(sd: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Rename the keys of the other known layouts (:data:`KEY_LAYOUTS`) to the released one.

    Returns ``(state dict, names of the layouts found)``. A key present in both spellings is an
    error (the file would hold two different tensors for one weight).
    """
    out = dict(sd)
    found = []
    for layout, renames in KEY_LAYOUTS.items():
        hits = [k for k in renames if k in out]
        if not hits:
            continue
        found.append(layout)
        for k in hits:
            if renames[k] in out:
                raise ValueError(
                    f"the checkpoint has both {k} ({layout}) and {renames[k]} (released layout)"
                )
            out[renames[k]] = out.pop(k)
    return out, found


def _other_spellings(key: str) -> List[str]:
    return [
        f"{alt} ({layout})" for layout, r in KEY_LAYOUTS.items() for alt, k in r.items() if k == key
    ]


def _unplaced_keys_message(missing: List[str], unused: List[str], sd: Mapping) -> str:
    """Names the model keys no checkpoint key could be placed into, how they are spelled in the
    layouts we know, and what the checkpoint has that looks like them."""
    import difflib

    lines = []
    for k in missing[:8]:
        spell = [f"{k} (released layout)"] + _other_spellings(k)
        near = difflib.get_close_matches(k, unused, n=3, cutoff=0.6)
        near = [f"{u} {tuple(np.shape(sd[u]))}" for u in near]
        lines.append(
            f"  {k}: expected as {' or '.join(spell)}"
            + (f"; the checkpoint has {', '.join(near)}" if near else "")
        )
    more = f"\n  … ({len(missing)} in all)" if len(missing) > 8 else ""
    return (
        f"could not place {len(missing)} weights of the model from the checkpoint (an unknown "
        "key layout, or not a SeqNet checkpoint of this architecture):\n"
        + "\n".join(lines)
        + more
        + (f"\nunused checkpoint keys: {', '.join(unused[:8])}" if unused else "")
    )


def import_reference_state_dict(
    variables: Mapping, state_dict: Mapping[str, Any], allow_missing: bool = False
) -> Tuple[Dict, ImportReport]:
    """Reference SeqNet state dict → ``(new variables, report)``; ``variables`` is not modified.

    Accepts the released key layout and those of :data:`KEY_LAYOUTS` (the reference code saved
    under newer torchvision). Raises ``ValueError`` on a differently built model (depth, width,
    embedding size, BN neck, OIM sizes: the message names the config field to set), on any shape
    mismatch (naming the key, the expected and the got shape), and on model weights the
    checkpoint does not hold (naming them, their spelling in the known layouts and the
    checkpoint's nearest keys) unless ``allow_missing`` (a library option that keeps the model's
    values; missing OIM buffers only warn: they do not affect evaluation).
    """
    sd, layouts = normalize_reference_keys(read_state_dict(state_dict))
    if layouts:
        logging.info("reference checkpoint keys in the layout of %s", ", ".join(layouts))
    layout = model_layout(variables)
    _check_reference_structure(layout, sd)
    name_map = torch_to_flax_name_map(layout.depth, layout.bn_neck)
    out, report = _assign(variables, sd, name_map.items(), "reference checkpoint")
    hard_missing = [k for k in report.missing if k not in OIM_KEYS]
    if hard_missing and not allow_missing:
        raise ValueError(_unplaced_keys_message(hard_missing, report.unused, sd))
    return out, report


def load_reference_checkpoint(
    variables: Mapping,
    path_or_state_dict: Union[str, os.PathLike, Mapping],
    allow_missing: bool = False,
) -> Dict:
    """Import a released PyTorch SeqNet checkpoint (``.pth``, ``.npz`` or a state dict).

    See :func:`import_reference_state_dict`; the report is logged (warnings for missing/unused).
    """
    src = path_or_state_dict if not isinstance(path_or_state_dict, Mapping) else "<state dict>"
    sd = read_state_dict(path_or_state_dict, field="init.reference_checkpoint")
    out, report = import_reference_state_dict(variables, sd, allow_missing)
    log = logging.warning if (report.missing or report.unused) else logging.info
    log("reference checkpoint %s: %s", src, report.summary())
    return out


def import_imagenet_state_dict(
    variables: Mapping, state_dict: Mapping[str, Any]
) -> Tuple[Dict, ImportReport]:
    """torchvision ResNet state dict → ``(new variables, report)``: stem + both res5 heads.

    Every stem/head key must be present and of the right shape (``ValueError`` otherwise);
    ``fc.*`` is reported as unused.
    """
    sd = read_state_dict(state_dict)
    layout = model_layout(variables)
    blocks, bottleneck = _checkpoint_blocks(sd, {s: "" for s in (1, 2, 3, 4)})
    if _blocks_differ(blocks, bottleneck, layout.depth):
        theirs = _depth_from_blocks(blocks, bottleneck)
        hint = f"; set --config.model.backbone.depth={theirs}" if theirs else ""
        raise ValueError(
            f"the ImageNet weights are {_describe_blocks(blocks, bottleneck)} but the model is "
            f"ResNet-{layout.depth}{hint} (or download resnet{layout.depth}: "
            f"{IMAGENET_URLS[layout.depth]})"
        )
    w = sd.get("conv1.weight")
    if w is not None and w.ndim == 4 and int(w.shape[0]) != layout.width:
        raise ValueError(
            f"ImageNet weights have width {int(w.shape[0])} (conv1.weight {tuple(w.shape)}) but "
            f"the model has backbone.width={layout.width}: ImageNet init needs width 64"
        )
    out, report = _assign(variables, sd, imagenet_name_map(layout.depth), "ImageNet weights")
    if report.missing:
        raise ValueError(
            f"the ImageNet state dict lacks {len(report.missing)} keys of "
            f"resnet{layout.depth} (e.g. {', '.join(report.missing[:5])}); is it a torchvision "
            "ResNet state dict?"
        )
    return out, report


def load_imagenet_into(variables: Mapping, path: Union[str, os.PathLike], model_cfg=None) -> Dict:
    """Initialise the stem and both res5 heads from a torchvision ImageNet ResNet file.

    ``path``: a ``.pth`` state dict as torchvision downloads it (needs torch) or a ``.npz`` made
    by ``python -m seqnet_jax.weights convert``. ``model_cfg`` (``config.model``, optional) is
    checked against the variables' architecture.
    """
    layout = model_layout(variables)
    depth = layout.depth
    if model_cfg is not None:
        cfg_depth = int(model_cfg.backbone.depth)
        if cfg_depth != depth:
            raise ValueError(f"model config depth {cfg_depth} != the variables' depth {depth}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        url = IMAGENET_URLS.get(depth, IMAGENET_URLS[50])
        raise FileNotFoundError(
            f"ImageNet weights not found: {path!r}. Download torchvision's resnet{depth} "
            f'ImageNet weights once, e.g.\n  wget {url}\n(or python -c "import torchvision; '
            f"torchvision.models.resnet{depth}(weights='IMAGENET1K_V1')\", which stores it in "
            "~/.cache/torch/hub/checkpoints/), then pass "
            f"--config.init.imagenet_weights=/path/to/{os.path.basename(url)} "
            "(or a .npz made by 'python -m seqnet_jax.weights convert'); set "
            "--config.init.imagenet_weights='' to train from scratch"
        )
    sd = read_checkpoint_file(path, field="init.imagenet_weights")[0]
    out, report = import_imagenet_state_dict(variables, sd)
    logging.info("ImageNet weights %s: %s", path, report.summary())
    return out


# -- export (the inverse map; tests and round trips) ----------------------------------------------
def export_reference_state_dict(
    variables: Mapping, include_num_batches_tracked: bool = False
) -> StateDict:
    """Our variables → a reference-format state dict of numpy arrays (torch layouts), in the
    reference's key order. ``num_batches_tracked`` (int64 zeros) is added after each BN's
    ``running_var`` if asked."""
    layout = model_layout(variables)
    flat = _flat_variables(variables)
    out: StateDict = {}
    for key, t in torch_to_flax_name_map(layout.depth, layout.bn_neck).items():
        out[key] = to_torch_layout(np.asarray(flat[(t.collection, t.path)]), t.layout)
        if include_num_batches_tracked and key.endswith(".running_var"):
            out[key[: -len(".running_var")] + _IGNORED_SUFFIX] = np.zeros((), np.int64)
    return out


# -- command line ---------------------------------------------------------------------------------
def convert_file(src: str, dst: str) -> int:
    """``.pth`` → ``.npz`` (the flat model state dict); returns the number of tensors."""
    sd, _ = read_checkpoint_file(src)
    if not dst.endswith(".npz"):
        raise ValueError(f"output must end with .npz, got {dst}")
    np.savez(dst, **sd)
    return len(sd)


if __name__ == "__main__":
    # ``python -m seqnet_jax.weights ...``: the command line (convert, to_orbax) is in
    # seqnet_jax.weights_cli, which needs the model loader and the train state; both import this
    # module, so it must not import them.
    from seqnet_jax.weights_cli import main

    sys.exit(main())
