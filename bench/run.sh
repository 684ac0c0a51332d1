#!/usr/bin/env bash
# Runs `em bench` and the PyTorch version of the same steps back to back, 1 and 2 threads.
# Needs a release build (cargo build --release) and a venv with torch, numpy and POT:
#   python3 -m venv bench/.venv && bench/.venv/bin/pip install torch numpy pot
# Run it on an idle machine: concurrent work ruins the timings.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in 1 2; do
  echo "## $t thread(s)"
  OMP_NUM_THREADS=$t ./target/release/em bench --threads "$t"
  echo
  OMP_NUM_THREADS=$t bench/.venv/bin/python bench/torch_toy.py --threads "$t"
  echo
done
