"""A causal LM shape built straight into quantized form, with random weights.

Measuring a Llama-2-7B-shaped client on a 24 GiB machine rules out the usual path
(build in float32, 27 GB, then quantize). Here the model is laid out on the meta
device (shapes, no storage), PEFT adds LoRA there, and then every frozen linear
layer is created directly as a `QuantizedLinear` with random codes and scales, the
embeddings and norms in bfloat16 and LoRA in float32: the same model that
`frozen-dtype=nf4` (or int8, int4) gives a float32 model, but no float copy of a
linear layer ever exists. Memory and step time do not depend on the values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..seeding import STREAM_INIT, derive_seed
from .classifier import TrainableModel, _quiet_transformers, stable_name
from .lora import is_lora
from .precision import QUANTIZED_COMPUTE
from .quantized import QuantizedLinear, check_scheme


def _meta_model(config: Any, targets: Sequence[str], lora_r: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(
            config, attn_implementation="eager", dtype=QUANTIZED_COMPUTE
        )
        lora = LoraConfig(task_type="CAUSAL_LM", r=lora_r, lora_alpha=lora_r,
                          target_modules=list(targets))  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(base, lora)


def _quantize_linears(
    model: nn.Module, scheme: str, std: float, gen: torch.Generator
) -> None:
    """Every linear but LoRA's and an output layer tied to the embedding."""
    embeddings = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or is_lora(f"{parent_name}.{name}"):
                continue
            if any(child.weight is e for e in embeddings):  # tied: no storage yet
                continue
            layer = QuantizedLinear.random(
                child.out_features, child.in_features, scheme, std=std, generator=gen
            )
            if child.bias is not None:
                layer.bias = torch.zeros(child.out_features)
            setattr(parent, name, layer)


def _materialize(model: nn.Module, config: Any, std: float, gen: torch.Generator):
    """Give every tensor still on the meta device real (CPU) storage and values."""
    for qualified, module in list(model.named_modules()):
        if type(module).__name__.endswith("RotaryEmbedding"):  # computed buffers
            parent, _, child = qualified.rpartition(".")
            setattr(model.get_submodule(parent), child, type(module)(config=config))
    for qualified, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if not param.is_meta:
                continue
            full = f"{qualified}.{name}"
            if is_lora(full):  # float32, as PEFT keeps adapters
                value = torch.zeros(param.shape)
                if "lora_A" in full.split("."):  # PEFT's init of A; B stays zero
                    nn.init.kaiming_uniform_(value, a=math.sqrt(5), generator=gen)
            elif isinstance(module, nn.Embedding):
                value = torch.empty(param.shape, dtype=QUANTIZED_COMPUTE)
                value.normal_(0, std, generator=gen)
            else:  # norms
                value = torch.ones(param.shape, dtype=QUANTIZED_COMPUTE)
            setattr(module, name, nn.Parameter(value, param.requires_grad))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()]
            if t.is_meta]  # fmt: skip
    if left:
        raise RuntimeError(f"tensors left on the meta device: {left[:5]}")


def build_quantized_causal_lm(
    config: Any,
    scheme: str,
    *,
    lora_r: int = 1,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    seed: int = 0,
) -> TrainableModel:
    """`config`'s causal LM, frozen linears in `scheme`, LoRA rank `lora_r`, on CPU.

    Random values drawn from `seed`: codes uniform, group scales around a
    N(0, initializer_range^2) weight's absmax; embeddings N(0, initializer_range^2).
    """
    check_scheme(scheme)
    _quiet_transformers()
    std = getattr(config, "initializer_range", 0.02)
    gen = torch.Generator().manual_seed(derive_seed(seed, STREAM_INIT))
    model = _meta_model(config, targets, lora_r)
    _quantize_linears(model, scheme, std, gen)
    _materialize(model, config, std, gen)
    model.eval()
    names = {stable_name(n): n for n, p in model.named_parameters() if p.requires_grad}
    return TrainableModel(model=model, tokenizer=None, names=names)
