"""Peak memory and step time of every gradient engine, per model and shape.

    python -m benchmarks.memory                  # the CPU suite -> benchmarks/results
    python -m benchmarks.memory --suite quick    # MiniLM, a few minutes
    python -m benchmarks.memory --models smollm2-135m,hf:gpt2 --seqs 64,128 --batches 8
    python -m benchmarks.memory --suite cuda --device cuda   # benchmarks/cuda_suite.sh

Each point (model, engine, batch, tokens, frozen dtype, loss chunking) is measured in
a fresh process; see `suite` for which points, `worker` for how, `report` for the
files (memory.json/.csv/.md and memory_*.png).
"""

from spry.memory import LIVE_ENV

__all__ = ["LIVE_ENV"]
