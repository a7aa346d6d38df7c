"""Attention with its own tangent rule, a block of queries at a time.

Under forward-mode AD, eager attention keeps the scores, the probabilities and their
tangents for every query at once, plus the temporaries of softmax's tangent rule
(p * (s_t - sum(p * s_t))): for MiniLM at batch 8 and 128 tokens each is 6 MiB, and
together they set the pass's peak. Flash attention never materializes the (T, T)
scores of all queries for the primal; this does the same for primal and tangent. For
a block of queries Q_c against all keys,

    S = Q_c K^T * scale + mask,  P = softmax(S),  O_c = P V
    S_t = (Q_t,c K^T + Q_c K_t^T) * scale
    P_t = P * (S_t - rowsum(P * S_t))
    O_t,c = P_t V + P V_t

and only one block's (c, T) tensors exist at a time. `forward` and `jvp` of one
`torch.autograd.Function` run below torch.func's transforms, as plain tensor
operations: one call at the jvp level instead of a dozen, each of which would carry a
dual tensor through the dispatcher. The primal scores are recomputed in `jvp` (one
more (c, d) x (d, T) product per block, small beside the layer's linears) rather than
kept from `forward`, which is what would hold them all.

`fused_attention` has the signature of transformers' attention functions
(`eager_attention_forward`), so `eager_routed_to_fused` can put it in place of eager
attention for the length of a forward-mode pass. It handles what eager attention
does: an additive float mask or a boolean one (True: attend) broadcast over heads,
grouped key/value heads, a scaling. Attention dropout in train mode, sliding
windows, soft-capping and sink tokens are left to the model's own eager function.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .duals import block_bytes, in_jvp, join, split

# Keyword arguments that change what eager attention computes in ways not handled here.
_UNHANDLED = ("sliding_window", "softcap", "s_aux", "sinks", "head_mask")


class _Constants:
    """The scaling and the block size: constants of the pass."""

    __slots__ = ("scaling", "block")

    def __init__(self, scaling: float, block: int) -> None:
        self.scaling, self.block = scaling, block


def _blocks(length: int, block: int) -> Iterator[slice]:
    """Slices of at most `block` rows covering `length`, as even as they can be."""
    count = -(-length // block)
    size = -(-length // count)
    for start in range(0, length, size):
        yield slice(start, min(start + size, length))


def _mask_rows(mask: Tensor | None, rows: slice) -> Tensor | None:
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., rows, :]


def _scores(
    q: Tensor, k: Tensor, mask: Tensor | None, const: _Constants, rows: slice
) -> Tensor:
    """Softmax's input for a block of queries, in float32."""
    scores = torch.matmul(q[..., rows, :], k.transpose(-1, -2)).float() * const.scaling
    mask = _mask_rows(mask, rows)
    if mask is None:
        return scores
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores + mask


def _heads_last(blocks: list[Tensor]) -> Tensor:
    """(B, H, T, D) blocks of queries -> (B, T, H, D), as eager attention returns."""
    return torch.cat(blocks, dim=-2).transpose(-3, -2).contiguous()


