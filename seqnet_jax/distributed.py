"""Several processes (GPUs, machines) as one data-parallel run, on JAX's own runtime.

Every process runs the same ``python main.py --config ... --workdir ...``; the process group
comes from ``config.distributed`` (``coordinator=HOST:PORT``, ``num_processes``, ``process_id``)
or, with ``coordinator='auto'``, from what ``jax.distributed.initialize()`` detects by itself
(SLURM, Open MPI, cloud TPU). One process (the default) initialises nothing.

After :func:`initialize`, ``jax.devices()`` lists the devices of every process and the jitted
training stages run over one ``('data',)`` mesh of all of them: each process feeds its slice of
the global batch (``jax.make_array_from_process_local_data``) and XLA's collectives (NCCL on
GPUs, gloo on CPUs) do the rest. Small host-side exchanges (image sizes, the config hash,
evaluation features and results) go through ``jax.experimental.multihost_utils``.

Faults (README "Several GPUs and several machines"):

* a process that dies makes the others stop: a collective that was running or is started next
  fails at once and :class:`LostProcessError` names the lost process (one on the same machine at
  once, from its pid; one elsewhere when the coordination service declares it lost, after
  ``distributed.heartbeat_timeout_s``); a process waiting elsewhere is stopped by JAX's
  coordination service ``distributed.heartbeat_timeout_s`` after the lost one's last heartbeat.
  If process 0 (the coordinator) dies, JAX stops the others at once with its own error.
* an unreachable coordinator fails after ``distributed.init_timeout_s`` naming the address;
  processes started with different configs fail at start-up naming the first differing field;
  a ``process_id`` out of range fails before anything starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import socket
import sys
import threading
import time
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import jax
import numpy as np
from absl import logging

AUTO = "auto"  # distributed.coordinator: let jax.distributed.initialize() detect the cluster
# Fields allowed to differ between the processes of one run.
PER_PROCESS_FIELDS = ("distributed.process_id",)


class DistributedSetupError(RuntimeError):
    """The process group could not be formed (bad settings, unreachable coordinator)."""


class ConfigMismatchError(DistributedSetupError):
    """The processes of one run were started with different configs."""


class LostProcessError(RuntimeError):
    """Another process of the run stopped (killed, crashed, lost its machine)."""


# -- settings --------------------------------------------------------------------------------------
def settings(dcfg) -> Tuple[str, int, int]:
    """``(coordinator, num_processes, process_id)`` of ``config.distributed``, checked before any
    work (nothing is started here)."""
    coordinator = str(dcfg.coordinator).strip()
    n, pid = int(dcfg.num_processes), int(dcfg.process_id)
    if n < 1:
        raise DistributedSetupError(f"distributed.num_processes must be >= 1, got {n}")
    if not 0 <= pid < n:
        raise DistributedSetupError(
            f"distributed.process_id={pid} is out of range for distributed.num_processes={n}: "
            f"expected 0..{n - 1}"
        )
    if coordinator and coordinator != AUTO:
        host, sep, port = coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DistributedSetupError(
                f"distributed.coordinator={coordinator!r}: expected HOST:PORT (e.g. "
                f"10.0.0.1:1234, process 0's machine), {AUTO!r} or '' (one process)"
            )
    elif not coordinator and n > 1:
        raise DistributedSetupError(
            f"distributed.num_processes={n} needs distributed.coordinator=HOST:PORT (process "
            f"0's machine and a free port) or distributed.coordinator={AUTO}"
        )
    for name in ("init_timeout_s", "heartbeat_timeout_s"):
        if int(dcfg[name]) < 1:
            raise DistributedSetupError(f"distributed.{name} must be >= 1 s, got {dcfg[name]}")
    return coordinator, n, pid


def wait_for_coordinator(address: str, timeout_s: float, who: str = "") -> None:
    """Block until something accepts TCP connections at ``HOST:PORT`` (process 0's coordinator),
    else :class:`DistributedSetupError` naming the address after ``timeout_s`` seconds.

    JAX itself aborts the process when its coordinator cannot be reached; probing first turns
    that into a Python error with the address."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    deadline = time.monotonic() + timeout_s
    last: Optional[BaseException] = None
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(2.0, timeout_s)):
                return
        except OSError as e:  # refused, unreachable, unknown host, timeout
            last = e
        if time.monotonic() >= deadline:
            raise DistributedSetupError(
                f"the coordinator at {address} (distributed.coordinator) is unreachable: nothing "
                f"accepted a connection there within distributed.init_timeout_s={timeout_s:g} s"
                f"{who} ({last}). Start process 0 on that machine, or check the address, the port "
                f"and the firewall."
            )
        time.sleep(0.25)


