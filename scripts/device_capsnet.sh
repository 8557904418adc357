#!/usr/bin/env bash
# On the GPU machine of the `device` tool: CapsNet's 50-epoch Fashion-MNIST schedule
# (`zoo train capsnet --config gpu`) for several seeds side by side on the one GPU, so one
# call measures the seed spread that a single CPU run (3.5 h) cannot. Prepare here first with
# `bash scripts/device_prep.sh`, then call the run tool with
#   command: bash scripts/device_capsnet.sh     carry: [".whl", ".devdata"]     timeout_s: 600
# Settings (environment): SEEDS (default "0 1 2"), EXTRA (more --config.* overrides, e.g.
# "--config.optim.decay_per_epoch=0.95"), EMA (the weight EMA's decay, default 0.999; 0 = off: it
# leaves the trained params' trajectory unchanged and adds a test_accuracy_ema), DEADLINE_S (default 500), PY (default python3, the image's), SKIP_WHEELS=1
# (the dependencies are already importable, e.g. when trying the script on this CPU).
# Runs resume from their checkpoints under runs/device/<settings>/ (kept on a warm machine), so a call
# cut by the 10-minute limit can be repeated. $OUT gets each seed's metrics.jsonl, the tail of
# its log, and summary.txt (device, final and best test accuracy per seed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
SEEDS=${SEEDS:-"0 1 2"}
EXTRA=${EXTRA:-}
EMA=${EMA:-0.999}
CONFIG=${CONFIG:-gpu}
DEADLINE_S=${DEADLINE_S:-500}  # the runs stop here (checkpoints every 600 steps), inside the call's 600 s
OUT=${OUT:-runs/device/out}
# one folder per setting, so a repeated call resumes only the runs of its own settings
TAG=$(printf '%s' "${CONFIG}_ema${EMA}${EXTRA:+_$EXTRA}" | tr -cs 'A-Za-z0-9.' '_')
RUNS=runs/device/$TAG
mkdir -p "$OUT" "$RUNS"

if [ "${SKIP_WHEELS:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
  export ZOO_RAW_DIR=$PWD/.devdata ZOO_DATA_DIR=/tmp/zoo_tfds
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
# several processes share the GPU: no process may take 75% of its memory up front
export XLA_PYTHON_CLIENT_PREALLOCATE=false

"$PY" - <<'EOF' | tee "$OUT/summary.txt"
import jax
from zoo.data.images import load_images
print("devices:", jax.devices(), "| jax", jax.__version__)
for split in ("train", "test"):  # prepare the tfds builder once, before the runs race for it
    print(split, load_images("fashion_mnist", split)[0].shape)
EOF

pids=()
for seed in $SEEDS; do
  # shellcheck disable=SC2086  # EXTRA is a list of overrides
  timeout "$DEADLINE_S" "$PY" -m zoo.cli train capsnet --config "$CONFIG" --config.seed="$seed" --config.train.progress=False --config.train.ema_decay="$EMA" $EXTRA \
    --workdir "$RUNS/capsnet_seed$seed" >"$RUNS/seed$seed.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done

for seed in $SEEDS; do
  run=$RUNS/capsnet_seed$seed
  tail -n 20 "$RUNS/seed$seed.log" >"$OUT/seed$seed.log.tail"
  cp "$run/metrics.jsonl" "$OUT/seed$seed.metrics.jsonl" 2>/dev/null || true
done
"$PY" - "$SEEDS" "$RUNS" "$EXTRA" <<'EOF' | tee -a "$OUT/summary.txt"
import sys
from zoo.core.metrics import MetricWriter
print(f"runs: {sys.argv[2]} | overrides: {sys.argv[3] or '(none)'}")
for seed in sys.argv[1].split():
    rows = MetricWriter(f"{sys.argv[2]}/capsnet_seed{seed}").read()
    if not rows:
        print(f"seed {seed}: no metrics"); continue
    evals = [(r["step"], r["test_accuracy"]) for r in rows if "test_accuracy" in r]
    speeds = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    speed = f", median {sorted(speeds)[len(speeds) // 2]:.1f} steps/s" if speeds else ""
    if evals:
        best = max(evals, key=lambda e: e[1])
        ema = [r["test_accuracy_ema"] for r in rows if "test_accuracy_ema" in r]
        ema = f"; EMA {ema[-1]:.4f}, best {max(ema):.4f}" if ema else ""
        print(f"seed {seed}: step {evals[-1][0]} test accuracy {evals[-1][1]:.4f}, best {best[1]:.4f} at step {best[0]}{ema}{speed}")
    else:
        print(f"seed {seed}: no evaluation yet{speed}")
EOF
exit $status
