#!/usr/bin/env bash
# The memory and speed suite on one CUDA GPU, in about 20 minutes on an H100:
# MiniLM, SmolLM2-135M, BERT-base and RoBERTa-large shapes, and the 1B-class OPT-1.3B
# and Llama-3.2-1B shapes (random weights), every engine, 64..512 tokens, bfloat16
# frozen weights. Peak memory is torch.cuda.max_memory_allocated after a reset, one
# fresh process per point. Results: benchmarks/results/cuda/memory.{json,csv,md,png}.
#
#   bash benchmarks/cuda_suite.sh                 # the whole suite
#   bash benchmarks/cuda_suite.sh --resume        # go on after an interruption
#
# Needs a CUDA build of torch 2.13.0 (on Linux x86-64, `pip install torch==2.13.0`
# from PyPI is one) and the project installed (`make setup` or pip install -e .).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "cuda_suite: torch sees no CUDA device ($("$PYTHON" -c 'import torch; print(torch.__version__)'))." >&2
    echo "Install a CUDA build: $PYTHON -m pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" >&2
    exit 1
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PYTHON" -m benchmarks.memory --suite cuda --device cuda \
    --out benchmarks/results/cuda "$@"
