"""The causal-LM task base on a tiny random Llama: answer tokens only, chunked loss.

No hub and no weights file: the model is a transformers config with random weights
(`build_causal_lm(random_weights=...)`), the tokenizer a word-level one built in
memory. The loss is checked against cross-entropy computed here from the model's own
logits, position by position.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from spry.config import RunConfig, default_values
from spry.language_modeling import IGNORE
from spry.models.causal_lm import build_causal_lm
from spry.tasks.base import ClientData, build_options
from spry.tasks.causal_lm import CausalLMTask
from tests.helpers import tiny_llama

WORDS = "what is two plus three five four one the answer".split()
ROWS = [
    {"prompt": "what is two plus three", "answer": "five"},
    {"prompt": "two plus two", "answer": "the answer is four"},
    {"prompt": "what is one plus three plus one plus two", "answer": "one"},
]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )


class TinyAnswers(CausalLMTask):
    """A task over three fixed rows, on a random 2-layer Llama."""

    name: ClassVar[str] = "tiny-answers"
    summary: ClassVar[str] = "test only"

    def build_model(self, device: str):
        config = tiny_llama(len(WORDS) + 3)
        trainable = build_causal_lm(
            random_weights=config, seed=self.run.runtime.seed, device=device
        )
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
            for p in trainable.parameters().values():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        return dataclasses.replace(trainable, tokenizer=word_tokenizer())

    def load_partition(self, partition_id: int) -> ClientData:
        return ClientData(train=ROWS, held_out=ROWS[:1])

    def test_data(self):
        return ROWS


def make_task(chunk_tokens: int, max_length: int = 64) -> TinyAnswers:
    run = RunConfig.from_run_config({**default_values(), "max-length": max_length})
    options = build_options(TinyAnswers, {"chunk-tokens": chunk_tokens})
    return TinyAnswers(run, options)


def direct_loss(model, batch, tokenizer) -> tuple[float, int]:
    """Cross-entropy of each answer token (and EOS) given what precedes it."""
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits
    terms = []
    for i, row in enumerate(ROWS):
        answer = tokenizer(row["answer"], add_special_tokens=False)["input_ids"]
        targets = [*answer, tokenizer.eos_token_id]
        length = int(batch["attention_mask"][i].sum())
        first = length - len(targets)  # where the answer starts
        for j, token in enumerate(targets):
            position = first + j - 1  # the logits that predict it
            terms.append(F.cross_entropy(logits[i, position], torch.tensor(token)))
    return float(torch.stack(terms).mean()), len(terms)


def test_batches_predict_the_answer_and_not_the_prompt():
    task = make_task(chunk_tokens=4)
    trainable = task.model()
    batch = next(task.batches(trainable, ROWS, batch_size=3))
    tok = trainable.tokenizer
    for i, row in enumerate(ROWS):
        labels = batch["labels"][i][batch["labels"][i] != IGNORE].tolist()
        assert labels == [*tok(row["answer"])["input_ids"], tok.eos_token_id]
    # right padding: masked positions are padding and never predicted
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE).all()
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][2].sum()


@pytest.mark.parametrize("chunk_tokens", [0, 1, 4, 1000])
def test_the_loss_is_the_answer_tokens_cross_entropy(chunk_tokens):
    task = make_task(chunk_tokens)
    trainable = task.model()
    batch = next(task.batches(trainable, ROWS, batch_size=3))
    with torch.no_grad():
        loss, count = task.loss(trainable.model, batch)
    expected, terms = direct_loss(trainable.model, batch, trainable.tokenizer)
    assert int(count) == terms == 1 + 4 + 1 + 3  # answers' tokens and three EOS
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_a_long_prompt_loses_its_start_and_keeps_the_answer():
    task = make_task(chunk_tokens=0, max_length=5)
    trainable = task.model()
    batch = next(task.batches(trainable, ROWS, batch_size=3))
    assert batch["input_ids"].shape[1] == 5
    tok = trainable.tokenizer
    kept = batch["input_ids"][2].tolist()  # 9 prompt words: the last 3 stay
    assert kept == tok("one plus two one")["input_ids"] + [tok.eos_token_id]
    assert batch["labels"][2].tolist()[-2:] == [*tok("one")["input_ids"], 2]


def test_evaluation_and_the_memory_probe():
    task = make_task(chunk_tokens=4, max_length=12)
    trainable = task.model()
    scores = task.evaluate(trainable, ROWS)
    assert scores["answer-tokens"] == 9 and scores["num-examples"] == 3
    assert 0 <= scores["accuracy"] <= 1 and scores["loss"] > 0
    _, probe = task.probe_inputs("cpu", task.probe_context())
    assert probe["input_ids"].shape == (task.run.client.batch_size, 12)
    with torch.no_grad():
        _, count = task.loss(trainable.model, probe)
    assert int(count) == task.run.client.batch_size * 11  # every position predicted


@pytest.mark.parametrize("chunk_tokens", [0, 4])
def test_prompt_tokens_carry_no_loss(chunk_tokens):
    """Changing what the model says at prompt positions changes neither the loss
    nor the LoRA gradient; changing it at one answer position changes both.

    A prompt token's target is scored (if at all) from the last hidden state of
    the position before it, which, in a causal LM, feeds only that position's
    logits. Rewriting those hidden states is rewriting the prompt positions'
    predictions of their targets, leaving everything else as it was.
    """
    task = make_task(chunk_tokens)
    trainable = task.model()
    model = trainable.model
    batch = next(task.batches(trainable, ROWS, batch_size=3))
    predicted = batch["labels"][:, 1:] != IGNORE  # positions 0..T-2 that score
    prompt = torch.zeros_like(batch["labels"], dtype=torch.bool)
    prompt[:, :-1] = (batch["attention_mask"][:, 1:] == 1) & ~predicted
    answer = torch.zeros_like(prompt)
    answer[1, int(predicted[1].nonzero()[0])] = True  # row 1's first answer target
    assert prompt.sum() == 4 + 2 + 8  # each prompt word but the last predicts the next
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn((*prompt.shape, 32), generator=gen) * 5

    def loss_and_grad(where: torch.Tensor | None) -> tuple[float, list[torch.Tensor]]:
        norm = model.get_base_model().model.norm  # the last hidden states' source
        hook = None
        if where is not None:
            hook = norm.register_forward_hook(
                lambda module, args, out: out + noise * where[..., None]
            )
        try:
            params = [p for p in model.parameters() if p.requires_grad]
            loss, _ = task.loss(model, batch)
            grads = torch.autograd.grad(loss, params)
        finally:
            if hook is not None:
                hook.remove()
        return float(loss.detach()), list(grads)

    loss, grads = loss_and_grad(None)
    loss_p, grads_p = loss_and_grad(prompt)
    assert loss_p == pytest.approx(loss, rel=1e-6, abs=0)
    for g, g_p in zip(grads, grads_p, strict=True):
        torch.testing.assert_close(g_p, g, rtol=1e-5, atol=1e-7)
    assert any(g.abs().max() > 0 for g in grads)
    loss_a, grads_a = loss_and_grad(answer)  # the control: an answer position
    assert abs(loss_a - loss) > 1e-3
    pairs = zip(grads, grads_a, strict=True)
    assert any(not torch.allclose(g, g_a) for g, g_a in pairs)
