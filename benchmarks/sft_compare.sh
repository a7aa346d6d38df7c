#!/usr/bin/env bash
# The sft comparison of the forward-mode issue: SmolLM2-135M-Instruct with LoRA
# only, the `sft` task's offline review questions (sentiment, word count, word
# choice; a response of one or two tokens, exact match of the greedy answer), 100
# clients (Dirichlet 1.0 over the question kind), 10 a round, seed 0, 15 rounds,
# 2,000 training pairs, the task's 60 test pairs scored every 5 rounds.
#
# Unlike lm-classification, the untrained model scores 5% here (3 of the 60 test
# pairs; it answers in sentences): LoRA alone has to teach the answer format and
# the answers, with no head, as in the paper's Llama2/OPT cases.
#
# Run folders live in benchmarks/results/runs/compare_sft (resumed with --reuse).
# ROWS picks rows (default: all, in this order).
#
#   bash benchmarks/sft_compare.sh
#   ROWS=fedavg bash benchmarks/sft_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
PY=${PYTHON:-.venv/bin/python}
ROWS=${ROWS:-fedavg,fedavg-lr0.01=fedavg,fedmezo,spry-tuned=spry}
# Spry (tuned): lm-classification's tuned step (LoRA-FA, K = 8 in one vmapped pass,
# client SGD, linear decay, the server taking the slices as trained) at the rate
# the central probe picked on sft (benchmarks/results/sft_probe.md: one slice of
# 10, K = 8, 20 steps: lr 1 took the test loss from 3.35 to 2.89, lr 3 to 2.19).
T=spry-tuned
SPRY_LR=${SPRY_LR:-3}
TUNED=${TUNED:-"--for $T:lora-fa=true --for $T:num-tangents=8 --for $T:client-optimizer=sgd --for $T:lr=$SPRY_LR --for $T:server-optimizer=avg --for $T:lr-decay=linear"}
# FedAvg at its own default (AdamW 1e-3) and at 1e-2, the better of the two in the
# central probe (sft_probe.md, backprop over A and B, 20 steps: 3.35 -> 1.21 at 1e-3,
# 0.74 at 1e-2), so that Spry's tuned rate is not set against an untuned backprop.
FEDAVG=${FEDAVG:-"--for fedavg-lr0.01:lr=0.01"}
# FedMeZO: plain SGD over every LoRA weight, at the rate the central probe found
# stable on sft (sft_probe.md, 40 steps: 0.02, lm-classification's rate, diverged
# to a test loss of 22.5; 0.005 took it from 3.35 to 2.10; 0.002 to 3.26).
MEZO=${MEZO:-"--for fedmezo:client-optimizer=sgd --for fedmezo:lr=0.005"}
# shellcheck disable=SC2086
exec "$PY" -m benchmarks.compare --name sft --reuse \
  --runs-dir benchmarks/results/runs/compare_sft \
  --methods "$ROWS" --rounds 15 --seed 0 \
  --set task=sft --set max-train-examples=2000 --set eval-every=5 \
  --set eval-clients-per-round=0 \
  $TUNED $FEDAVG $MEZO "$@"
