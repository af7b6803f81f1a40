"""An exclusive lock on a workdir, so two runs never write checkpoints into the same one.

``WORKDIR/.lock`` holds the holder's pid, host and start time (for the messages). The lock itself
is an OS advisory lock (``fcntl.flock``) on that file, which the kernel releases when the holder
dies in any way (kill -9 included), so a stale lock is always taken over: the next run finds the
file unlocked, warns with the dead holder's details and takes it. A second live run is refused
with :class:`WorkdirLockedError` naming the holder.

On a filesystem without ``flock`` (some network mounts) the lock falls back to the recorded pid:
a holder on this host whose pid no longer runs is taken over; one on another host is honoured.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Optional

from absl import logging

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkdirLock:
    """``with WorkdirLock(workdir): ...`` (or :meth:`acquire` / :meth:`release`)."""

    def __init__(self, workdir: str, what: str = "training"):
        self.path = os.path.join(os.path.abspath(workdir), LOCK_NAME)
        self.what = what
        self._fd: Optional[int] = None

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                return json.loads(f.read() or "{}")
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _describe(h: dict) -> str:
        if not h:
            return "an unknown process"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
        return f"pid {h.get('pid')} on {h.get('host')} ({h.get('what', 'a run')}, since {started})"

    def acquire(self) -> "WorkdirLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        previous = self._holder()
        busy = f"{os.path.dirname(self.path)} is in use by {self._describe(previous)}"
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkdirLockedError(
                f"{busy}: wait for it to finish, stop it, or use another --workdir"
            ) from None
        except (ImportError, OSError):  # no flock on this filesystem: judge by the pid
            pid = int(previous.get("pid", -1)) if previous else -1
            local = previous.get("host") == socket.gethostname() if previous else True
            if pid > 0 and pid != os.getpid() and (not local or _pid_alive(pid)):
                os.close(fd)
                raise WorkdirLockedError(
                    f"{busy} (no flock on this filesystem: delete {self.path} if that run is gone)"
                ) from None
        if previous.get("pid") and int(previous["pid"]) != os.getpid():
            logging.warning(
                "workdir lock %s: taking over the stale lock of %s (it is no longer running)",
                self.path,
                self._describe(previous),
            )
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        me["what"] = self.what
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # a clean release leaves no holder behind
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
