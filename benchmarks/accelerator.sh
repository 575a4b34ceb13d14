#!/usr/bin/env bash
# The speed figures on a GPU/TPU in one command (~5 minutes on an H200); see benchmarks/accelerator.py.
#   bash benchmarks/accelerator.sh                    # writes accelerator_out/accelerator.{jsonl,md}
#   bash benchmarks/accelerator.sh --tiny --out /tmp/acc   # the CPU check at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/accelerator.py "$@"
