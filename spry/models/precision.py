"""Frozen weights in a lower precision: the base model is most of a client's memory.

With LoRA, every base weight is frozen, and under forward mode or inference those
weights are only read. Keeping them in bfloat16 (or float16) halves what a client
holds (and the activations computed from them), while the trainable tensors, their
gradients and the optimizer state stay in float32. PEFT's LoRA layers already cast
their input to the adapter's dtype; a trainable head on lower-precision features
gets the same cast here, so the task sees float32 logits either way.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FROZEN_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def frozen_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (a key of `FROZEN_DTYPES`)."""
    try:
        return FROZEN_DTYPES[name]
    except KeyError:
        raise ValueError(
            f"frozen dtype should be one of {sorted(FROZEN_DTYPES)}, got {name!r}"
        ) from None


def _cast_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(module.parameters()).dtype
    return tuple(
        a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args
    )


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store `model`'s frozen floating weights and buffers in `dtype`, in place.

    Trainable parameters keep their dtype. A module that owns trainable weights
    directly (a head) and is not a PEFT adapter layer casts its floating inputs to
    its own dtype, so lower-precision features meet a float32 head.
    """
    if dtype == torch.float32:
        return model
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))
        own = list(module.parameters(recurse=False))
        trains = any(p.requires_grad for p in own)
        is_adapter = type(module).__module__.startswith("peft.")
        if own and trains and not is_adapter:
            module.register_forward_pre_hook(_cast_inputs)
    return model