# -- start-up -------------------------------------------------------------------------------------
def initialize(config) -> None:
    """Join the process group ``config.distributed`` describes (nothing for one process), then
    check every process runs the same config. Call before anything touches a JAX device."""
    coordinator, n, pid = settings(config.distributed)
    if not coordinator and n == 1:
        return
    if jax.distributed.is_initialized():
        check_same_config(config)
        _register_process()
        return
    d = config.distributed
    init_timeout, heartbeat = int(d.init_timeout_s), int(d.heartbeat_timeout_s)
    who = f" (process {pid} of {n})"
    t0 = time.monotonic()
    if coordinator not in (AUTO, "") and pid != 0:
        wait_for_coordinator(coordinator, init_timeout, who)
    # CPU processes exchange their collectives over gloo (GPUs use NCCL whatever this says).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator == AUTO:
        try:
            jax.distributed.initialize(
                initialization_timeout=init_timeout, heartbeat_timeout_seconds=heartbeat
            )
        except ValueError as e:
            raise DistributedSetupError(
                f"distributed.coordinator={AUTO}: jax.distributed.initialize() found no cluster "
                f"(SLURM, Open MPI, cloud TPU) to join: {e}. Give distributed.coordinator="
                "HOST:PORT, distributed.num_processes and distributed.process_id instead."
            ) from e
    else:
        logging.info(
            "process %d of %d: joining the coordinator at %s (waiting up to %d s for all %d "
            "processes)",
            pid,
            n,
            coordinator,
            init_timeout,
            n,
        )
        remaining = max(1, int(init_timeout - (time.monotonic() - t0)))
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=n,
            process_id=pid,
            initialization_timeout=remaining,
            heartbeat_timeout_seconds=heartbeat,
        )
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)  # console logs come from process 0
    logging.info(
        "process %d of %d: %d local device(s), %d in all: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices(),
    )
    check_same_config(config)
    _register_process()


def flat_config(config) -> dict:
    """``{dotted.field: JSON text of its value}`` in the config's field order."""
    out = {}

    def walk(prefix, d):
        for k, v in d.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(key + ".", v)
            else:
                out[key] = json.dumps(v, sort_keys=True, default=str)

    walk("", config.to_dict())
    return out


def config_fingerprint(config) -> Tuple[dict, bytes]:
    """The config's fields that must agree between processes and their SHA-256."""
    flat = {k: v for k, v in flat_config(config).items() if k not in PER_PROCESS_FIELDS}
    return flat, hashlib.sha256(json.dumps(flat).encode()).digest()


def first_difference(a: dict, b: dict) -> Optional[Tuple[str, Any, Any]]:
    """The first field (in ``a``'s order, then ``b``'s) whose value differs: ``(field, a, b)``."""
    for k in list(a) + [k for k in b if k not in a]:
        if a.get(k) != b.get(k):
            return k, a.get(k, "<missing>"), b.get(k, "<missing>")
    return None


