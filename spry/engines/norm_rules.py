"""LayerNorm and RMSNorm with their own tangent rules, for frozen norms.

A norm is a dozen elementwise operations. Under torch.func.jvp each of them runs on a
dual tensor, and an RMSNorm written in Python (Llama's: cast, pow, mean, rsqrt, mul,
cast, mul) pays that on every one of its steps, twice per layer. Here a norm is one
`torch.autograd.Function` whose rule is the closed form, computed with plain tensor
operations below the transform. With xh the normalized input and r its inverse
scale, both norms' Jacobians are r * (I - xh xh^T / D), LayerNorm's after centring
(I - 1 1^T / D); that operator is symmetric, so the same `project` serves the
tangent (applied to x_t, then times the weight) and the backward (applied to the
weight times the gradient):

    LayerNorm:  y_t = w * r * (t - mean(t) - xh * mean(xh * t))
    RMSNorm:    y_t = w * r * (t - xh * mean(xh * t))

The affine weight and bias are constants (held outside autograd's inputs, as
`frozen.py` holds a frozen linear's weight): the rules apply to frozen norms only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


class NormConstants:
    """A frozen norm's kind, weight, bias and epsilon, out of sight of autograd."""

    __slots__ = ("rms", "weight", "bias", "eps")

    def __init__(
        self, weight: Tensor | None, bias: Tensor | None, eps: float, *, rms: bool
    ) -> None:
        self.rms, self.weight, self.bias, self.eps = rms, weight, bias, eps

    def parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(xh, r) of this norm's kind."""
        return (rms_norm_parts if self.rms else layer_norm_parts)(x, self.eps)


def layer_norm_parts(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(xh, r): x normalized over its last dimension, and the inverse scale."""
    xh, _, rstd = torch.native_layer_norm(x, x.shape[-1:], None, None, eps)
    return xh, rstd


def rms_norm_parts(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(xh, r) for RMSNorm, in float32 as Llama's RMSNorm computes it."""
    x = x.float()
    r = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x * r, r


def project(xh: Tensor, r: Tensor, t: Tensor, *, centre: bool) -> Tensor:
    """The Jacobian r (I - xh xh^T / D) times t, t centred first for LayerNorm."""
    t = t.to(xh.dtype)
    along = (xh * t).mean(-1, keepdim=True)
    if centre:
        t = t - t.mean(-1, keepdim=True)
    return torch.addcmul(t, xh, along, value=-1.0) * r


def _scaled(t: Tensor, weight: Tensor | None) -> Tensor:
    return t if weight is None else t * weight


class FrozenNorm(torch.autograd.Function):
    """A frozen LayerNorm (F.layer_norm over the last dimension) or Llama's RMSNorm.

    RMSNorm, as Llama's: weight * (x * rsqrt(mean(x^2) + eps)), in float32, cast back
    to the input's dtype before the weight.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, const: NormConstants) -> Tensor:
        if const.rms:
            return _scaled(const.parts(x)[0].to(x.dtype), const.weight)
        return F.layer_norm(x, x.shape[-1:], const.weight, const.bias, const.eps)

    @staticmethod
    def setup_context(
        ctx: Any, inputs: tuple[Tensor, NormConstants], _: Tensor
    ) -> None:
        ctx.const = inputs[1]
        ctx.save_for_forward(inputs[0])
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor, _: None) -> Tensor:
        (x,) = ctx.saved_tensors
        const = ctx.const
        xh, r = const.parts(x)
        t = project(xh, r, x_t, centre=not const.rms).to(x.dtype)
        return _scaled(t, const.weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        const = ctx.const
        xh, r = const.parts(x)
        g = project(xh, r, _scaled(grad, const.weight), centre=not const.rms)
        return g.to(x.dtype), None
