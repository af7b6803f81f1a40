"""Loading a trained model for inference: one function for every source of weights.

    loaded = load_model(config, workdir)  # the source the config names
    loaded.model, loaded.variables, loaded.num_pids, loaded.source_id

Sources:

* **a workdir's orbax checkpoint** ``WORKDIR/checkpoints/<step>`` (step ``eval.checkpoint``, or
  the latest): :func:`load_orbax_checkpoint`;
* **a released checkpoint of the reference implementation** (``init.reference_checkpoint``):
  the PyTorch ``.pth`` (reading it needs torch) or the same state dict converted to ``.npz``
  (``python -m seqnet_jax.weights convert``): :func:`load_reference_checkpoint_model`. No workdir
  is needed.

Every source goes through the same fit check first (:func:`check_variables_fit`): the
checkpoint's ``params``/``batch_stats`` arrays against the model ``config.model`` builds. A
mismatch raises :class:`CheckpointMismatchError` naming the arrays that differ and the config
fields to set (from the workdir's ``config.json`` when training wrote one, otherwise from what the
checkpoint's arrays say about depth, width, embedding size and BN neck).

The OIM lookup-table size (the number of training identities) is read from the checkpoint, not
from the config or a dataset: it only matters for training, and a model trained on one dataset can
be evaluated on another. ``model.oim.lut_size`` differing from the checkpoint is logged.

Used by evaluation (``run.evaluate_checkpoint``), search (``seqnet_jax.search``) and the weights
command line (``python -m seqnet_jax.weights to_orbax``), so they all agree on a workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Dict, Mapping, Optional, Union

import jax
import numpy as np
from absl import logging

from seqnet_jax import checkpoints as ckpt_lib
from seqnet_jax import weights
from seqnet_jax.modeling import seqnet
from seqnet_jax.modeling.backbone import STAGE_BLOCKS

# The model fields that the shapes of a checkpoint's arrays determine (ModelLayout attribute →
# config field).
_LAYOUT_FIELDS = (
    ("depth", "model.backbone.depth"),
    ("width", "model.backbone.width"),
    ("emb_dim", "model.emb_dim"),
    ("bn_neck", "model.roi_head.bn_neck"),
)


class CheckpointMismatchError(ValueError):
    """The checkpoint's arrays do not fit the model built from the config."""


@dataclasses.dataclass
class LoadedModel:
    """A model ready for ``SeqNetInference(model, variables, config.model)``.

    Attributes:
      model: the SeqNet module built from ``config.model`` (its lookup table sized as the
        checkpoint's).
      variables: ``{"params", "batch_stats"}`` (what inference needs).
      num_pids: rows of the checkpoint's OIM lookup table (labeled training identities).
      source_id: identifies the weights: ``orbax:<checkpoints dir>:<step>:<mtime_ns>`` or
        ``reference:<file>:<size>:<mtime_ns>`` (the search index's fingerprint uses it).
      name: a short name for output folders: ``step<N>`` or ``reference_<file name>``.
      step: the orbax step (None for a reference checkpoint).
      oim_state: the checkpoint's OIM lookup table / circular queue (``{"reid_loss": {"lut",
        "cq"}}``; None when the checkpoint has none). Not used by inference.
      meta: the orbax checkpoint's metadata, or the non-model entries of a reference
        checkpoint (``epoch``, ...).
    """

    model: seqnet.SeqNet
    variables: Dict[str, Any]
    num_pids: int
    source_id: str
    name: str
    step: Optional[int] = None
    oim_state: Optional[Dict[str, Any]] = None
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)


def load_model(config, workdir: Optional[str] = None) -> LoadedModel:
    """The model and inference variables the config names: ``init.reference_checkpoint`` (a
    ``.pth`` or ``.npz``) when set, otherwise ``WORKDIR``'s orbax checkpoint ``eval.checkpoint``
    (or the latest)."""
    if config.init.reference_checkpoint:
        return load_reference_checkpoint_model(config, config.init.reference_checkpoint)
    if not workdir:
        raise ValueError(
            "no weights to load: pass a workdir with checkpoints, or set "
            "--config.init.reference_checkpoint=PATH (a released PyTorch .pth or its .npz)"
        )
    step = int(config.eval.checkpoint) if config.eval.checkpoint else None
    return load_orbax_checkpoint(config, workdir, step)


@functools.lru_cache(maxsize=8)
def abstract_variables(model: seqnet.SeqNet) -> Dict[str, Any]:
    """Shapes/dtypes of ``model``'s variables (``jax.ShapeDtypeStruct`` leaves, nothing is
    computed; cached per model configuration, tracing the model takes about a second)."""
    return jax.eval_shape(lambda r: seqnet.init_variables(model, r), jax.random.PRNGKey(0))


