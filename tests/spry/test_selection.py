"""FwdLLM's direction selection: ranked by cosine to the last gradient, shared pool."""

from __future__ import annotations

import numpy as np
import torch

from spry.engines.directions import direction_specs
from spry.engines.selection import CosineRankedDirections


def _cos(a, b):
    a, b = a.reshape(-1), b.reshape(-1)
    return float(a @ b / (a.norm() * b.norm()))


def test_client_i_gets_the_i_th_best_candidate_of_a_shared_pool():
    target = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3)}
    specs = direction_specs({"w": torch.zeros(2, 3), "b": torch.zeros(3)})
    picks = [
        CosineRankedDirections(target, seed=9, index=i, count=30)(
            specs, torch.Generator()
        )
        for i in range(30)
    ]
    for name in ("w", "b"):
        goal = torch.as_tensor(target[name], dtype=torch.float32)
        cosines = [_cos(p[name], goal) for p in picks]
        # The 30 clients took the whole pool, best first, no two alike
        assert cosines == sorted(cosines, reverse=True)
        assert len({round(c, 6) for c in cosines}) == 30
        assert cosines[0] > 0.5 > cosines[-1]


def test_k_calls_take_consecutive_ranks_and_a_zero_target_keeps_draw_order():
    specs = direction_specs({"w": torch.zeros(4)})
    zero = CosineRankedDirections({"w": np.zeros(4)}, seed=1, index=2, count=5)
    drawn = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(zero(specs, torch.Generator())["w"], drawn[2])
    assert torch.equal(zero(specs, torch.Generator())["w"], drawn[3])
