#!/usr/bin/env bash
# Does Spry's forward-mode LoRA add to its exact head on the default task? The
# default federation (MiniLM, Rotten Tomatoes, 100 clients, 10 a round, seed 0,
# 20 rounds) for:
#   head-only   Spry's reference: LoRA frozen, the same head and server step
#   spry-avg    Spry as it now defaults: the server takes the forward-estimated
#               LoRA slices as trained (estimated-server-optimizer=avg), Yogi on
#               the exact head
#   spry-yogi   the earlier default: Yogi on every tensor, which moves each noisy
#               slice coordinate by about eta a round
#   spry-exact  Spry's split, head and server with exact (backprop) LoRA gradients:
#               what a perfect estimator of the slices would add (every tensor
#               exact, so every tensor steps with Yogi)
#   spry-exact-avg  the same, every tensor averaged by the server
#   fedavg      backprop FedAvg
# Report: compare_encoder.{json,md,png}.
#
# Run folders live in benchmarks/results/runs/compare_encoder so a later session
# resumes an interrupted row (--reuse). ROWS picks rows (default: all).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
ROWS=${ROWS:-head-only,spry-avg=spry,spry-yogi=spry,spry-exact=spry,spry-exact-avg=spry,fedavg}
exec "$PY" -m benchmarks.compare --name encoder --reuse \
  --runs-dir benchmarks/results/runs/compare_encoder \
  --methods "$ROWS" --rounds 20 --seed 0 \
  --for spry-avg:estimated-server-optimizer=avg \
  --for spry-yogi:estimated-server-optimizer= \
  --for spry-exact:engine=backprop \
  --for spry-exact-avg:engine=backprop --for spry-exact-avg:server-optimizer=avg "$@"
