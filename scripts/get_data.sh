#!/usr/bin/env bash
# Fetches data sets that are not Python packages, without root, into ~/.cache/zoo/raw
# (or $ZOO_RAW_DIR). Usage:
#   bash scripts/get_data.sh fashion_mnist   # Debian dataset-fashion-mnist (30.9 MB .deb)
set -euo pipefail
RAW=${ZOO_RAW_DIR:-$HOME/.cache/zoo/raw}
case "${1:-}" in
  fashion_mnist)
    dest="$RAW/fashion-mnist"
    if [ -f "$dest/t10k-labels-idx1-ubyte.gz" ]; then echo "already there: $dest"; exit 0; fi
    if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
      mkdir -p "$dest" && cp /usr/share/datasets/fashion-mnist/*.gz "$dest/" && echo "copied into $dest" && exit 0
    fi
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    # apt-get download needs package lists; refresh them when we may (root) and they are missing.
    if ! (cd "$work" && apt-get download dataset-fashion-mnist 2>/dev/null); then
      if [ "$(id -u)" = 0 ]; then apt-get update -qq && (cd "$work" && apt-get download dataset-fashion-mnist)
      else echo "apt-get download dataset-fashion-mnist failed; run 'sudo apt-get update' and retry" >&2; exit 1; fi
    fi
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/x"
    mkdir -p "$dest" && cp "$work"/x/usr/share/datasets/fashion-mnist/*.gz "$dest/"
    echo "Fashion-MNIST IDX files in $dest"
    ;;
  *) echo "usage: bash scripts/get_data.sh fashion_mnist" >&2; exit 2 ;;
esac
