"""Backpropagation: the reference every other engine is measured against."""

from __future__ import annotations

import torch
from torch import nn

from .base import (
    Batch,
    GradientEngine,
    GradientEstimate,
    Params,
    TaskLoss,
    functional_loss,
)


class Backprop(GradientEngine):
    """Exact gradient by reverse-mode AD (stores activations for the backward pass)."""

    name = "backprop"

    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        del generator  # exact: nothing is random
        f = functional_loss(model, loss, batch)
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            value, aux = f(leaves)
            grads = torch.autograd.grad(value, list(leaves.values()))
        if isinstance(aux, torch.Tensor):
            aux = aux.detach()
        return GradientEstimate(
            loss=value.detach(),
            grads=dict(zip(leaves, grads, strict=True)),
            aux=aux,
            forward_passes=1,
        )
