"""Cost of data parallelism: wall time per training step and bytes sent per step (issue 14).

  python benchmarks/distributed_bench.py --steps 30 --json distributed.json

trains the tiny test config (``tests/tiny.py``, CPU) ``--steps`` steps three ways, one after
the other: (a) 1 process x 1 device, (b) 1 process x 2 devices
(``--xla_force_host_platform_device_count=2``), (c) 2 processes x 1 device
(``python -m seqnet_jax.launch --cpu``, gloo). Per mode: the median seconds of a training
iteration (``timings.json``'s ``iteration``, process 0; the median is not moved by the first,
compiling, step) and of each stage, and the run's wall time.

Bytes: (b) also dumps the optimized HLO of the three jitted training stages
(``--xla_dump_to``); every cross-device collective in them (all-reduce, all-gather,
reduce-scatter, collective-permute, all-to-all) is listed with its payload, and the bytes a
device sends per step are estimated with the ring algorithms (all-reduce 2(n-1)/n x payload,
all-gather / reduce-scatter / all-to-all (n-1)/n x the full array, collective-permute the
payload). The SPMD program of (c) is the one of (b) (same 2-device mesh). Per step the host
also exchanges the image sizes once (``multihost_utils.process_allgather`` of a (rows, 2)
int32 array) in (c).

``--hlo DIR`` only parses an existing dump folder.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("jit_propose_train", "jit_first_stage_train", "jit_staged_train_step")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_BYTES = {"f64": 8, "s64": 8, "u64": 8, "f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2}
_BYTES.update({"s16": 2, "u16": 2, "s8": 1, "u8": 1, "pred": 1})
_OP = re.compile(
    r"^\s*(?:ROOT\s+)?%\S+\s+=\s+(.*?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")


def payload_bytes(result_type: str) -> int:
    """Bytes of every array in an HLO result type (``f32[3,3,8,8]{...}`` or a tuple of them)."""
    total = 0
    for dtype, dims in _SHAPE.findall(result_type):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES[dtype]
    return total


def sent_bytes(op: str, payload: int, n: int) -> float:
    """Bytes one device sends for a collective over ``n`` devices (ring algorithms)."""
    if n <= 1:
        return 0.0
    if op == "all-reduce":
        return 2.0 * (n - 1) / n * payload
    if op == "collective-permute":
        return float(payload)
    return (n - 1) / n * payload  # all-gather (payload = gathered), reduce-scatter, all-to-all


def collectives(hlo_text: str) -> list:
    """``[(op, result type, payload bytes)]`` of every collective in an HLO module's text."""
    out = []
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if m:
            out.append((m.group(2), m.group(1), payload_bytes(m.group(1))))
    return out


def parse_dump(folder: str, n_devices: int = 2) -> dict:
    """Per training stage: the collectives (grouped by op and type) and bytes sent per device."""
    report = {}
    for stage in STAGES:
        files = sorted(glob.glob(os.path.join(folder, f"*.{stage}.*after_optimizations.txt")))
        if not files:
            continue
        with open(files[-1]) as f:
            ops = collectives(f.read())
        groups = collections.Counter()
        payload = collections.Counter()
        for op, typ, nbytes in ops:
            groups[(op, typ if len(typ) < 80 else f"tuple of {typ.count('[')} arrays")] += 1
            payload[op] += nbytes
        report[stage] = {
            "num_collectives": len(ops),
            "payload_bytes": dict(payload),
            "sent_bytes_per_device": sum(sent_bytes(op, b, n_devices) for op, _, b in ops),
            "largest": [
                {"op": op, "type": typ[:160], "bytes": b}
                for op, typ, b in sorted(ops, key=lambda o: -o[2])[:5]
            ],
            "by_type": [
                {"op": op, "type": typ, "count": c} for (op, typ), c in groups.most_common()
            ],
        }
    report["total_sent_bytes_per_device"] = sum(
        v["sent_bytes_per_device"] for v in report.values() if isinstance(v, dict)
    )
    return report


def _env(devices: int = 1, dump: str = "") -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    flags = []
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    if dump:
        flags += [
            f"--xla_dump_to={dump}",
            "--xla_dump_hlo_as_text",
            "--xla_dump_hlo_module_re=.*(propose_train|first_stage_train|staged_train_step).*",
        ]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def run_mode(mode: str, steps: int, workdir: str, dump: str = "") -> dict:
    main = [
        "--config",
        f"tests/tiny.py:{steps}",
        "--workdir",
        workdir,
        "--config.model.rpn.nms_processes=0",  # the same host threads in every mode
        "--config.checkpoint_every_steps=0",
        "--config.log_every=10",
    ]
    if mode == "c":
        cmd = [sys.executable, "-m", "seqnet_jax.launch", "--num_processes", "2", "--cpu", "--"]
        cmd += main
    else:
        cmd = [sys.executable, "main.py"] + main
    env = _env(devices=2 if mode == "b" else 1, dump=dump)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"mode {mode} failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    with open(os.path.join(workdir, "timings.json")) as f:
        timings = json.load(f)
    return {"wall_s": wall, "median_s": timings}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--modes", default="abc")
    p.add_argument("--json", default="")
    p.add_argument("--hlo", default="", help="only parse this XLA dump folder")
    a = p.parse_args(argv)
    if a.hlo:
        print(json.dumps(parse_dump(a.hlo), indent=1))
        return 0
    out = {"steps": a.steps, "machine": f"{os.cpu_count()} CPU cores", "modes": {}}
    names = {"a": "1 process x 1 device", "b": "1 process x 2 devices", "c": "2 processes x 1"}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes:
            dump = os.path.join(tmp, "dump") if mode == "b" else ""
            res = run_mode(mode, a.steps, os.path.join(tmp, mode), dump)
            res["name"] = names[mode]
            out["modes"][mode] = res
            print(
                f"{mode} ({names[mode]}): {res['median_s']['iteration'] * 1e3:.1f} ms/step "
                f"(median), run {res['wall_s']:.1f} s",
                flush=True,
            )
            if dump:
                out["collectives_2_devices"] = parse_dump(dump)
                print(
                    f"   bytes sent per device per step (ring estimate): "
                    f"{out['collectives_2_devices']['total_sent_bytes_per_device']:.0f}"
                )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
