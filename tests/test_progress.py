"""The progress reporter (seqnet_jax.progress): bounded log lines, no carriage returns in logs."""

import io
import logging
import sys
import time

import pytest

from seqnet_jax import progress

LOGGER = "seqnet_jax.progress"


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_log_mode_writes_at_most_one_line_per_interval(monkeypatch, caplog, capsys):
    monkeypatch.setenv(progress.MODE_ENV, "log")
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        t0 = time.perf_counter()
        for _ in progress.progress(range(40), desc="gallery", unit="img"):
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
    lines = _lines(caplog)
    # A line needs a full interval since the previous one (or the start), plus the final line.
    assert 2 <= len(lines) <= elapsed / 0.05 + 1
    assert lines[-1].startswith("gallery: 100%") and "| 40/40 [" in lines[-1]
    assert len(set(lines)) == len(lines)  # the final count is not logged twice
    assert not any("\r" in x or "\x1b" in x for x in lines)
    assert "\r" not in capsys.readouterr().err  # tqdm itself wrote nothing to the console


def test_a_loop_shorter_than_the_interval_logs_nothing_unless_summary(monkeypatch, caplog):
    monkeypatch.setenv(progress.MODE_ENV, "log")
    monkeypatch.delenv(progress.INTERVAL_ENV, raising=False)  # 30 s
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for _ in progress.progress(range(100_000), desc="quick", unit="img"):
            pass
        assert _lines(caplog) == []
        bar = progress.progress(desc="frames", unit="frame", summary=True)  # total unknown
        bar.update(3)
        bar.update(4)
        assert bar.n == 7 and progress.rate(bar) > 0
        bar.close()
    lines = _lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("frames: 7frame [")


def test_off_and_log_lines_false_count_without_writing(monkeypatch, caplog):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.01")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        monkeypatch.setenv(progress.MODE_ENV, "log")
        bar = progress.progress(desc="train", total=10, initial=4, unit="step", log_lines=False)
        for _ in range(6):
            time.sleep(0.02)
            bar.update(1)
        # steps/s counted from the resumed step 4: 6 steps in >= 0.12 s
        assert bar.n == 10 and 0 < progress.rate(bar) <= 6 / 0.12 + 1e-9
        bar.close()
        monkeypatch.setenv(progress.MODE_ENV, "off")
        assert sum(1 for _ in progress.progress(range(5), desc="x", summary=True)) == 5
    assert _lines(caplog) == []


def test_mode_follows_the_terminal_and_the_environment(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", Tty())
    assert progress.mode() == "bar"
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress.mode() == "log"
    monkeypatch.setenv(progress.MODE_ENV, "BAR")
    assert progress.mode() == "bar"
    monkeypatch.setenv(progress.MODE_ENV, "fancy")
    with pytest.raises(ValueError, match="SEQNET_PROGRESS='fancy'.*auto, bar, log, off"):
        progress.mode()
    monkeypatch.setenv(progress.INTERVAL_ENV, "-1")
    with pytest.raises(ValueError, match="SEQNET_PROGRESS_INTERVAL='-1'.*positive"):
        progress.log_interval()


def test_terminal_bars_are_cleared_before_a_log_record(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    term = Tty()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.setenv(progress.MODE_ENV, "bar")
    handler = logging.StreamHandler(term)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = progress.progress(desc="train", total=3, unit="step")
        bar.update(1)
        before = len(term.getvalue())
        logging.getLogger("seqnet_jax.test").warning("a log line")
        written = term.getvalue()[before:]
        bar.close()
    finally:
        root.removeHandler(handler)
        handler.removeFilter(progress._CLEAR_BARS)
    # the bar's line is blanked and the cursor back at its start before the record is written
    assert written.endswith("\ra log line\n") and written.startswith("\r ")
