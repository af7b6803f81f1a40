"""Orbax checkpoints of the whole train state plus JSON metadata (loader position, config).

Layout: ``WORKDIR/checkpoints/<step>/{state,meta}``. Saves are atomic (orbax writes to a temporary
folder and renames), so an interrupted save never replaces the last good checkpoint.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


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
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self.manager.restore(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        return out["state"], dict(out["meta"]), int(step)

    def close(self) -> None:
        self.manager.close()
