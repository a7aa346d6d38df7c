"""Frozen linear layers under forward mode without a zero tangent the size of W.

PyTorch's forward-AD rule for a matmul of a dual input x with a plain weight W is
x_t @ W^T + x @ W_t^T with W_t a zero tensor, which the CPU kernels materialize:
each frozen linear layer allocates a W-sized block of zeros and an output-sized
product of them on every pass. For SmolLM2-135M's output layer (49,152 x 576) that is
108 MiB, more than the rest of the pass; for Llama-3.2-1B's, 1 GiB. An autograd
Function whose jvp is x_t @ W^T, with W held outside its tensor inputs (an input
would get a materialized zero tangent too), computes the same tangent with neither.
Inside a forward-mode pass, `frozen_linears` routes every nn.Linear whose weight is
frozen through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _Frozen:
    """Holds a layer's weight and bias out of sight of autograd's input handling."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight, self.bias = weight, bias


class FrozenLinear(torch.autograd.Function):
    """y = x W^T + b with the tangent x_t W^T: W and b are constants."""

    generate_vmap_rule = True  # so K tangents batched by torch.func.vmap work

    @staticmethod
    def forward(x: Tensor, frozen: _Frozen) -> Tensor:
        return F.linear(x, frozen.weight, frozen.bias)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, _Frozen], output: Tensor) -> None:
        ctx.frozen = inputs[1]

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor, _: None) -> Tensor:
        return F.linear(x_t, ctx.frozen.weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad @ ctx.frozen.weight, None


def _forward(layer: nn.Linear, x: Tensor) -> Tensor:
    return FrozenLinear.apply(x, _Frozen(layer.weight, layer.bias))


@contextmanager
def frozen_linears(model: nn.Module) -> Iterator[None]:
    """Inside the block, `model`'s frozen nn.Linear layers use `FrozenLinear`.

    A layer is frozen when its weight does not require grad: the tensors an engine
    differentiates (LoRA adapters, a head) are trainable and keep the usual rule.
    """
    layers = [
        m
        for m in model.modules()
        if type(m) is nn.Linear and not m.weight.requires_grad
        and (m.bias is None or not m.bias.requires_grad)
    ]  # fmt: skip
    for layer in layers:
        layer.forward = _forward.__get__(layer)  # an instance attribute shadows it
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
