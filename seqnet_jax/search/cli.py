"""``eval.mode=search`` from the command line: check the inputs, load the model, search.

Owns :func:`search_from_config` (what ``main.py`` runs for the search mode) and
:func:`enable_compilation_cache` (JAX's persistent compilation cache in the index folder, so a
later search process skips compiling the model).
"""

from __future__ import annotations

import os
import time

from absl import logging

from seqnet_jax.search.index import INDEX_DIRNAME
from seqnet_jax.search.options import SearchOptions, prepare
from seqnet_jax.search.searcher import PersonSearcher


def enable_compilation_cache(directory: str) -> None:
    """Keep compiled XLA programs in ``directory`` (JAX's persistent compilation cache), so a later
    search process skips compiling the model. A cache the user configured already
    (``JAX_COMPILATION_CACHE_DIR``) is left alone."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def search_from_config(config, workdir: str) -> dict:
    """``eval.mode=search``: check the inputs, load the model, search, write the outputs."""
    opts = SearchOptions.from_config(config.search, workdir)
    prepared = prepare(opts)  # every input error before loading anything
    if opts.jax_cache:
        index_dir = opts.index or os.path.join(opts.output, INDEX_DIRNAME)
        enable_compilation_cache(os.path.abspath(os.path.join(index_dir, "jax_cache")))
    t = time.perf_counter()
    searcher = PersonSearcher.from_config(config, workdir)
    logging.info("model loaded in %.1f s", time.perf_counter() - t)
    results = searcher.search(opts, prepared)
    import jax

    out = os.path.abspath(opts.output)
    if jax.process_index() == 0:  # several processes: the outputs are process 0's
        print(
            f"search results: {os.path.join(out, 'index.html')} (results.json, overview.png, "
            "frames/)",
            flush=True,
        )
    return results