# -- orbax ----------------------------------------------------------------------------------------
def load_orbax_checkpoint(config, workdir: str, step: Optional[int] = None) -> LoadedModel:
    """Step ``step`` (None = the latest) of ``WORKDIR/checkpoints``: the model built from
    ``config.model`` with the checkpoint's lookup-table size, fit-checked, and its variables."""
    from jax.sharding import SingleDeviceSharding

    directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    ckpt = None
    if os.path.isdir(directory):
        ckpt = ckpt_lib.Checkpointer(directory, read_only=True)
        steps = ckpt.all_steps()
        if step is None:
            step = ckpt.latest_step()
        elif step not in steps:
            ckpt.close()
            raise FileNotFoundError(f"no checkpoint step {step} in {directory}: {sorted(steps)}")
    if ckpt is None or step is None:
        if ckpt is not None:
            ckpt.close()
        raise FileNotFoundError(
            f"no checkpoint in {directory}: train first, or set "
            "--config.init.reference_checkpoint=PATH (a released PyTorch .pth or its .npz)"
        )
    try:
        dev = SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=dev),
            ckpt.state_metadata(step),
        )
        target = dict(target)
        lut = dict(target.get("oim_state", {})).get("reid_loss", {}).get("lut")
        source = ckpt.step_directory(step)
        num_pids = _num_pids(config, None if lut is None else int(lut.shape[0]), source)
        model = seqnet.build_model(config.model, num_pids)
        abstract = abstract_variables(model)
        hint = trained_config_diff(workdir, config) or _layout_hint(target, abstract)
        check_variables_fit(target, abstract, source, hint)
        tree = ckpt.restore_state_tree(step, target)
        meta = ckpt.restore_meta(step)
    finally:
        ckpt.close()
    mtime = os.stat(source).st_mtime_ns
    return LoadedModel(
        model=model,
        variables={"params": tree["params"], "batch_stats": tree["batch_stats"]},
        num_pids=num_pids,
        source_id=f"orbax:{directory}:{step}:{mtime}",
        name=f"step{step}",
        step=int(step),
        oim_state=tree.get("oim_state"),
        meta=meta,
    )


# -- reference checkpoints ------------------------------------------------------------------------
def load_reference_checkpoint_model(
    config, checkpoint: Union[str, os.PathLike, Mapping]
) -> LoadedModel:
    """A released reference checkpoint (``.pth``, ``.npz`` or an in-memory state dict): the model
    built from ``config.model`` with the checkpoint's lookup-table and queue sizes, fit-checked,
    and its imported variables."""
    if isinstance(checkpoint, Mapping):
        sd, extras = weights.read_state_dict(checkpoint), {}
        source, source_id, name = "<state dict>", "reference:<state dict>", "reference_state_dict"
    else:
        path = os.path.abspath(os.fspath(checkpoint))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"init.reference_checkpoint {path} does not exist")
        sd, extras = weights.read_checkpoint_file(path, field="init.reference_checkpoint")
        st = os.stat(path)
        source, name = path, "reference_" + os.path.basename(path)
        source_id = f"reference:{path}:{st.st_size}:{st.st_mtime_ns}"
    sd, _ = weights.normalize_reference_keys(sd)  # e.g. saved under torchvision >= 0.13
    rows = {}
    for key, size in zip(weights.OIM_KEYS, ("lut", "cq"), strict=True):
        v = sd.get(key)
        rows[size] = int(v.shape[0]) if v is not None and v.ndim == 2 else None
    num_pids = _num_pids(config, rows["lut"], source)
    model_cfg = config.model
    if rows["cq"] is not None and rows["cq"] != int(model_cfg.oim.cq_size):
        model_cfg = model_cfg.copy_and_resolve_references()  # the queue only matters in training
        model_cfg.oim.cq_size = rows["cq"]
    model = seqnet.build_model(model_cfg, num_pids)
    abstract = abstract_variables(model)
    ckpt_tree = _reference_variable_tree(sd)
    check_variables_fit(ckpt_tree, abstract, source, _layout_hint(ckpt_tree, abstract))
    template = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    variables, report = weights.import_reference_state_dict(template, sd)
    log = logging.warning if (report.missing or report.unused) else logging.info
    log("reference checkpoint %s: %s", source, report.summary())
    return LoadedModel(
        model=model,
        variables={"params": variables["params"], "batch_stats": variables["batch_stats"]},
        num_pids=num_pids,
        source_id=source_id,
        name=name,
        oim_state=variables.get("oim_state") if rows["lut"] is not None else None,
        meta=dict(extras),
    )


@functools.lru_cache(maxsize=None)
def _reference_name_map() -> Dict[str, weights.Target]:
    """Every reference state-dict key of any supported depth, with and without BN neck."""
    out: Dict[str, weights.Target] = {}
    for depth in STAGE_BLOCKS:
        for bn_neck in (True, False):
            out.update(weights.torch_to_flax_name_map(depth, bn_neck))
    return out


