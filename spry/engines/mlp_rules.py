"""Frozen feed-forward blocks with their own tangent rules, a block of tokens at a time.

With LoRA on the attention projections (every default here), a transformer layer's
feed-forward block is a frozen function of its input, position by position. Under
forward mode its intermediate activation (4x the hidden width) exists with its
tangent and the activation's derivative temporaries for every token at once, and
each of its operations runs on dual tensors. Here the whole block is one
`torch.autograd.Function` that walks the tokens in blocks, primal and tangent, with
plain tensor operations:

    BERT's (intermediate + output):  a = x W1^T + b1,  y = LN(act(a) W2^T + b2 + x)
        y_t = LN'(act'(a) (x_t W1^T) W2^T + x_t)
    Llama's (gated):                 g = x Wg^T, u = x Wu^T, y = (act(g) u) Wd^T
        y_t = (act'(g) (x_t Wg^T) u + act(g) (x_t Wu^T)) Wd^T

Only one block's intermediate tensors exist at a time. A block whose linears carry
adapters, or whose dropout is active, keeps the model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .duals import block_bytes, in_jvp, join, split
from .frozen_maps import affine, maps, transposed, with_bias
from .norm_rules import layer_norm_parts, project

# An activation as (f(x), f'(x) * t): the derivative times a tangent is one kernel.
Activation = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]


def activation_rule(module: Any) -> Activation | None:
    """`(f, f' * t)` for GELU and SiLU activation modules; None for anything else."""
    from transformers.activations import GELUActivation, SiLUActivation

    gelu = None
    if type(module) is GELUActivation and module.act is F.gelu:
        gelu = "none"
    elif type(module) is nn.GELU:
        gelu = module.approximate
    if gelu is not None:
        return (
            lambda x: F.gelu(x, approximate=gelu),
            lambda t, x: torch.ops.aten.gelu_backward(t, x, approximate=gelu),
        )
    if type(module) in (nn.SiLU, SiLUActivation):
        return F.silu, torch.ops.aten.silu_backward
    return None


class BertFeedForward:
    """BERT's feed-forward chunk: `output(intermediate(x), x)`, with its rule."""

    def __init__(self, up: nn.Module, act: Activation, down: nn.Module,
                 norm: nn.LayerNorm) -> None:  # fmt: skip
        self.up, self.down, self.norm = up, down, norm
        self.act, self.act_t = act
        self.width = up.out_features

    def _sum(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = affine(self.up, x)
        return a, affine(self.down, self.act(a)) + x

    def primal(self, x: Tensor) -> Tensor:
        _, s = self._sum(x)
        n = self.norm
        return F.layer_norm(s, s.shape[-1:], n.weight, n.bias, n.eps)

    def both(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        a, a_t = maps(self.up, x, t)
        a = with_bias(self.up, a)
        z, z_t = maps(self.down, self.act(a), self.act_t(a_t, a))
        s, s_t = with_bias(self.down, z) + x, z_t + t
        xh, r = layer_norm_parts(s, self.norm.eps)
        n = self.norm
        return xh * n.weight + n.bias, project(xh, r, s_t, centre=True) * n.weight

    def grad(self, x: Tensor, g: Tensor) -> Tensor:
        a, s = self._sum(x)
        xh, r = layer_norm_parts(s, self.norm.eps)
        g_s = project(xh, r, g * self.norm.weight, centre=True)
        g_a = self.act_t(transposed(self.down, g_s), a)
        return g_s + transposed(self.up, g_a)


class GatedFeedForward:
    """Llama's MLP: `down(act(gate(x)) * up(x))`, with its rule."""

    def __init__(self, gate: nn.Module, up: nn.Module, act: Activation,
                 down: nn.Module) -> None:  # fmt: skip
        self.gate, self.up, self.down = gate, up, down
        self.act, self.act_t = act
        self.width = gate.out_features

    def primal(self, x: Tensor) -> Tensor:
        g, u = affine(self.gate, x), affine(self.up, x)
        return affine(self.down, self.act(g) * u)

    def both(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        g, g_t = maps(self.gate, x, t)
        u, u_t = maps(self.up, x, t)
        g, u = with_bias(self.gate, g), with_bias(self.up, u)
        act = self.act(g)
        z_t = torch.addcmul(self.act_t(g_t, g) * u, act, u_t)
        y, y_t = maps(self.down, act * u, z_t)
        return with_bias(self.down, y), y_t

    def grad(self, x: Tensor, grad: Tensor) -> Tensor:
        g, u = affine(self.gate, x), affine(self.up, x)
        g_z = transposed(self.down, grad)
        g_g = self.act_t(g_z * u, g)
        return transposed(self.gate, g_g) + transposed(self.up, g_z * self.act(g))


FeedForward = BertFeedForward | GatedFeedForward


def _tangent(block: FeedForward, x: Tensor, t: Tensor) -> Tensor:
    return block.both(x, t)[1]


def _rows(block: FeedForward) -> int:
    """Tokens per block: their float32 intermediate activation within the budget."""
    return max(1, block_bytes() // (block.width * 4))


def _blockwise(fn: Callable[..., Any], rows: int, *tensors: Tensor) -> Any:
    """`fn` over blocks of `rows` tokens of same-shaped tensors, reassembled.

    `fn` returns a tensor or a tuple of tensors (reassembled each).
    """
    shape = tensors[0].shape
    flat = [t.reshape(-1, shape[-1]) for t in tensors]
    count = -(-len(flat[0]) // rows)
    rows = -(-len(flat[0]) // count)  # even blocks: 1024 rows by 341 would leave 1
    out = [fn(*(t[i : i + rows] for t in flat)) for i in range(0, len(flat[0]), rows)]

    def whole(parts: Sequence[Tensor]) -> Tensor:
        return torch.cat(list(parts)).reshape(*shape[:-1], -1)

    if isinstance(out[0], tuple):
        return tuple(whole(parts) for parts in zip(*out, strict=True))
    return whole(out)


def feed_forward(block: FeedForward, x: Tensor) -> Tensor:
    """The block's output; in a jvp, its primal and tangent in one blockwise pass."""
    rows = _rows(block)
    if in_jvp():
        x, t = split(x)
        if t is None:
            return _blockwise(block.primal, rows, x)
        return join(*_blockwise(block.both, rows, x, t))
    return FrozenFeedForward.apply(x, block)


class FrozenFeedForward(torch.autograd.Function):
    """A frozen feed-forward block, primal and tangent, a block of tokens at a time."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, block: FeedForward) -> Tensor:
        return _blockwise(block.primal, _rows(block), x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, FeedForward], _: Tensor) -> None:
        ctx.block = inputs[1]
        ctx.save_for_forward(inputs[0])
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor, _: None) -> Tensor:
        (x,) = ctx.saved_tensors
        return _blockwise(partial(_tangent, ctx.block), _rows(ctx.block), x, x_t)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return _blockwise(ctx.block.grad, _rows(ctx.block), x, grad), None
