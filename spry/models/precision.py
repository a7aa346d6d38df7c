"""Frozen weights in a lower precision: the base model is most of a client's memory.

With LoRA, every base weight is frozen, and under forward mode or inference those
weights are only read. Keeping them in bfloat16 (or float16) halves what a client
holds (and the activations computed from them), while the trainable tensors, their
gradients and the optimizer state stay in float32. PEFT's LoRA layers already cast
their input to the adapter's dtype; a trainable head on lower-precision features
gets the same cast here, so the task sees float32 logits either way.

A quantized format ("int8", "int4", "nf4": `spry.models.quantized`) stores the
frozen linear layers as integer codes and every other frozen weight (embeddings,
norms) in bfloat16, the dtype the layers then compute in (QLoRA's setting).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .quantized import SCHEMES, QuantizedLinear, quantize_frozen

FROZEN_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


# What `frozen-dtype` accepts: a float dtype, or a quantization scheme.
FROZEN_FORMATS: tuple[str, ...] = (*FROZEN_DTYPES, *SCHEMES)
QUANTIZED_COMPUTE = torch.bfloat16  # the other frozen weights, beside the codes


def frozen_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name` (a key of `FROZEN_DTYPES`)."""
    try:
        return FROZEN_DTYPES[name]
    except KeyError:
        raise ValueError(
            f"frozen dtype should be one of {sorted(FROZEN_DTYPES)}, got {name!r}"
        ) from None


def store_frozen(model: nn.Module, name: str) -> nn.Module:
    """Store `model`'s frozen weights as `name` says (one of `FROZEN_FORMATS`).

    A float dtype casts them (`cast_frozen`); a quantization scheme quantizes the
    frozen linear layers from their float32 weights first, then casts the rest to
    bfloat16.
    """
    if name in SCHEMES:
        quantize_frozen(model, name)
        return cast_frozen(model, QUANTIZED_COMPUTE)
    if name not in FROZEN_DTYPES:
        raise ValueError(
            f"frozen dtype should be one of {list(FROZEN_FORMATS)}, got {name!r}"
        )
    return cast_frozen(model, frozen_dtype(name))


def _cast_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(module.parameters()).dtype
    return tuple(
        a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args
    )


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Store `model`'s frozen floating weights and buffers in `dtype`, in place.

    Trainable parameters keep their dtype, and so do a `QuantizedLinear`'s codes,
    float16 scales and bias (already as small as they get). A module that owns
    trainable weights directly (a head) and is not a PEFT adapter layer casts its
    floating inputs to its own dtype, so lower-precision features meet a float32
    head.
    """
    if dtype == torch.float32:
        return model
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            continue
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.is_floating_point():
                setattr(module, name, buffer.to(dtype))
        own = list(module.parameters(recurse=False))
        trains = any(p.requires_grad for p in own)
        is_adapter = type(module).__module__.startswith("peft.")
        if own and trains and not is_adapter:
            module.register_forward_pre_hook(_cast_inputs)
    return model