def _reference_variable_tree(sd: Mapping[str, np.ndarray]) -> Dict[str, Any]:
    """A reference state dict as a variables tree in our names and layouts (views, no copies).

    Keys no SeqNet of any depth has are left out (the import reports them as unused)."""
    name_map = _reference_name_map()
    tree: Dict[str, Any] = {}
    for key, value in sd.items():
        t = name_map.get(key)
        if t is None:
            continue
        node = tree.setdefault(t.collection, {})
        for k in t.path[:-1]:
            node = node.setdefault(k, {})
        node[t.path[-1]] = weights.to_flax_layout(np.asarray(value), t.layout)
    return tree


# -- the fit check --------------------------------------------------------------------------------
def _num_pids(config, checkpoint_rows: Optional[int], source: str) -> int:
    configured = int(config.model.oim.lut_size)
    if checkpoint_rows is None:
        return max(configured, 1)
    if 0 < configured != checkpoint_rows:
        logging.warning(
            "model.oim.lut_size=%d but the checkpoint %s has %d identities: the model is built "
            "with the checkpoint's (the lookup table is only used in training)",
            configured,
            source,
            checkpoint_rows,
        )
    return checkpoint_rows


def _keystr(path) -> str:
    parts = []
    for k in path:
        parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
    return "/".join(parts)


def _flat_shapes(tree) -> Dict[str, tuple]:
    return {
        _keystr(p): tuple(int(d) for d in leaf.shape)
        for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _flat_dict(d: dict, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_dict(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def trained_config_diff(workdir: str, config) -> str:
    """Model fields where ``WORKDIR/config.json`` (written by training) differs from ``config``."""
    path = os.path.join(workdir, "config.json")
    try:
        with open(path) as f:
            trained = json.load(f).get("model", {})
    except (OSError, ValueError):
        return ""
    ours = json.loads(json.dumps(config.model.to_dict(), default=list))
    a, b = _flat_dict(trained), _flat_dict(ours)
    diffs = [
        f"model.{k}={a.get(k)!r} (config: {b.get(k)!r})"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    if not diffs:
        return ""
    return (
        f" The checkpoint was trained with {', '.join(diffs[:8])}"
        f"{' ...' if len(diffs) > 8 else ''} [from {path}]."
    )


def _layout_hint(ckpt_tree: Mapping, abstract: Mapping) -> str:
    """The config fields that the checkpoint's array shapes contradict, e.g.
    ``model.emb_dim=128 (config: 256)``; '' when none or when the arrays say nothing clear."""
    try:
        theirs = weights.model_layout(ckpt_tree)
        ours = weights.model_layout(abstract)
    except (KeyError, ValueError, TypeError, AttributeError, IndexError):
        return ""
    diffs = [
        f"{field}={getattr(theirs, attr)!r} (config: {getattr(ours, attr)!r})"
        for attr, field in _LAYOUT_FIELDS
        if getattr(theirs, attr) is not None and getattr(theirs, attr) != getattr(ours, attr)
    ]
    return f" Its arrays are those of a model with {', '.join(diffs)}." if diffs else ""


def check_variables_fit(ckpt_tree: Mapping, abstract: Mapping, source: str, hint: str = "") -> None:
    """Raise ``CheckpointMismatchError`` naming every ``params``/``batch_stats`` array whose
    presence or shape differs between a checkpoint and the model built from the config.

    ``ckpt_tree`` and ``abstract`` are variables trees (leaves with a ``shape``: arrays,
    ``jax.ShapeDtypeStruct`` or orbax metadata). ``hint`` (e.g. the differing config fields) is
    put first in the message.
    """
    cols = ("params", "batch_stats")
    want = _flat_shapes({k: abstract[k] for k in cols})
    have = _flat_shapes({k: ckpt_tree.get(k, {}) for k in cols})

    def order(k: str):  # parameters before BN statistics, then alphabetical
        return (not k.startswith("params/"), k)

    wrong = [
        f"{k}: checkpoint {have[k]} vs config {want[k]}"
        for k in sorted(want, key=order)
        if k in have and have[k] != want[k]
    ]
    missing = sorted(set(want) - set(have), key=order)
    extra = sorted(set(have) - set(want), key=order)
    if not (wrong or missing or extra):
        return
    parts = []
    if wrong:
        parts.append(f"{len(wrong)} array(s) have another shape, e.g. " + "; ".join(wrong[:3]))
    if missing:
        parts.append(
            f"{len(missing)} array(s) of the model are not in the checkpoint, e.g. "
            + ", ".join(missing[:3])
        )
    if extra:
        parts.append(
            f"{len(extra)} checkpoint array(s) are not in the model, e.g. " + ", ".join(extra[:3])
        )
    raise CheckpointMismatchError(
        f"the checkpoint {source} does not fit the model built from the config.{hint} "
        + ". ".join(parts)
        + ". Use the config the checkpoint was trained with (model.backbone.depth/width, "
        "model.emb_dim, model.roi_head.bn_neck, ...)."
    )
