"""The models the memory suite measures, by name.

Real weights where a package ships them (MiniLM, SmolLM2-135M); larger shapes are
built from a config with *random* weights (memory and step time do not depend on the
values), and the report says so. `hf:NAME` loads any Hugging Face id or local folder
with its weights; `random:NAME` builds NAME's config with random weights.
`llama2-7b-shape` is built straight into a quantized form (`--dtypes nf4`, int4 or
int8; `spry.models.quantized_lm`): in float32 it would not fit in memory here.

The kind fixes the loss every engine differentiates: a classifier's pooled head, a
causal LM's next-token loss over every position, or the `lm-classification` task's
label-word loss (`LABEL_WORDS`: the last prompt token's hidden state times the label
words' output rows only), which is far cheaper than the full vocabulary's logits and
so needs its own measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spry.config import ModelConfig
from spry.models import TrainableModel, build_classifier
from spry.models.causal_lm import DEFAULT_TARGETS, build_causal_lm
from spry.models.quantized import SCHEMES

CLASSIFIER, CAUSAL_LM, LABEL_WORDS = "classifier", "causal-lm", "lm-labelwords"
# SmolLM2's tokens for " negative" and " positive": lm-classification's default
# label words on Rotten Tomatoes
SMOLLM2_LABEL_IDS = (3524, 2731)
ENCODER_TARGETS = ("query", "value")


@dataclass(frozen=True)
class BenchModel:
    """How to build one model of the suite, and what it is."""

    name: str
    kind: str  # CLASSIFIER (pooled head, 2 labels), CAUSAL_LM (next-token loss)
    # or LABEL_WORDS (lm-classification's loss over `label_ids`)
    weights: str  # "pretrained" or "random"
    build: Callable[[str, str], TrainableModel]  # (frozen dtype, device) -> model
    label_ids: tuple[int, ...] = ()  # LABEL_WORDS: one token id per class


def _classifier(config: Callable[[], Any] | None, model: str = "all-MiniLM-L6-v2"):
    def build(dtype: str, device: str) -> TrainableModel:
        cfg = ModelConfig(model=model, frozen_dtype=dtype)
        shape = None if config is None else config()
        return build_classifier(
            cfg, num_labels=2, seed=0, device=device, random_weights=shape
        )

    return build


def _causal(config: Callable[[], Any] | None, name: str = "SmolLM2-135M-Instruct"):
    def build(dtype: str, device: str) -> TrainableModel:
        shape = None if config is None else config()
        return build_causal_lm(
            name, targets=DEFAULT_TARGETS, device=device, dtype=dtype,
            random_weights=shape, with_tokenizer=False,
        )  # fmt: skip

    return build


def _quantized_causal(config: Callable[[], Any], name: str):
    def build(dtype: str, device: str) -> TrainableModel:
        from spry.models.quantized_lm import build_quantized_causal_lm

        if dtype not in SCHEMES or device != "cpu":
            raise ValueError(
                f"{name} is built in quantized form on the CPU only: its frozen "
                f"dtype should be one of {list(SCHEMES)}, got {dtype!r} on {device}"
            )
        return build_quantized_causal_lm(config(), dtype, targets=DEFAULT_TARGETS)

    return build


def _bert_base() -> Any:
    from transformers import BertConfig

    return BertConfig()  # BERT-base: 12 layers, hidden 768, vocabulary 30,522


def _roberta_large() -> Any:
    from transformers import RobertaConfig

    return RobertaConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, vocab_size=50265, max_position_embeddings=514,
        type_vocab_size=1, pad_token_id=1,
    )  # fmt: skip


def _opt_1_3b() -> Any:
    from transformers import OPTConfig

    return OPTConfig(
        hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
        vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048,
    )  # fmt: skip


def _llama_1b() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(  # Llama-3.2-1B's layout
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
        tie_word_embeddings=True, max_position_embeddings=4096,
    )  # fmt: skip


def _llama2_7b() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(  # Llama-2-7B's layout: 6.74B parameters, untied output
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
        tie_word_embeddings=False, max_position_embeddings=4096,
    )  # fmt: skip


def _tiny_bert() -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=1000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=512,
    )  # fmt: skip


def _tiny_llama() -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip


MODELS: dict[str, BenchModel] = {
    m.name: m
    for m in (
        BenchModel("minilm", CLASSIFIER, "pretrained", _classifier(None)),
        BenchModel("smollm2-135m", CAUSAL_LM, "pretrained", _causal(None)),
        BenchModel("bert-base-shape", CLASSIFIER, "random", _classifier(_bert_base)),
        BenchModel(
            "roberta-large-shape", CLASSIFIER, "random", _classifier(_roberta_large)
        ),
        BenchModel("opt-1.3b-shape", CAUSAL_LM, "random", _causal(_opt_1_3b)),
        BenchModel("llama-1b-shape", CAUSAL_LM, "random", _causal(_llama_1b)),
        BenchModel(
            "llama2-7b-shape",
            CAUSAL_LM,
            "random",
            _quantized_causal(_llama2_7b, "llama2-7b-shape"),
        ),
        BenchModel("tiny-bert-shape", CLASSIFIER, "random", _classifier(_tiny_bert)),
        BenchModel("tiny-llama-shape", CAUSAL_LM, "random", _causal(_tiny_llama)),
        BenchModel(  # the lm-classification task's model and loss
            "smollm2-labelwords",
            LABEL_WORDS,
            "pretrained",
            _causal(None),
            label_ids=SMOLLM2_LABEL_IDS,
        ),
        BenchModel(
            "tiny-llama-labelwords",
            LABEL_WORDS,
            "random",
            _causal(_tiny_llama),
            label_ids=(5, 7),
        ),
    )
}


def _any_model(spec: str) -> BenchModel:
    """`hf:NAME` (its weights) or `random:NAME` (its config, random weights)."""
    source, _, name = spec.partition(":")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name)
    causal = any(a.endswith("ForCausalLM") for a in config.architectures or [])
    shape = (lambda: AutoConfig.from_pretrained(name)) if source == "random" else None
    build = _causal(shape, name) if causal else _classifier(shape, name)
    weights = "random" if source == "random" else "pretrained"
    return BenchModel(spec, CAUSAL_LM if causal else CLASSIFIER, weights, build)


def bench_model(spec: str) -> BenchModel:
    """The suite's model called `spec` (see the module docstring)."""
    if spec in MODELS:
        return MODELS[spec]
    if spec.startswith(("hf:", "random:")) and spec.partition(":")[2]:
        return _any_model(spec)
    raise ValueError(
        f"unknown model {spec!r}; available: {', '.join(MODELS)}, "
        "hf:NAME_OR_PATH (its weights) or random:NAME_OR_PATH (random weights)"
    )
