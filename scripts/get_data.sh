#!/usr/bin/env bash
# Fetches data sets that are not Python packages, without root, into ~/.cache/zoo/raw
# (or $ZOO_RAW_DIR). Usage:
#   bash scripts/get_data.sh fashion_mnist   # Debian dataset-fashion-mnist (30.9 MB .deb)
#   bash scripts/get_data.sh chinese_poetry  # npm chinese-poetry@2.0.1 (85.5 MB); only to rebuild
#                                            # the committed quatrain extract (python -m zoo.data.poetry --rebuild)
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
  chinese_poetry)
    dest="$RAW/npm"
    if [ -d "$dest/node_modules/chinese-poetry/dist/quantangshi" ]; then echo "already there: $dest"; exit 0; fi
    command -v npm >/dev/null || { echo "npm not found; install Debian's npm (apt-get install -y npm)" >&2; exit 1; }
    mkdir -p "$dest" && (cd "$dest" && npm install --no-save --no-audit --no-fund chinese-poetry@2.0.1)
    echo "chinese-poetry in $dest/node_modules/chinese-poetry"
    ;;
  *) echo "usage: bash scripts/get_data.sh fashion_mnist|chinese_poetry" >&2; exit 2 ;;
esac
