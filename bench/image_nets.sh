#!/usr/bin/env bash
# The paper's image networks on this CPU: `em bench --net` and the PyTorch twin
# (bench/torch_unet_vit.py) back to back, 1 and 2 threads, same network and batch.
# Needs a release build and bench/.venv with torch and numpy. Run it on an idle machine.
#   bench/image_nets.sh [MNIST_BATCH] [CIFAR_BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-16}
cb=${2:-4}
for t in 1 2; do
  echo "## $t thread(s)"
  OMP_NUM_THREADS=$t ./target/release/em bench --threads "$t" --net configs/mnist_unet_vit.toml --batch "$mb" --reps 3 --phase2-reps 1
  OMP_NUM_THREADS=$t bench/.venv/bin/python bench/torch_unet_vit.py bench --net mnist --batch "$mb" --threads "$t" --reps 3 --phase2-reps 1
  # CIFAR-10's phase-2 step (200 Langevin steps) takes minutes here: not timed
  OMP_NUM_THREADS=$t ./target/release/em bench --threads "$t" --net configs/cifar10_unet_vit.toml --batch "$cb" --reps 2 --phase2-reps 0
  OMP_NUM_THREADS=$t bench/.venv/bin/python bench/torch_unet_vit.py bench --net cifar10 --batch "$cb" --threads "$t" --reps 2 --phase2-reps 0
  echo
done
