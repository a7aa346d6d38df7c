"""Forward-mode gradient estimates: the engine Spry's clients use.

Baydin et al., "Gradients without Backpropagation" (arXiv 2202.08587); Spry
(Panchal et al., arXiv 2405.15551) applies it to a slice of the trainable weights.

For a tangent v ~ N(0, I) over the trainable tensors, one forward pass with dual
numbers gives f(w) and the directional derivative <grad f(w), v> together; the
forward gradient g = <grad f(w), v> v is an unbiased estimate of grad f(w) because
E[v v^T] = I. With K tangents, g = (1/K) sum_k <grad f, v_k> v_k. No activation is
stored for a backward pass, which is where the memory saving comes from: the pass
runs under `torch.no_grad()`, and only tensors in the slice carry tangents.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import (
    Batch,
    GradientEngine,
    GradientEstimate,
    Params,
    TaskLoss,
    functional_loss,
)
from .directions import direction_specs, sample_direction


class ForwardADUnsupportedError(RuntimeError):
    """An operator in the model has no forward-mode AD rule."""


@contextmanager
def forward_ad_kernels() -> Iterator[None]:
    """Route scaled-dot-product attention to the math kernel inside a jvp.

    The fused SDPA kernels (flash, memory-efficient) have no forward-AD rule on CPU
    (pytorch #98164, #117629); the math kernel does. Models built with
    `attn_implementation="eager"` are unaffected.
    """
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def directional_derivative(
    model: nn.Module,
    loss: TaskLoss,
    batch: Batch,
    params: Params,
    tangents: Params,
) -> tuple[Tensor, Tensor, Any]:
    """`(loss, <grad loss, tangents>, aux)` in one forward pass with dual numbers."""
    f = functional_loss(model, loss, batch)
    primals = {name: value.detach() for name, value in params.items()}
    with torch.no_grad(), forward_ad_kernels():
        try:
            value, derivative, aux = torch.func.jvp(
                f, (primals,), (dict(tangents),), has_aux=True
            )
        except NotImplementedError as error:
            raise ForwardADUnsupportedError(
                f"forward-mode AD failed inside {type(model).__name__}: {error}. "
                "Build the model with attn_implementation='eager' or replace the "
                "operator named above."
            ) from error
    return value.detach(), derivative.detach(), aux


class ForwardGradient(GradientEngine):
    """Forward gradient over the given tensors with K seeded Gaussian tangents.

    Parameters
    ----------
    num_tangents : int (default: 1)
        K, the number of tangents averaged per batch (the paper's default is 1).
    """

    name = "forward"

    def __init__(self, *, num_tangents: int = 1) -> None:
        if num_tangents < 1:
            raise ValueError(f"`num_tangents` should be >= 1, got {num_tangents}")
        self.num_tangents = num_tangents

    def sample_tangents(
        self, params: Params, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """One tangent per tensor, N(0, I), drawn in `params`' order.

        Drawn on the generator's device and moved to the tensor's (see
        `sample_direction`, whose stream this is): a server holding the seed and the
        same names in the same order redraws them exactly.
        """
        return sample_direction(direction_specs(params), generator)

    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        grads = {name: torch.zeros_like(value) for name, value in params.items()}
        value, aux = None, None
        projected: list[float] = []
        for _ in range(self.num_tangents):
            tangents = self.sample_tangents(params, generator)
            value, derivative, aux = directional_derivative(
                model, loss, batch, params, tangents
            )
            projected.append(derivative.item())
            scale = projected[-1] / self.num_tangents
            for name, tangent in tangents.items():
                grads[name].add_(tangent, alpha=scale)
        assert value is not None
        return GradientEstimate(
            loss=value,
            grads=grads,
            aux=aux,
            forward_passes=self.num_tangents,
            projected=tuple(projected),
        )
