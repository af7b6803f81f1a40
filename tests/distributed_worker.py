"""``main.py`` that also records every training step's metrics, for tests/test_distributed.py.

  python tests/distributed_worker.py --config tests/tiny.py:3 --workdir DIR [main.py flags]

writes ``DIR/metrics_<process>.json``: one ``{name: value}`` per step this run trained.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app  # noqa: E402

import main as entry  # noqa: E402
from seqnet_jax.train_lib import train as train_lib  # noqa: E402


def run(argv):
    steps = []
    iteration = train_lib.Trainer.iteration

    def recording(self, state, batch):
        state, metrics = iteration(self, state, batch)
        steps.append({k: float(v) for k, v in metrics.items()})
        return state, metrics

    train_lib.Trainer.iteration = recording
    try:
        entry.main(argv)
    finally:
        path = os.path.join(entry.FLAGS.workdir, f"metrics_{jax.process_index()}.json")
        with open(path, "w") as f:
            json.dump(steps, f)


if __name__ == "__main__":
    app.run(run)
