#!/usr/bin/env bash
# Prepares gpu/ (git-ignored) for bench/gpu_session.sh on a GPU machine that cannot build or
# download anything: `em` built here with `--features wgpu` (stripped and gzipped), MNIST as .gz
# IDX files, the MNIST classifier's weights, and Debian's Vulkan loader (libvulkan1) and glvnd
# libraries (the NVIDIA driver brings its own Vulkan ICD, libGLX_nvidia, which needs glvnd's
# libGLdispatch). About 30 MB in all.
# Usage: scripts/gpu-prepare.sh   (needs data/mnist from scripts/fetch-data.sh mnist; the build
# uses CARGO_TARGET_DIR, default target/, and takes ≈ 16 min cold on 2 cores)
set -euo pipefail

target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --features wgpu --bin em
mkdir -p gpu/mnist gpu/debs
strip -o gpu/em "$target/release/em"
gzip -f -9 gpu/em
for f in data/mnist/*-ubyte; do gzip -c -9 "$f" >"gpu/mnist/$(basename "$f").gz"; done
if [ -f data/mnist-classifier.safetensors ]; then cp data/mnist-classifier.safetensors gpu/; fi
(cd gpu/debs && apt-get download libvulkan1 libglvnd0 libglx0 libegl1 libgl1 libopengl0 libgles2)
du -sh gpu
echo "gpu/ is ready: run \`bash bench/gpu_session.sh\` on the GPU machine with gpu/ carried along"
