"""Start N local processes of one multi-process run (one per GPU, or CPU processes for testing).

  python -m seqnet_jax.launch --num_processes 8 -- --config configs/cuhk.py --workdir runs/cuhk
  python -m seqnet_jax.launch --num_processes 2 --cpu -- --config configs/synthetic.py ...

Everything after ``--`` is ``main.py``'s flags (a first argument ending in ``.py`` names another
script taking the same ``--config.distributed.*`` overrides). Process ``i`` gets
``--config.distributed.coordinator=127.0.0.1:PORT --config.distributed.num_processes=N
--config.distributed.process_id=i`` and, unless ``--cpu``, ``CUDA_VISIBLE_DEVICES`` = its
``--devices_per_process`` GPUs (taken in order from the launcher's own ``CUDA_VISIBLE_DEVICES``,
or 0, 1, 2, ...). Each output line is prefixed with ``[i]``. When a process fails the others are
stopped (SIGINT, as a Ctrl-C, then SIGKILL after ``--grace_s``) and the launcher exits with the
failed one's status; Ctrl-C stops them all the same way. (SIGINT, not SIGTERM: JAX's
multi-process runtime takes SIGTERM as a preemption notice and keeps running.)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence

MAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def describe_status(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def device_lists(num_processes: int, per_process: int, visible: Optional[str]) -> List[str]:
    """``CUDA_VISIBLE_DEVICES`` of each process: consecutive groups of ``per_process`` ids of
    ``visible`` (the launcher's own setting) or of 0, 1, 2, ..."""
    need = num_processes * per_process
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else None
    if ids is None:
        ids = [str(i) for i in range(need)]
    if len(ids) < need:
        raise SystemExit(
            f"launch: {num_processes} processes x {per_process} GPU(s) need {need} devices, but "
            f"CUDA_VISIBLE_DEVICES={visible} lists {len(ids)}"
        )
    return [",".join(ids[i * per_process : (i + 1) * per_process]) for i in range(num_processes)]


def commands(
    args: Sequence[str], num_processes: int, coordinator: str, python: str = sys.executable
) -> List[List[str]]:
    """The command line of each process."""
    args = list(args)
    script = args.pop(0) if args and args[0].endswith(".py") else MAIN
    return [
        [python, "-u", script]
        + args
        + [
            f"--config.distributed.coordinator={coordinator}",
            f"--config.distributed.num_processes={num_processes}",
            f"--config.distributed.process_id={i}",
        ]
        for i in range(num_processes)
    ]


def _pump(i: int, stream, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        text = line.decode("utf-8", "replace")
        with lock:
            out.write(f"[{i}] {text}" if text.endswith("\n") else f"[{i}] {text}\n")
            out.flush()
    stream.close()


def launch(
    main_args: Sequence[str],
    num_processes: int,
    *,
    cpu: bool = False,
    devices_per_process: int = 1,
    port: int = 0,
    grace_s: float = 10.0,
    out=None,
) -> int:
    """Runs the processes to the end; returns 0, or the status of the first one that failed."""
    out = out or sys.stdout
    if num_processes < 1:
        raise SystemExit(f"launch: --num_processes must be >= 1, got {num_processes}")
    coordinator = f"127.0.0.1:{port or free_port()}"
    cmds = commands(main_args, num_processes, coordinator)
    visible = (
        None
        if cpu
        else device_lists(
            num_processes, devices_per_process, os.environ.get("CUDA_VISIBLE_DEVICES")
        )
    )
    lock = threading.Lock()
    procs, pumps = [], []
    for i, cmd in enumerate(cmds):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if cpu:
            env["JAX_PLATFORMS"] = "cpu"
        else:
            env["CUDA_VISIBLE_DEVICES"] = visible[i]
        # Own session: a Ctrl-C reaches the launcher only, which then stops every process.
        p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(p)
        t = threading.Thread(target=_pump, args=(i, p.stdout, out, lock), daemon=True)
        t.start()
        pumps.append(t)

    def say(msg: str) -> None:
        with lock:
            out.write(f"[launch] {msg}\n")
            out.flush()

    say(f"{num_processes} processes, coordinator {coordinator}" + (" (CPU)" if cpu else ""))

    def stop_all(reason: str) -> None:
        alive = [i for i, p in enumerate(procs) if p.poll() is None]
        if not alive:
            return
        say(f"{reason}: stopping process(es) {', '.join(map(str, alive))}")
        for i in alive:
            procs[i].send_signal(signal.SIGINT)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(procs[i].poll() is None for i in alive):
            time.sleep(0.1)
        for i in alive:
            if procs[i].poll() is None:
                procs[i].kill()

    status = 0
    try:
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:
                i = failed[0]
                status = procs[i].returncode
                stop_all(f"process {i} failed ({describe_status(status)})")
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        stop_all("interrupted")
        status = 130
    for p in procs:
        p.wait()
    for t in pumps:
        t.join(timeout=5)
    if status == 0:
        failed = [i for i, p in enumerate(procs) if p.returncode != 0]
        if failed:
            status = procs[failed[0]].returncode
            say(f"process {failed[0]} failed ({describe_status(status)})")
    if status < 0:
        status = 128 - status  # a signal, as a shell reports it
    say("all processes finished" if status == 0 else f"exit status {status}")
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        raise SystemExit(
            "usage: python -m seqnet_jax.launch --num_processes N [--cpu] -- <main.py flags>"
        )
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m seqnet_jax.launch", description=__doc__)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--cpu", action="store_true", help="CPU processes (JAX_PLATFORMS=cpu)")
    parser.add_argument("--devices_per_process", type=int, default=1, help="GPUs per process")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    parser.add_argument(
        "--grace_s", type=float, default=10.0, help="wait before SIGKILL when stopping"
    )
    a = parser.parse_args(argv[:cut])
    return launch(
        argv[cut + 1 :],
        a.num_processes,
        cpu=a.cpu,
        devices_per_process=a.devices_per_process,
        port=a.port,
        grace_s=a.grace_s,
    )


if __name__ == "__main__":
    sys.exit(main())
