#!/usr/bin/env bash
# Image networks on this CPU: `em bench --net` and the PyTorch twin (bench/torch_unet_vit.py)
# back to back, 1 and 2 threads, same network and batch. Needs a release build and bench/.venv
# with torch and numpy. Run it on an idle machine.
#   bench/image_nets.sh [MNIST_BATCH] [CIFAR_BATCH] [NETS]
# NETS (default "mnist_conv mnist cifar10"): mnist_conv = configs/mnist_conv.toml at batch 128,
# mnist / cifar10 = the paper's UNet → ViT networks at the given batches.
set -euo pipefail
cd "$(dirname "$0")/.."
mb=${1:-16}
cb=${2:-4}
nets=${3:-"mnist_conv mnist cifar10"}

# one network on both sides: CONFIG TWIN_NET BATCH REPS PHASE2_REPS THREADS
pair() {
  OMP_NUM_THREADS=$6 ./target/release/em bench --threads "$6" --net "$1" --batch "$3" --reps "$4" --phase2-reps "$5"
  OMP_NUM_THREADS=$6 bench/.venv/bin/python bench/torch_unet_vit.py bench --net "$2" --batch "$3" --threads "$6" --reps "$4" --phase2-reps "$5"
}

for t in 1 2; do
  echo "## $t thread(s)"
  for net in $nets; do
    case $net in
      mnist_conv) pair configs/mnist_conv.toml mnist_conv 128 5 1 "$t" ;;
      mnist) pair configs/mnist_unet_vit.toml mnist "$mb" 3 1 "$t" ;;
      # CIFAR-10's phase-2 step (200 Langevin steps) takes minutes here: not timed; 5 phase-1 steps
      # (the first ones after start-up run on fresh memory and read 15–30 % slower)
      cifar10) pair configs/cifar10_unet_vit.toml cifar10 "$cb" 5 0 "$t" ;;
      *) echo "unknown net $net (mnist_conv | mnist | cifar10)" >&2; exit 2 ;;
    esac
  done
  echo
done
