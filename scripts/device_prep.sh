#!/usr/bin/env bash
# Here, before a `device` run (../.library/device/README.md): gather what the GPU machine lacks into
# two git-ignored folders that the run tool carries (`carry: [".whl", ".devdata"]`, about 40 MB):
#   .whl/      Python 3.12 x86-64 wheels of the zoo's dependencies that the device image does not
#              have (its package list: ../.library/device/KINDS.md; it has jax, flax, optax,
#              orbax-checkpoint, numpy, matplotlib, pillow, tqdm and tfds' common dependencies)
#   .devdata/  the Fashion-MNIST IDX files (fetched by scripts/get_data.sh if missing)
# Then scripts/device_capsnet.sh runs there. Needs the project's .venv (its pip) and PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=(.venv/bin/python -m pip)
[ -x .venv/bin/python ] || { echo "device_prep: no .venv; run bash scripts/setup.sh first" >&2; exit 1; }

rm -rf .whl && mkdir -p .whl
# promise ships only a source archive: build its (pure-Python) wheel here.
"${PIP[@]}" wheel -q --no-deps -w .whl promise==2.3
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl \
  tensorflow-datasets==4.9.10 array_record==0.8.6 ml_collections==1.1.0 dm-tree==0.1.10 \
  docstring-parser==0.18.0 googleapis-common-protos==1.76.0 immutabledict==4.3.1 \
  importlib_resources==7.1.0 simple-parsing==0.1.9 tensorflow-metadata==1.21.0 termcolor==3.3.0 toml==0.10.2

# where the zoo itself finds them ($ZOO_RAW_DIR or Debian's system-wide install), fetched if nowhere
raw_dir() { .venv/bin/python -c "from zoo.data.images import fashion_mnist_raw_dir; print(fashion_mnist_raw_dir())" 2>/dev/null; }
raw=$(raw_dir) || { bash scripts/get_data.sh fashion_mnist && raw=$(raw_dir); }
rm -rf .devdata && mkdir -p .devdata/fashion-mnist
cp "$raw"/*-ubyte.gz .devdata/fashion-mnist/
du -sh .whl .devdata
