"""Renamed keyword arguments that keep working, with a ``DeprecationWarning``, for one release."""

from __future__ import annotations

import functools
import warnings


def renamed_arguments(**old_to_new: str):
    """Decorator: accept each old keyword name ``old=...`` as the new one, with a warning.

    ``@renamed_arguments(query_feats="query_box_feats")`` lets callers still pass
    ``query_feats=x``; it is forwarded as ``query_box_feats=x`` and a ``DeprecationWarning``
    names both. Passing both is a ``TypeError``. Positional calls are unaffected.
    """

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{fn.__qualname__}() got both {old!r} (the deprecated name) and {new!r}"
                    )
                warnings.warn(
                    f"{fn.__qualname__}(): the argument {old!r} is deprecated and will be removed "
                    f"in the next release; pass it as {new!r}",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
