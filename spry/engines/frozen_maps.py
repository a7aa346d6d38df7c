"""A frozen linear layer as the fused rules use it: float or quantized, read once.

The fused rules (`mlp_rules`, `loss_rules`) multiply a primal and its tangent by the
same frozen weight. A float `nn.Linear` holds W; a quantized one
(`spry.models.quantized.QuantizedLinear`, recognised here by its class, since the
models package builds on this one) holds codes that it dequantizes a block of
output rows at a time. `maps` walks W once and applies each block to every input,
so a 4-bit layer is dequantized once per pass, not once per input.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_QUANTIZED = ("spry.models.quantized", "QuantizedLinear")


def is_quantized(module: nn.Module) -> bool:
    cls = type(module)
    return (cls.__module__, cls.__name__) == _QUANTIZED


def is_frozen_map(*modules: nn.Module) -> bool:
    """Frozen float nn.Linear or quantized layers, no adapter around them."""
    return all(
        (type(m) is nn.Linear or is_quantized(m))
        and not any(p.requires_grad for p in m.parameters())
        for m in modules
    )


def _weight_blocks(
    layer: nn.Module, dtype: torch.dtype
) -> Iterable[tuple[slice, Tensor]]:
    if is_quantized(layer):
        return layer.blocks(dtype)
    return [(slice(None), layer.weight)]


def maps(layer: nn.Module, *xs: Tensor) -> list[Tensor]:
    """[x W^T for x in xs], no bias, W read (dequantized) once for all of them."""
    parts: list[list[Tensor]] = [[] for _ in xs]
    for _, w in _weight_blocks(layer, xs[0].dtype):
        for part, x in zip(parts, xs, strict=True):
            part.append(F.linear(x, w))
    return [p[0] if len(p) == 1 else torch.cat(p, dim=-1) for p in parts]


def with_bias(layer: nn.Module, y: Tensor) -> Tensor:
    bias = getattr(layer, "bias", None)
    return y if bias is None else y + bias.to(y.dtype)


def affine(layer: nn.Module, x: Tensor) -> Tensor:
    """X W^T + b."""
    return with_bias(layer, maps(layer, x)[0])


def transposed(layer: nn.Module, g: Tensor) -> Tensor:
    """G W: the backward of x W^T."""
    total = None
    for rows, w in _weight_blocks(layer, g.dtype):
        part = g[..., rows] @ w
        total = part if total is None else total + part
    assert total is not None
    return total
