#!/usr/bin/env bash
# The short GPU run, within 8 minutes on one H200: a quick CUDA memory suite (MiniLM
# and SmolLM2-135M shapes with random weights from carried configs, BERT-base and
# RoBERTa-large shapes; every engine at the main point, batch 8, 128 tokens (SmolLM2
# 64); inference/backprop/spry again with bfloat16 frozen weights), then a 2-round
# `spry run` with four clients sharing the GPU (client-num-gpus=0.25) on a random-
# weight MiniLM and the carried Rotten Tomatoes CSV. Everything goes to one folder.
#
#   bash benchmarks/gpu_run.sh [OUT]            # OUT: $GPU_RUN_OUT or benchmarks/results/gpu
#   DEVICE=cpu bash benchmarks/gpu_run.sh OUT   # the CPU dry run: tiny points, tiny run
#
# The GPU machine has a CUDA torch but not Flower, Ray, datasets and a few of their
# dependencies, and reaches no index: prepare .gpu/ here first (benchmarks/gpu_run.py
# says what goes in it) and carry it:
#
#   python -m benchmarks.gpu_run assets .gpu && python -m benchmarks.gpu_run wheels .gpu
#   device run, carry [".gpu"]:  bash benchmarks/gpu_run.sh /tmp/gpu; tar czf $OUT/gpu.tar.gz -C /tmp gpu
#
# Without what it needs the script stops before measuring anything, listing the
# missing wheels (exit 3). Budgets, seconds: SUITE_BUDGET 270 (points left then are
# listed as skipped), SIM_TIMEOUT 150 (CPU dry run: 120 and 900).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${GPU_RUN_OUT:-benchmarks/results/gpu}}"
DEVICE="${DEVICE:-cuda}"
ASSETS="${ASSETS:-.gpu}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
started=$SECONDS
say() { echo "[gpu_run $((SECONDS - started)) s] $*" | tee -a "$OUT/log.txt" >&2; }

if [ -f "$ASSETS/site.tar.xz" ]; then  # the carried wheels, installed and packed
    SITE="${TMPDIR:-/tmp}/spry-gpu-site"
    rm -rf "$SITE" && mkdir -p "$SITE"
    tar xJf "$ASSETS/site.tar.xz" -C "$SITE" --strip-components=1
    export PYTHONPATH="$PYTHONPATH:$SITE"  # after the repository, before the image's
    say "unpacked $ASSETS/site.tar.xz into $SITE"
fi
for need in "$ASSETS/minilm/config.json" "$ASSETS/smollm2-135m/config.json" \
    "$ASSETS/rotten_tomatoes.csv"; do
    if [ ! -f "$need" ]; then
        echo "gpu_run: $need is missing: run python -m benchmarks.gpu_run assets $ASSETS" \
            "where the project is installed, and carry $ASSETS" >&2
        exit 3
    fi
done
"$PY" -m benchmarks.gpu_run check --device "$DEVICE" --versions "$OUT/versions.json" \
    || exit 3
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true

if [ "$DEVICE" = cpu ]; then  # a dry run of every step on a busy CPU: tiny, patient
    TINY=--tiny GPUS=0 ROUNDS=2 EXAMPLES="max-train-examples=64" TESTS="max-test-examples=32"
    SUITE_BUDGET="${SUITE_BUDGET:-120}" SIM_TIMEOUT="${SIM_TIMEOUT:-900}"
else
    TINY="" GPUS=0.25 ROUNDS=2 EXAMPLES="max-train-examples=1024" TESTS="max-test-examples=512"
    SUITE_BUDGET="${SUITE_BUDGET:-270}" SIM_TIMEOUT="${SIM_TIMEOUT:-150}"
fi

say "memory points on $DEVICE (budget ${SUITE_BUDGET} s)"
"$PY" -m benchmarks.gpu_run suite --assets "$ASSETS" --device "$DEVICE" --out "$OUT" \
    --budget "$SUITE_BUDGET" $TINY >"$OUT/suite.log" 2>&1 || say "suite failed: see suite.log"
say "memory points done"

say "model with random weights, then $ROUNDS rounds, 4 clients, client-num-gpus=$GPUS"
"$PY" -m benchmarks.gpu_run model "$ASSETS" "$OUT/model" >>"$OUT/log.txt" 2>&1
status=0
timeout "$SIM_TIMEOUT" "$PY" -m cli run --rounds "$ROUNDS" --clients 4 --per-round 4 \
    --set eval-clients-per-round=4 --set "client-num-gpus=$GPUS" \
    --set "model=$OUT/model" --set "dataset=$ASSETS/rotten_tomatoes.csv" \
    --set "$EXAMPLES" --set "$TESTS" --set checkpoint-every=0 \
    --results-dir "$OUT/sim" >"$OUT/sim.log" 2>&1 || status=$?
rm -rf "$OUT/model"  # random weights: rebuilt in seconds, not worth carrying back
say "simulation exit $status"
say "done in $((SECONDS - started)) s: $(ls "$OUT" | tr '\n' ' ')"
exit "$status"
