"""BAFFLE+ and FwdLLM+ as Spry's own comparison code computes them, bugs included.

Spry's paper reports its zero-order baselines from `trainers/client_baffle_plus.py`
and `trainers/client_fwdllm_plus.py` (Astuary/Spry@f85533c, read for
shared/BASELINES.md). Both estimators differ from their methods' originals in ways
that change the numbers, so reproducing the paper's gaps needs them as they are,
and judging the methods needs the faithful ones (`baffle`, `fwdllm`). These are
kept apart, named `baffle-plus` and `fwdllm-plus`, so no one mistakes one for the
other.

- BAFFLE+ (center, sigma 1e-4, K = 10): `param.grad += (difference / 2 * sigma) *
  (delta / sigma)` for k >= 2 is difference * sigma / 2 * v by operator precedence,
  and the first term has no /2. With difference = 2 sigma s_k (s_k the central
  estimate of grad . v_k) the weights are 2 / K for k = 1 and sigma^2 / K after:
  effectively one direction, scaled by 2 / K, for 2K forward passes.
- FwdLLM+ (center, h 1e-2, K = 20): once its direction buffer exists it perturbs
  with the same v for all K probes of a batch, so the K scalars are equal and the
  estimate is s v, K = 1 for 2K passes. (It also picks v by cosine to the global
  delta; here v is N(0, I) — the reuse is what sets its variance.)

Both keep our eval mode and fp32 (Spry's ran dropout on and FwdLLM+ under autocast);
see BASELINES.md section 2 and 4.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .directions import DirectionSpec, sample_direction
from .zeroth_order import BAFFLE_EPS, FWDLLM_EPS, FiniteDifference

BAFFLE_PLUS_K = 10
FWDLLM_PLUS_K = 20


class BafflePlus(FiniteDifference):
    """Spry's BAFFLE+: central differences with the precedence bug's weights."""

    name = "baffle-plus"

    def __init__(self, *, num_tangents: int = BAFFLE_PLUS_K, eps: float = BAFFLE_EPS):
        super().__init__(num_tangents=num_tangents, eps=eps, fd_format="center")

    def _weight(self, k: int, scalar: float) -> float:
        factor = 2.0 if k == 0 else self.eps**2
        return factor * scalar / self.num_tangents


class FwdLLMPlus(FiniteDifference):
    """Spry's FwdLLM+: K central differences along one reused direction."""

    name = "fwdllm-plus"

    def __init__(self, *, num_tangents: int = FWDLLM_PLUS_K, eps: float = FWDLLM_EPS):
        super().__init__(
            num_tangents=num_tangents,
            eps=eps,
            fd_format="center",
            directions=self._reused_direction,
        )
        self._drawn: dict[str, Tensor] | None = None
        self._draws_left = 0

    def estimate(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self._draws_left = 0  # every estimate starts with a fresh direction
        return super().estimate(*args, **kwargs)

    def _reused_direction(
        self, specs: Mapping[str, DirectionSpec], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """A fresh direction on the first probe of an estimate, then the same one."""
        if self._draws_left == 0:
            self._drawn = sample_direction(specs, generator)
            self._draws_left = self.num_tangents
        self._draws_left -= 1
        assert self._drawn is not None
        return self._drawn
