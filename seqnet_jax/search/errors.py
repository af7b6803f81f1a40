"""The search's input error: what :class:`SearchInputError` means and who raises it.

Raised by the option and query-box checks (``options.py``) and the gallery listing
(``gallery.py``) before any model work, so a bad command line fails in a second with a message
naming the option. A checkpoint that does not fit the config raises
``seqnet_jax.model_loading.CheckpointMismatchError`` instead.
"""

from __future__ import annotations


class SearchInputError(ValueError):
    """Bad search input (query, box, gallery, options); raised before any model work."""
