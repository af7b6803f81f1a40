#!/usr/bin/env bash
# The prepared GPU check (issue 16): parts a-f in at most 8 minutes, everything written to $OUT
# as it goes. See benchmarks/gpu_check.py and BENCHMARKS.md ("The prepared GPU check").
#
#   here, once:           python benchmarks/gpu_check.py --prepare    (fills the ignored .whl/)
#   on the GPU machine:   bash benchmarks/gpu_check.sh                 (device run, carry .whl)
#   CPU dry run:          bash benchmarks/gpu_check.sh --tiny --out /tmp/gpu_check
set -u
cd "$(dirname "$0")/.."
if [ -d .whl/py ]; then
    export PYTHONPATH="$PWD/.whl/py${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