def check_same_config(config) -> None:
    """Every process must run the same resolved config (``distributed.process_id`` aside): the
    hashes are compared; on a mismatch every process raises :class:`ConfigMismatchError` naming
    the first field that differs from process 0's."""
    if jax.process_count() == 1:
        return
    flat, digest = config_fingerprint(config)
    hashes = allgather(np.frombuffer(digest, np.uint8))
    if all(bytes(h) == digest for h in hashes):
        return
    configs = [json.loads(b) for b in allgather_bytes(json.dumps(flat).encode())]
    for p in range(1, len(configs)):
        diff = first_difference(configs[0], configs[p])
        if diff is not None:
            field, v0, vp = diff
            raise ConfigMismatchError(
                f"the processes run different configs: {field} is {v0} on process 0 but {vp} on "
                f"process {p} (seen by process {jax.process_index()} of {jax.process_count()}). "
                "Start every process with the same --config and overrides (only "
                "distributed.process_id may differ)."
            )


# -- small host-side exchanges --------------------------------------------------------------------
def is_main() -> bool:
    """True on process 0 (the one that writes logs, TensorBoard, results and pictures)."""
    return jax.process_index() == 0


def allgather(x: np.ndarray) -> np.ndarray:
    """``(P, *x.shape)``: every process's ``x`` (same shape everywhere), in process order."""
    from jax.experimental import multihost_utils

    x = np.asarray(x)
    if jax.process_count() == 1:
        return x[None]
    return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def allgather_rows(x: np.ndarray) -> np.ndarray:
    """Every process's ``(n_p, ...)`` rows concatenated in process order (``n_p`` may differ)."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    counts = allgather(np.asarray([x.shape[0]], np.int32))[:, 0]
    padded = np.zeros((int(counts.max()),) + x.shape[1:], x.dtype)
    padded[: x.shape[0]] = x
    parts = allgather(padded)
    return np.concatenate([parts[p, : counts[p]] for p in range(len(counts))], axis=0)


def allgather_bytes(data: bytes) -> List[bytes]:
    """Every process's ``data`` (any length), in process order."""
    x = np.frombuffer(data, np.uint8)
    counts = allgather(np.asarray([len(x)], np.int32))[:, 0]
    padded = np.zeros((int(counts.max()),), np.uint8)
    padded[: len(x)] = x
    parts = allgather(padded)
    return [parts[p, : counts[p]].tobytes() for p in range(len(counts))]


def broadcast_object(obj: Any) -> Any:
    """Process 0's ``obj`` (pickled) on every process; the others' argument is ignored."""
    if jax.process_count() == 1:
        return obj
    data = pickle.dumps(obj) if is_main() else b""
    return pickle.loads(allgather_bytes(data)[0])


def gather_ragged(arrays: Sequence[np.ndarray], width: int, dtype=np.float32) -> List[np.ndarray]:
    """One ``(n_i, width)`` array per item, the items of every process concatenated in process
    order (each process passes its own items, in order)."""
    lens = np.asarray([len(a) for a in arrays], np.int32)
    rows = (
        np.concatenate([np.asarray(a, dtype).reshape(-1, width) for a in arrays], 0)
        if len(arrays)
        else np.zeros((0, width), dtype)
    )
    lens, rows = allgather_rows(lens), allgather_rows(rows)
    return np.split(rows, np.cumsum(lens)[:-1]) if len(lens) else []


def shard_range(n: int, index: Optional[int] = None, count: Optional[int] = None) -> range:
    """Process ``index``'s contiguous share of ``n`` items (sizes differ by at most one)."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    lo, hi = n * index // count, n * (index + 1) // count
    return range(lo, hi)


def host_local(tree):
    """A tree of arrays this process can compute with on its own: a replicated array that spans
    several processes becomes its local copy (other leaves are returned unchanged)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"expected a replicated array, got sharding {x.sharding}")
            return x.addressable_data(0)
        return x

    return jax.tree.map(one, tree)


# -- faults ---------------------------------------------------------------------------------------
_PROCESS_KEY = "seqnet_jax/process/{}"


def _client():
    from jax._src import distributed as jax_distributed

    return jax_distributed.global_state.client


