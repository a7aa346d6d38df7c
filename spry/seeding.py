"""Every random draw derives from (root seed, round, client, step), never from order.

Flower schedules clients in whatever order its backend likes and gives nodes random
ids; seeding from a global RNG would make two runs with one seed differ. Here each
draw gets its own generator from a `numpy.random.SeedSequence` over named integers,
so a client's tangents are a pure function of where they are used, and a server can
regenerate them from the seed alone.
"""

from __future__ import annotations

import numpy as np
import torch

# Streams keep draws for different purposes apart even when the integers coincide.
STREAM_SAMPLING = 1
STREAM_TANGENTS = 2
STREAM_DATA = 3
STREAM_INIT = 4
STREAM_SELECTION = 5
# 6 was a statistics stream that nothing drew from; the clients asked for feature
# statistics are a sample (SAMPLE_STATISTICS below), so it is retired, not reused.
STREAM_DEVICES = 7
STREAM_FAULTS = 8
STREAM_DROPOUT = 9  # a training step's dropout masks (`client.dropout`)
# An evaluation client's fine-tuning (`eval-finetune-epochs`): its batch order and
# directions, apart from the training draws of the same round and client.
STREAM_EVAL_FINETUNE = 10

# The server's client samples are all draws of STREAM_SAMPLING:
# `spry.splitting.sample_clients(seed, offset + round, ...)`. The offsets keep the
# training, evaluation, feature-statistics and second-wave samples of a round apart
# (they would meet only in a run of a million rounds).
SAMPLE_TRAIN = 0
SAMPLE_EVALUATE = 1_000_000
SAMPLE_STATISTICS = 2_000_000
SAMPLE_REASSIGN = 3_000_000


def derive_seed(root: int, stream: int, *path: int) -> int:
    """A 63-bit seed that depends only on `root`, `stream` and `path`.

    >>> derive_seed(0, STREAM_TANGENTS, 3, 7, 0) == derive_seed(0, 2, 3, 7, 0)
    True
    """
    entropy = [int(root), int(stream), *(int(p) for p in path)]
    if any(e < 0 for e in entropy):
        raise ValueError(f"seed path must be non-negative, got {entropy}")
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def torch_generator(
    root: int, stream: int, *path: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A torch.Generator seeded by `derive_seed` on `device`."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(root, stream, *path))
    return generator


def numpy_rng(root: int, stream: int, *path: int) -> np.random.Generator:
    """A numpy Generator seeded by `derive_seed`."""
    return np.random.default_rng(derive_seed(root, stream, *path))
