"""FwdLLM's direction selection: perturb along candidates that agree with the last step.

FwdLLM (Xu et al., arXiv 2308.13894; UbiquitousLearning/FwdLLM
`FedSgdClientManager`, `calculate_cos_sim`) draws, per trainable tensor, a pool of
candidate directions shared by the round's clients, ranks them by signed cosine to
the previous step's aggregated gradient, and gives client i the i-th best. The
directions are then no longer isotropic, so the estimate is biased towards the last
gradient (the method's bet: consecutive gradients agree). The original's cosine
helper returns only its last 1000-row chunk; here every candidate is ranked.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from .directions import DirectionSpec


class CosineRankedDirections:
    """A direction source for `FiniteDifference` that takes ranked candidates.

    Parameters
    ----------
    target : Mapping[str, np.ndarray]
        The previous step's gradient per tensor (the engine's parameter names).
    seed : int
        Seed of the candidates, the same for every client of the step.
    index : int
        This client's rank among the round's clients; with K directions per
        estimate it takes ranks index * K .. index * K + K - 1.
    count : int
        Candidates drawn per tensor.
    """

    def __init__(
        self, target: Mapping[str, np.ndarray], *, seed: int, index: int, count: int
    ) -> None:
        if count < 1 or index < 0:
            raise ValueError(f"need count >= 1 and index >= 0, got {count}, {index}")
        self.target = {k: torch.as_tensor(np.asarray(v)) for k, v in target.items()}
        self.seed, self.index, self.count = seed, index, count
        self._ranked: dict[str, Tensor] | None = None
        self._calls = 0

    def __call__(
        self, specs: Mapping[str, DirectionSpec], generator: torch.Generator
    ) -> dict[str, Tensor]:
        del generator  # the candidates come from the shared seed
        if self._ranked is None:
            self._ranked = self._rank(specs)
        pick = (self.index + self._calls) % self.count
        self._calls += 1
        return {
            name: self._ranked[name][pick].to(device=device, dtype=dtype)
            for name, (_, dtype, device) in specs.items()
        }

    def _rank(self, specs: Mapping[str, DirectionSpec]) -> dict[str, Tensor]:
        """Per tensor: the candidates sorted by signed cosine to the target."""
        generator = torch.Generator().manual_seed(self.seed)
        ranked = {}
        for name, (shape, _, _) in specs.items():
            candidates = torch.randn(self.count, *shape, generator=generator)
            target = self.target.get(name)
            if target is None or not torch.any(target):
                ranked[name] = candidates  # nothing to agree with: keep draw order
                continue
            flat = candidates.reshape(self.count, -1)
            goal = target.reshape(-1).to(flat.dtype)
            cosine = flat @ goal / (flat.norm(dim=1) * goal.norm())
            order = torch.argsort(cosine, descending=True, stable=True)
            ranked[name] = candidates[order]
        return ranked