def _register_process() -> None:
    """Publish this process's host and pid in the coordinator's key-value store, so that a
    process on the same machine that dies is named at once (:func:`find_lost_processes`)."""
    client = _client()
    if client is not None:
        info = {"host": socket.gethostname(), "pid": os.getpid()}
        key = _PROCESS_KEY.format(jax.process_index())
        client.key_value_set(key, json.dumps(info), allow_overwrite=True)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:  # Linux: a zombie is dead
            return not any(ln.startswith("State:") and "Z" in ln.split()[1:2] for ln in f)
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _live_processes(timeout_s: float) -> Optional[List[int]]:
    """The processes the coordination service still hears from (it declares a process lost
    after the heartbeat timeout); None if it did not answer within ``timeout_s``."""
    client = _client()
    if client is None:
        return None
    out: dict = {}

    def ask():
        try:
            out["live"] = sorted(client.get_live_nodes(list(range(jax.process_count()))))
        except Exception as e:  # noqa: BLE001 - reported as unknown
            out["error"] = e

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout_s)
    return out.get("live")


def find_lost_processes(remote_wait_s: float) -> List[int]:
    """The processes of this run that are gone: those on this machine at once (their pid), the
    others from the coordination service (waiting up to ``remote_wait_s``, only when none on
    this machine is gone and some run elsewhere)."""
    client, me, n = _client(), jax.process_index(), jax.process_count()
    if client is None or n == 1:
        return []
    host, lost, remote = socket.gethostname(), [], []
    for p in range(n):
        if p == me:
            continue
        try:
            info = json.loads(client.key_value_try_get(_PROCESS_KEY.format(p)))
        except Exception:  # noqa: BLE001 - the coordinator itself may be gone
            remote.append(p)
            continue
        if info.get("host") == host:
            if not _pid_alive(int(info["pid"])):
                lost.append(p)
        else:
            remote.append(p)
    if lost or not remote:
        return lost
    live = _live_processes(remote_wait_s)
    return [] if live is None else sorted(set(range(n)) - set(live))


def lost_process_error(
    error: BaseException, where: str, heartbeat_s: float
) -> Optional[LostProcessError]:
    """If another process is gone, the :class:`LostProcessError` to raise instead of ``error``
    (logged at once); None when every process is still there (``error`` is a real one)."""
    me, n = jax.process_index(), jax.process_count()
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else repr(error)
    lost = find_lost_processes(heartbeat_s + 5.0)
    if not lost:
        return None
    msg = (
        f"process {me}: lost process {', '.join(map(str, lost))} of {n} during {where}: another "
        f"process has stopped ({type(error).__name__}: {first}). This process stops too; the "
        "last checkpoint is intact: relaunch every process with the same command to resume."
    )
    logging.error("%s", msg)
    sys.stderr.flush()
    return LostProcessError(msg)


@contextlib.contextmanager
def stop_on_lost_process(where: str, heartbeat_s: float) -> Iterator[None]:
    """Several processes: an error caused by another process's death (a failed collective)
    becomes :class:`LostProcessError` naming it. One process, or an ordinary error: unchanged.

    A process waiting outside a collective is stopped by JAX's coordination service instead,
    ``heartbeat_s`` after the lost process's last heartbeat."""
    try:
        yield
    except (LostProcessError, DistributedSetupError, KeyboardInterrupt):
        raise
    except Exception as e:
        if jax.process_count() == 1:
            raise
        lost = lost_process_error(e, where, heartbeat_s)
        if lost is None:
            raise
        raise lost from e


__all__ = [
    "AUTO",
    "ConfigMismatchError",
    "DistributedSetupError",
    "LostProcessError",
    "allgather",
    "allgather_bytes",
    "allgather_rows",
    "broadcast_object",
    "check_same_config",
    "find_lost_processes",
    "config_fingerprint",
    "first_difference",
    "flat_config",
    "gather_ragged",
    "host_local",
    "initialize",
    "is_main",
    "settings",
    "shard_range",
    "stop_on_lost_process",
    "wait_for_coordinator",
]