def _attend_block(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    const: _Constants,
    rows: slice,
    tangents: tuple[Tensor | None, Tensor | None, Tensor | None],
    primal: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """(O_c, O_t,c) for one block of queries, from one softmax (see module doc)."""
    q_t, k_t, v_t = tangents
    p = torch.softmax(_scores(q, k, mask, const, rows), dim=-1)
    out = torch.matmul(p.to(v.dtype), v) if primal else None
    s_t = None
    if q_t is not None:
        s_t = torch.matmul(q_t[..., rows, :], k.transpose(-1, -2))
    if k_t is not None:
        term = torch.matmul(q[..., rows, :], k_t.transpose(-1, -2))
        s_t = term if s_t is None else s_t + term
    o_t = None
    if s_t is not None:
        s_t = s_t.float() * const.scaling
        p_t = p * (s_t - (p * s_t).sum(-1, keepdim=True))
        o_t = torch.matmul(p_t.to(v.dtype), v)
    if v_t is not None:
        term = torch.matmul(p.to(v.dtype), v_t)
        o_t = term if o_t is None else o_t + term
    return out, o_t


def _keys(k: Tensor) -> Tensor:
    """K laid out so that K^T is contiguous for the score products."""
    return k.transpose(-1, -2).contiguous().transpose(-1, -2)


def _attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    const: _Constants,
    tangents: tuple[Tensor | None, Tensor | None, Tensor | None],
    *,
    primal: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """(O, O_t) over all blocks of queries, heads last; a part not asked for: None.

    Keys, which every block multiplies whole, are laid out once so that K^T is
    contiguous: a matmul with a strided transposed view copies it on every call.
    Values are left as they come: a contiguous copy of V and V_t would add two
    hidden-sized tensors to the peak (12 MiB for RoBERTa-large at batch 8 and 128
    tokens: its spry extra 78 MiB with them, 71 without, in about the same time).
    """
    q_t, k_t, v_t = tangents
    k, k_t = (None if x is None else _keys(x) for x in (k, k_t))
    blocks = [
        _attend_block(q, k, v, mask, const, rows, (q_t, k_t, v_t), primal)
        for rows in _blocks(q.shape[-2], const.block)
    ]
    out, out_t = zip(*blocks, strict=True)
    return (
        _heads_last(list(out)) if primal else None,
        None if out_t[0] is None else _heads_last(list(out_t)),
    )


class FusedAttention(torch.autograd.Function):
    """softmax(Q K^T * scale + mask) V with the tangent rule above, block by block."""

    generate_vmap_rule = True  # K tangents batched by torch.func.vmap

    @staticmethod
    def forward(
        q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, const: _Constants
    ) -> Tensor:
        return _attend(q, k, v, mask, const, (None, None, None))[0]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        q, k, v, mask, const = inputs
        ctx.const = const
        ctx.save_for_forward(q, k, v, mask)
        ctx.save_for_backward(q, k, v, mask)

    @staticmethod
    def jvp(
        ctx: Any,
        q_t: Tensor | None,
        k_t: Tensor | None,
        v_t: Tensor | None,
        *_: None,  # the mask is a constant, its tangent None
    ) -> Tensor:
        q, k, v, mask = ctx.saved_tensors
        return _attend(q, k, v, mask, ctx.const, (q_t, k_t, v_t), primal=False)[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        """Reverse mode by the same blocks, for a pass that nests a backward one."""
        q, k, v, mask = ctx.saved_tensors
        const = ctx.const
        grad = grad.transpose(-3, -2)  # (B, T, H, D) -> (B, H, T, D)
        grad_q, grad_k, grad_v = [], torch.zeros_like(k), torch.zeros_like(v)
        for rows in _blocks(q.shape[-2], const.block):
            p = torch.softmax(_scores(q, k, mask, const, rows), dim=-1).to(v.dtype)
            g = grad[..., rows, :]
            grad_v = grad_v + torch.matmul(p.transpose(-1, -2), g)
            g_p = torch.matmul(g, v.transpose(-1, -2))
            g_s = p * (g_p - (g_p * p).sum(-1, keepdim=True)) * const.scaling
            grad_q.append(torch.matmul(g_s, k))
            grad_k = grad_k + torch.matmul(g_s.transpose(-1, -2), q[..., rows, :])
        return torch.cat(grad_q, dim=-2), grad_k, grad_v, None, None


def block_size(q: Tensor, keys: int) -> int:
    """Queries per block: their float32 scores within the budget (at least one row).

    The budget is `duals.block_bytes`. A block's primal and tangent work holds about
    six (batch, heads, queries, keys) tensors; small blocks cost Python calls.
    """
    row = q.shape[0] * q.shape[1] * keys * 4  # float32 scores of one query row
    return max(1, min(q.shape[-2], block_bytes() // max(row, 1)))


def _repeat_heads(x: Tensor, groups: int) -> Tensor:
    """Grouped key/value heads, one per query head (transformers' `repeat_kv`)."""
    if groups == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, groups, t, d).reshape(b, h * groups, t, d)


def _eager_of(module: nn.Module) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """The eager attention function of the module's own modelling file."""
    eager = getattr(
        sys.modules[type(module).__module__], "eager_attention_forward", None
    )
    if eager is None:
        raise NotImplementedError(
            f"{type(module).__name__} asked for an attention the fused rule does not "
            "handle, and its module has no eager_attention_forward to fall back on"
        )
    return eager


def fused_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Eager attention's result, blockwise, with transformers' signature.

    Returns `(output (B, T, H, D), None)`: no attention probabilities, as with
    transformers' sdpa path. Falls back to the model's eager function for what it
    does not handle (see the module docstring).
    """
    unhandled = [k for k in _UNHANDLED if kwargs.get(k) is not None]
    if unhandled or (dropout > 0.0 and module.training):
        return _eager_of(module)(
            module, query, key, value, attention_mask, scaling=scaling,
            dropout=dropout, **kwargs,
        )  # fmt: skip
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = _repeat_heads(key, groups), _repeat_heads(value, groups)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    const = _Constants(scaling, block_size(query, key.shape[-2]))
    if in_jvp():  # primal and tangent from one softmax per block
        (q, q_t), (k, k_t), (v, v_t) = split(query), split(key), split(value)
        mask = split(attention_mask)[0]
        out, out_t = _attend(q, k, v, mask, const, (q_t, k_t, v_t))
        return join(out, out_t), None
    return FusedAttention.apply(query, key, value, attention_mask, const), None


@contextmanager
def eager_routed_to_fused() -> Iterator[None]:
    """Inside the block, models built with eager attention use `fused_attention`.

    transformers' attention modules look their function up by the config's
    implementation name in `ALL_ATTENTION_FUNCTIONS`, with the file's eager function
    as the default for "eager"; an entry under "eager" takes precedence.
    """
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    local = ALL_ATTENTION_FUNCTIONS._local_mapping
    before = local.get("eager")
    local["eager"] = fused_attention
    try:
        yield
    finally:
        if before is None:
            local.pop("eager", None)
        else:
            local["eager"] = before
