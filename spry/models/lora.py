"""Which LoRA tensors train, and where B starts: the settings both builders share.

PEFT builds the adapters (A drawn at random, B at zero); these settings change what
happens next, the same way for a classifier and a causal LM:

- `train-lora = false`: no LoRA tensor trains; they keep their initial values and
  only the head does (the `head-only` reference: what do forward gradients of
  LoRA add to a linear probe?).
- `lora-fa` (LoRA-FA, Zhang et al., arXiv 2308.03303): A stays at its random init
  and only B trains. Half the dimension a forward gradient has to cover; with B at
  zero, A's gradient is zero at the first step anyway.
- `lora-b-init = s > 0`: B is drawn N(0, s^2) instead of zeros, so A gets a gradient
  from the first step (the adapter no longer starts as the identity).

Frozen LoRA tensors stop requiring grad, so they drop out of the trainable names
(`TrainableModel.names`) that the server deals and the clients send.
"""

from __future__ import annotations

import torch
from torch import nn

from ..seeding import STREAM_INIT, derive_seed

# The segment PEFT gives every LoRA tensor (`...q_proj.lora_A.default.weight`).
LORA_A, LORA_B = "lora_A", "lora_B"


def is_lora(name: str) -> bool:
    """Whether a parameter name is a LoRA adapter's (PEFT's prefix "lora_")."""
    return any(part.startswith("lora_") for part in name.split("."))


def _has(name: str, segment: str) -> bool:
    return segment in name.split(".")


def init_lora_b(model: nn.Module, std: float, seed: int) -> None:
    """Draw every LoRA B from N(0, std^2), in parameter order, from `seed`.

    The generator is the run's init seed's own (a sub-path of `STREAM_INIT`), so
    every party draws the same B whatever else it drew before.
    """
    generator = torch.Generator().manual_seed(derive_seed(seed, STREAM_INIT, 1))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if _has(name, LORA_B):
                value = torch.randn(param.shape, generator=generator) * std
                param.copy_(value.to(param.dtype))


def freeze_lora(model: nn.Module, *, train_lora: bool, lora_fa: bool) -> None:
    """Stop LoRA tensors from training: all of them, or A alone (LoRA-FA)."""
    for name, param in model.named_parameters():
        if (not train_lora and is_lora(name)) or (lora_fa and _has(name, LORA_A)):
            param.requires_grad_(False)
