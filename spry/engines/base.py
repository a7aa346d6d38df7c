"""One interface for every way a client turns a loss into a gradient.

A task supplies its loss as `loss(model, batch) -> (scalar loss, aux)`; an engine
gets that function, the batch, and the trainable tensors it should differentiate
(`params`, keyed by the model's own parameter names; every other weight stays as it
is in the model), and returns the loss and a gradient estimate for exactly those
tensors. Forward-mode, backprop and zero-order engines all take this path, so a
comparison between them differs only in the engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

Batch = Mapping[str, Tensor]
TaskLoss = Callable[[nn.Module, Batch], tuple[Tensor, Any]]
Params = Mapping[str, Tensor]


@dataclass(frozen=True)
class GradientEstimate:
    """What an engine returns for one batch.

    Parameters
    ----------
    loss : Tensor
        The scalar loss at `params` (detached).
    grads : dict[str, Tensor]
        The gradient (or its estimate) for every tensor in `params`.
    aux : Any
        The task's side output (e.g. logits), detached.
    forward_passes : int (default: 0)
        Forward passes through the model this estimate cost (a jvp pass counts as
        one), so engines can be compared at equal compute.
    projected : tuple[float, ...] (default: ())
        The K per-direction scalars (directional derivatives or their finite
        differences), in draw order, for engines that average K random directions.
        With the generator's seed they are all a server needs to rebuild `grads`.
    """

    loss: Tensor
    grads: dict[str, Tensor]
    aux: Any
    forward_passes: int = 0
    projected: tuple[float, ...] = ()


class GradientEngine(ABC):
    """Turns a task loss into a gradient estimate for a set of trainable tensors."""

    name: ClassVar[str]

    def is_exact(self, name: str) -> bool:
        """Whether the gradient this engine returns for tensor `name` is exact.

        An estimate (a forward or zero-order gradient) is the true gradient plus
        noise, and a client may step it differently (`estimated-optimizer`).
        """
        del name
        return False

    @abstractmethod
    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        """Loss and gradient estimate of `loss(model, batch)` w.r.t. `params`.

        `generator` is the only source of randomness an engine may use, so that the
        same (seed, round, client, step) gives the same estimate.
        """


class _LossModule(nn.Module):
    """Wraps model + task loss so `functional_call` can swap the trainable tensors."""

    def __init__(self, model: nn.Module, loss: TaskLoss) -> None:
        super().__init__()
        self.model = model
        self._loss = loss

    def forward(self, batch: Batch) -> tuple[Tensor, Any]:
        return self._loss(self.model, batch)


def functional_loss(
    model: nn.Module, loss: TaskLoss, batch: Batch
) -> Callable[[Params], tuple[Tensor, Any]]:
    """`params -> loss(model with params substituted, batch)`, a pure function.

    Only the tensors in `params` are replaced; frozen weights and buffers are read
    from the model itself, so they are never copied or traced.
    """
    wrapper = _LossModule(model, loss)

    def f(params: Params) -> tuple[Tensor, Any]:
        substituted = {f"model.{name}": value for name, value in params.items()}
        return torch.func.functional_call(wrapper, substituted, (batch,), strict=False)

    return f


def check_params(model: nn.Module, params: Params) -> None:
    """Fail early, naming the tensor, if `params` does not fit the model."""
    own = dict(model.named_parameters())
    for name, value in params.items():
        if name not in own:
            raise KeyError(f"{name!r} is not a parameter of {type(model).__name__}")
        if own[name].shape != value.shape:
            raise ValueError(
                f"{name!r}: shape {tuple(value.shape)} does not match the model's "
                f"{tuple(own[name].shape)}"
            )
