"""The workdir lock: a second live run is refused naming the holder; a dead holder's lock is
taken over with a warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seqnet_jax.workdir_lock import LOCK_NAME, WorkdirLock, WorkdirLockedError

HOLD = """
import sys, time
from seqnet_jax.workdir_lock import WorkdirLock
lock = WorkdirLock(sys.argv[1], "holder test").acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _holder(workdir):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_run_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    p = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirLockedError) as e:
            WorkdirLock(str(tmp_path)).acquire()
        assert f"pid {p.pid} on " in str(e.value) and "holder test" in str(e.value)
    finally:
        p.kill()  # kill -9: no clean release
        p.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == p.pid  # stale record
    with caplog.at_level("WARNING"):
        with WorkdirLock(str(tmp_path), "second run"):
            held = json.loads((tmp_path / LOCK_NAME).read_text())
            assert held["pid"] == os.getpid() and held["what"] == "second run"
    assert "taking over the stale lock" in caplog.text and f"pid {p.pid}" in caplog.text
    # a clean release leaves no holder behind: the next run takes it without a warning
    caplog.clear()
    with caplog.at_level("WARNING"), WorkdirLock(str(tmp_path)):
        pass
    assert "stale" not in caplog.text
