"""Progress of long loops: the one reporter of the package, built on tqdm.

Training steps, gallery / query feature extraction, the per-query search metrics, image checks,
dataset conversion and TFDS preparation, and the search's gallery frames (video decoding
included) all report through :func:`progress`, which returns a ``tqdm`` object (iterate it, or
call ``update(n)``; ``n``, ``format_dict`` and ``set_postfix`` work as in tqdm). Where it writes:

* **In a terminal** (stderr is a TTY): tqdm's live bar on stderr. A log record emitted while bars
  are shown clears them first, so the record prints on its own line; the bar is redrawn on its
  next update. Nested bars (evaluation inside training) disappear when they finish.
* **Anywhere else** (CI, ``nohup``, a pipe or a file): no bar and no carriage return. The bar's
  text is logged as one INFO line (logger ``seqnet_jax.progress``) once the loop has run
  ``SEQNET_PROGRESS_INTERVAL`` seconds (default 30), then at most once per interval, and a final
  line when it ends; a loop that ends sooner logs nothing unless created with ``summary=True``.
  A loop of ``T`` seconds writes at most ``T / interval + 1`` lines, however many items it has.

``SEQNET_PROGRESS=bar|log|off`` overrides the choice (``off``: counts and times, prints nothing).
tqdm's rate and ETA arithmetic and its throttling are used as they are; only the output is routed.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Iterable, Optional

import tqdm as _tqdm

logger = logging.getLogger(__name__)

MODES = ("auto", "bar", "log", "off")
MODE_ENV = "SEQNET_PROGRESS"
INTERVAL_ENV = "SEQNET_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
BAR_MININTERVAL_S = 0.25  # terminal redraws


def mode() -> str:
    """``"bar"``, ``"log"`` or ``"off"``: ``$SEQNET_PROGRESS``, else ``bar`` when stderr is a
    terminal and ``log`` otherwise."""
    m = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if m not in MODES:
        raise ValueError(f"{MODE_ENV}={m!r}: expected one of {', '.join(MODES)}")
    if m == "auto":
        isatty = getattr(sys.stderr, "isatty", None)
        m = "bar" if callable(isatty) and isatty() else "log"
    return m


def log_interval() -> float:
    """Seconds between two progress lines in logs: ``$SEQNET_PROGRESS_INTERVAL`` or 30."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise ValueError(f"{INTERVAL_ENV}={raw!r}: expected a positive number of seconds")
    return value


class _NoOutput:
    """The file of a :class:`LogProgress`: tqdm's own writes (the newline at close) go nowhere."""

    encoding = "ascii"  # tqdm then draws its bar with '#' characters

    def write(self, s: str) -> int:
        return len(s)

    def flush(self) -> None:
        pass


class LogProgress(_tqdm.tqdm):
    """A tqdm whose display is a log line instead of a redrawn terminal line.

    ``mininterval`` and ``delay`` (both the log interval) throttle it as they throttle any tqdm
    bar; tqdm's monitor thread is off, so lines come only from ``update`` and ``close``.
    """

    monitor_interval = 0

    def __init__(self, *args, summary: bool = False, level: int = logging.INFO, **kwargs):
        self._summary = summary
        self._level = level
        self._logged_n: Optional[float] = None  # the count of the last line written
        self._closing = False
        kwargs["file"] = _NoOutput()
        super().__init__(*args, **kwargs)

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        if msg == "":  # tqdm clearing its line: nothing to take back in a log
            return True
        if self._closing and self._logged_n == self.n:  # the last line already says it
            return True
        self._logged_n = self.n
        logger.log(self._level, "%s", self.format_meter(**self.format_dict) if msg is None else msg)
        return True

    def close(self) -> None:
        if self._summary and not self.disable:
            self.delay = 0  # tqdm skips the final display of a bar it never showed
        self._closing = True
        super().close()


class _ClearBarsFilter(logging.Filter):
    """Clears the terminal bars before a log record is written (they redraw on their update)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _tqdm.tqdm.get_lock():
            for bar in list(getattr(_tqdm.tqdm, "_instances", ())):
                if not isinstance(bar, LogProgress) and not bar.disable:
                    bar.clear(nolock=True)
        return True


_CLEAR_BARS = _ClearBarsFilter()


def _clear_bars_before_log_records() -> None:
    for handler in logging.getLogger().handlers:
        if _CLEAR_BARS not in handler.filters:
            handler.addFilter(_CLEAR_BARS)


def progress(
    iterable: Optional[Iterable] = None,
    *,
    desc: str,
    total: Optional[float] = None,
    unit: str = "it",
    initial: int = 0,
    summary: bool = False,
    log_lines: bool = True,
) -> _tqdm.tqdm:
    """A progress reporter over ``iterable`` (or driven by ``update(n)``), see the module doc.

    Args:
      desc: what is counted (the line's prefix), e.g. ``"gallery"``.
      total: the expected count (default ``len(iterable)`` where it has one).
      unit: the counted thing, e.g. ``"img"``, ``"frame"``, ``"step"``.
      initial: the count already done (a resumed loop); rates count from here.
      summary: in logs, write the final line even when the loop ends within one interval.
      log_lines: ``False``: in logs, write no line at all (the caller logs the reporter's
        numbers itself, e.g. the training loop's metric line); the terminal bar is unchanged.
    """
    kwargs = dict(iterable=iterable, desc=desc, total=total, unit=unit, initial=initial)
    m = mode()
    if m == "bar":
        _clear_bars_before_log_records()
        return _tqdm.tqdm(
            **kwargs,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=BAR_MININTERVAL_S,
            leave=None,  # the outermost bar stays, nested ones go when they finish
        )
    if m == "off" or not log_lines:
        return LogProgress(**kwargs, mininterval=math.inf, delay=math.inf)
    interval = log_interval()
    return LogProgress(**kwargs, mininterval=interval, delay=interval, summary=summary)


def rate(bar: _tqdm.tqdm) -> float:
    """Items per second since the reporter was created (counting from ``initial``)."""
    d = bar.format_dict
    elapsed = d.get("elapsed") or 0.0
    return (bar.n - (d.get("initial") or 0)) / elapsed if elapsed > 0 else 0.0


def format_seconds(seconds: float) -> str:
    """``[H:]MM:SS`` as tqdm prints elapsed and remaining times (``?`` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    return _tqdm.tqdm.format_interval(max(0.0, seconds))
