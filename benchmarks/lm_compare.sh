#!/usr/bin/env bash
# The LM comparison of the forward-mode issue: SmolLM2-135M-Instruct with LoRA only,
# `lm-classification` on Rotten Tomatoes, 100 clients (Dirichlet 1.0), 10 a round,
# seed 0, 30 rounds. Shape sized for 2 CPU cores: 2,000 training sentences (about
# 18 per client, 2-3 local steps of 8), prompts of at most 64 tokens, the first 500
# test sentences scored every 5 rounds, no federated evaluation.
#
# Every row's run folder (metrics, checkpoint) lives in benchmarks/results/runs/
# compare_lm, so a session that ends mid-run is resumed by the next one (--reuse);
# completed rows are reused. ROWS picks rows (default: all, in this order).
#
#   bash benchmarks/lm_compare.sh                     # every row, then the report
#   ROWS=fedavg,fedmezo bash benchmarks/lm_compare.sh  # some rows (report of those)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
ROWS=${ROWS:-fedavg,fedmezo,spry-tuned=spry,spry-decay=spry,spry-paper,fedfgd,fedavg-ckpt}
# Spry (tuned): the central probe's winner on this task (benchmarks/results/lm_probe.md):
# LoRA-FA (only B trains), K = 8 tangents in one vmapped pass, plain SGD at lr 3 on
# the client, the server taking the slices as trained (avg).
# Its rate is constant: the task's own Spry settings (lm-classification's
# method_defaults) now decay it, as the row spry-decay does.
T=spry-tuned
STEP="--for $T:lora-fa=true --for $T:num-tangents=8 --for $T:client-optimizer=sgd --for $T:lr=3 --for $T:server-optimizer=avg"
TUNED=${TUNED:-"$STEP --for $T:lr-decay=constant"}
# Spry (tuned, decayed): the same, its client rate decaying linearly over the run
# (FwdLLM's schedule): at a constant lr 3 tuned Spry met FedAvg at round 10 (84.6%)
# and then wandered off (79.2% at round 30).
D=spry-decay
DECAY=${DECAY:-"${STEP//$T:/$D:} --for $D:lr-decay=linear"}
# FedMeZO as its authors step it: plain SGD (MeZO's zo_update). It splits nothing:
# one direction over all 57,600 LoRA weights (A and B). At lr 0.1 (stable centrally
# for B alone, 23,040 weights) it diverged (47% after 5 rounds, test loss 1.53; kept
# as the row fedmezo-lr0.1), so 0.02.
MEZO=${MEZO:-"--for fedmezo:client-optimizer=sgd --for fedmezo:lr=0.02"}
# shellcheck disable=SC2086
exec "$PY" -m benchmarks.compare --name lm --reuse \
  --runs-dir benchmarks/results/runs/compare_lm \
  --methods "$ROWS" --rounds 30 --seed 0 \
  --set task=lm-classification --set max-train-examples=2000 \
  --set max-test-examples=500 --set eval-every=5 --set eval-clients-per-round=0 \
  $TUNED $DECAY $MEZO "$@"
