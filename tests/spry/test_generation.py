"""Batched greedy generation with a KV cache equals a step-by-step greedy decode.

A tiny random Llama with LoRA (PEFT-wrapped, as the tasks build it) and a word-level
tokenizer built in memory. The reference decodes each prompt alone, without padding
and without a cache: the whole growing sequence goes through the model at every
step and the next token is the argmax of the last position's logits.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from spry.generation import generate, generate_tokens, left_padded
from spry.models.causal_lm import build_causal_lm
from tests.tasks.test_causal_lm_task import WORDS, word_tokenizer

PROMPTS = [
    "what is two plus three",
    "one",
    "the answer is four plus one plus two",
    "two plus",
]


def tiny_llama(dtype: str = "float32"):
    config = LlamaConfig(
        vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    trainable = build_causal_lm(random_weights=config, seed=0, dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero LoRA B: the adapters take part
        for p in trainable.parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return trainable.model


@torch.no_grad()
def reference_decode(model, tokenizer, prompt: str, steps: int) -> list[int]:
    """Greedy, one prompt, no cache: recompute the full sequence every step."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    for _ in range(steps):
        seq = torch.tensor([ids + new])
        logits = model(input_ids=seq, use_cache=False).logits[0, -1]
        token = int(logits.argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
    return new


def silence_eos(model, tokenizer) -> None:
    """Zero EOS's output row: its logit is 0, below the best token's here, so
    every row runs to `max_new_tokens`."""
    with torch.no_grad():
        model.get_output_embeddings().weight[tokenizer.eos_token_id] = 0.0


def test_left_padding_puts_every_prompt_at_the_right_edge():
    tok = word_tokenizer()
    batch = left_padded(tok, PROMPTS)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["attention_mask"][:, -1] == 1).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tok.pad_token_id).all()
    assert left_padded(tok, PROMPTS, max_prompt_tokens=2)["input_ids"].shape == (4, 2)


@pytest.mark.parametrize("eos", ["stops-early", "never"])
def test_batched_cached_generation_equals_the_step_by_step_decode(eos):
    tok = word_tokenizer()
    model = tiny_llama()
    if eos == "never":
        silence_eos(model, tok)
    expected = [reference_decode(model, tok, p, 6) for p in PROMPTS]
    if eos == "never":
        assert all(len(e) == 6 for e in expected)
    else:  # this random model writes EOS early: the stop is exercised
        assert min(len(e) for e in expected) == 0 and max(len(e) for e in expected) > 1
    got = generate_tokens(model, tok, PROMPTS, max_new_tokens=6)
    assert got == expected
    # in batches of 3 (a batch of 3 and one of 1): the same continuations as text
    texts = generate(model, tok, PROMPTS, max_new_tokens=6, batch_size=3)
    assert texts == [tok.decode(e, skip_special_tokens=True) for e in expected]


def test_generation_is_deterministic_and_leaves_the_mode():
    tok = word_tokenizer()
    model = tiny_llama()
    silence_eos(model, tok)
    model.train()
    first = generate(model, tok, PROMPTS, max_new_tokens=5, batch_size=2)
    assert model.training  # restored
    assert generate(model, tok, PROMPTS, max_new_tokens=5, batch_size=2) == first
    assert all(0 < len(t.split()) <= 5 for t in first)


def test_bfloat16_frozen_weights_generate_like_their_own_step_by_step_decode():
    tok = word_tokenizer()
    model = tiny_llama("bfloat16")
    silence_eos(model, tok)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    first = generate_tokens(model, tok, PROMPTS, max_new_tokens=4)
    assert generate_tokens(model, tok, PROMPTS, max_new_tokens=4) == first
    assert first == [reference_decode(model, tok, p, 4) for p in PROMPTS]
