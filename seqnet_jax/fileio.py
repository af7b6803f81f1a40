"""Small file helpers shared by the packages (no JAX)."""

from __future__ import annotations

import os


def write_text_atomic(path: str, text: str) -> None:
    """``path`` holds ``text`` whole or keeps what it held: written to ``path.tmp``, then renamed
    (a reader, or a rerun after a kill, never sees half a file)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
