"""Orbax checkpoints of the whole train state plus JSON metadata (loader position, config).

Layout: ``WORKDIR/checkpoints/<step>/{state,meta}``. Saves are atomic (orbax writes to a temporary
folder and renames), so an interrupted save never replaces the last good checkpoint.

Several processes: every process calls :meth:`Checkpointer.save` / :meth:`Checkpointer.restore`
with the same step (orbax's multi-process save: the replicated state is written once, process 0
commits, the meta JSON comes from process 0). Arrays are restored into the target's shardings,
so a checkpoint written by N processes restores in M (the workdir must be one shared folder).

Training restores the whole train state (:meth:`Checkpointer.restore`); loading a model for
inference (``seqnet_jax.model_loading``) reads a step's array shapes first
(:meth:`Checkpointer.state_metadata`) and restores the state into a target built from them
(:meth:`Checkpointer.restore_state_tree`), so no train state of the config has to be built.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _with_sharding(x) -> jax.ShapeDtypeStruct:
    """A restore target leaf; one without a sharding (``jax.eval_shape`` output) is replicated
    over this run's devices, not the saved run's (which may have had other processes)."""
    s = ocp.utils.to_shape_dtype_struct(x)
    if getattr(s, "sharding", None) is None:
        devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        mesh = Mesh(np.asarray(devices), ("data",))
        s = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=NamedSharding(mesh, P()))
    return s


class Checkpointer:
    """Save/restore ``(state, meta)`` in ``directory``; keeps the newest ``max_to_keep``."""

    def __init__(self, directory: str, max_to_keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=False,
            ),
            item_names=("state", "meta"),
        )

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self):
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, force: bool = True) -> None:
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )
        self.manager.wait_until_finished()

    def restore(self, target: Any, step: Optional[int] = None) -> Tuple[Any, dict, int]:
        """Restore into the structure/shardings of ``target``. ``step=None`` = latest."""
        if step is None:
            step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        abstract = jax.tree.map(_with_sharding, target)
        out = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["meta"]), int(step)

    def step_directory(self, step: int) -> str:
        """``DIRECTORY/<step>``."""
        return os.path.join(self.directory, str(int(step)))

    def state_metadata(self, step: int) -> Any:
        """The saved train state's tree of step ``step`` with array metadata (shape, dtype) as
        leaves; no array is read."""
        path = os.path.join(self.step_directory(step), "state")
        return ocp.StandardCheckpointer().metadata(path).item_metadata

    def restore_state_tree(self, step: int, target: Any) -> Any:
        """The saved train state of step ``step`` as a plain tree (dicts), restored into
        ``target`` (a tree of ``jax.ShapeDtypeStruct``, e.g. from :meth:`state_metadata`)."""
        path = os.path.join(self.step_directory(step), "state")
        return ocp.StandardCheckpointer().restore(path, target)

    def restore_meta(self, step: int) -> dict:
        """The JSON metadata saved with step ``step`` (loader position, ``num_pids``, ...)."""
        out = self.manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def close(self) -> None:
        self.manager.close()
