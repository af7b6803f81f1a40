"""``main.py`` that also records every training step's metrics, for tests/test_distributed.py.

  python tests/distributed_worker.py --config tests/tiny.py:3 --workdir DIR [main.py flags]

writes ``DIR/metrics_<process>.json``: one ``{name: value}`` per step this run trained (after
every step, so a killed run keeps its record). ``--then_search`` then runs ``eval.mode=search``
in the same processes (the ``--config.search.*`` flags say what to search).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

import main as entry  # noqa: E402
from seqnet_jax.train_lib import train as train_lib  # noqa: E402

flags.DEFINE_bool("then_search", False, "afterwards run eval.mode=search in the same processes")


def run(argv):
    steps = []
    iteration = train_lib.Trainer.iteration

    def recording(self, state, batch):
        state, metrics = iteration(self, state, batch)
        steps.append({k: float(v) for k, v in metrics.items()})
        path = os.path.join(entry.FLAGS.workdir, f"metrics_{jax.process_index()}.json")
        with open(path, "w") as f:
            json.dump(steps, f)
        return state, metrics

    train_lib.Trainer.iteration = recording
    entry.main(argv)
    if entry.FLAGS.then_search:
        from seqnet_jax import run as run_lib

        config = entry.FLAGS.config
        config.eval.mode = "search"
        run_lib.run(config, entry.FLAGS.workdir)


if __name__ == "__main__":
    app.run(run)
