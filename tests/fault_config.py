"""``main.py --config tests/fault_config.py:STEPS``: the tiny config in train_and_eval mode, plus
a test-only pause for delivering a signal at a chosen point (tests/test_faults.py).

``SEQNET_TEST_PAUSE_AFTER_STEP=K`` (with ``SEQNET_TEST_RELEASE=PATH``): once step K's iteration
has returned (its input state donated, the new state not yet taken by the training loop),
print ``PAUSED after step K`` and wait until the file PATH exists (at most 120 s). Only this
config file reads these variables.
"""

import os
import sys
import time

from tests.tiny import tiny_config

PAUSED = "PAUSED after step"


def _pause_after_step(k: int, release: str) -> None:
    from seqnet_jax.train_lib import train as train_lib

    iteration = train_lib.Trainer.iteration
    if getattr(iteration, "paused", False):  # get_config called again
        return

    def paused(self, state, batch):
        out = iteration(self, state, batch)
        if int(out[0].step) == k:
            print(f"{PAUSED} {k}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 120
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.02)
        return out

    paused.paused = True
    train_lib.Trainer.iteration = paused


def get_config(max_steps: str = "6"):
    k = os.environ.get("SEQNET_TEST_PAUSE_AFTER_STEP")
    if k:
        _pause_after_step(int(k), os.environ["SEQNET_TEST_RELEASE"])
    c = tiny_config(int(max_steps))
    c.eval.mode = "train_and_eval"
    return c
