#!/usr/bin/env bash
# Does Spry's forward-mode LoRA add to its exact head on the default task? The
# default federation (MiniLM, Rotten Tomatoes, 100 clients, 10 a round, seed 0,
# 20 rounds) for Spry, its head-only reference (LoRA frozen, the same head and
# server step), Spry whose forward-estimated LoRA slices the server takes as
# trained (estimated-server-optimizer=avg: Yogi would move each of their noisy
# coordinates by about eta a round; the head keeps Yogi), and backprop FedAvg.
# Report: compare_encoder.{json,md,png}.
#
# Run folders live in benchmarks/results/runs/compare_encoder so a later session
# resumes an interrupted row (--reuse). ROWS picks rows (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
ROWS=${ROWS:-head-only,spry-avg=spry,spry,fedavg}
exec "$PY" -m benchmarks.compare --name encoder --reuse \
  --runs-dir benchmarks/results/runs/compare_encoder \
  --methods "$ROWS" --rounds 20 --seed 0 \
  --for spry-avg:estimated-server-optimizer=avg "$@"
