"""The warm-up a client runs once before its steps are measured changes nothing.

`spry.training.warm_up` runs one estimate on a 1-example, 8-token cut of a batch so
that torch's start-up cost is resident before the baseline (as the memory
benchmark's worker does). A zero-order engine perturbs the weights in place and
steps them back, so the slice is restored from a copy: training after a warm-up
must give, bit for bit, what it gives without one.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig

from spry.classification import classification_loss
from spry.config import ClientConfig, ModelConfig
from spry.memory import StepPeaks
from spry.models import build_classifier
from spry.training import batch_tokens, make_client_engine, train_slice, warm_up

VOCAB = 40


def _classifier():
    shape = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    return build_classifier(
        ModelConfig(lora_b_init=0.2), num_labels=3, seed=0, random_weights=shape
    )


def _batch(seed: int, length: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, VOCAB, (6, length), generator=gen),
        "attention_mask": torch.ones(6, length, dtype=torch.long),
        "labels": torch.randint(0, 3, (6,), generator=gen),
    }


def _train(trainable, cfg, *, warm: bool, peaks: StepPeaks | None = None):
    names = list(trainable.names)
    engine = make_client_engine(cfg)
    if warm:
        warm_up(trainable, names, _batch(9), loss=classification_loss, engine=engine)
    train_slice(
        trainable,
        names,
        lambda epoch: (_batch(i, length=10 + i) for i in range(3)),
        loss=classification_loss,
        engine=engine,
        cfg=cfg,
        seed=0,
        server_round=1,
        partition_id=0,
        peaks=peaks,
    )
    return {n: t.detach().clone() for n, t in trainable.parameters().items()}


@pytest.mark.parametrize("engine", ["mezo", "forward", "backprop"])
def test_training_after_a_warm_up_is_training_without_one(engine):
    cfg = ClientConfig(engine=engine, lr=1e-2)

    plain = _train(_classifier(), cfg, warm=False)
    warmed = _train(_classifier(), cfg, warm=True)

    assert plain.keys() == warmed.keys()
    assert all(torch.equal(plain[n], warmed[n]) for n in plain)


def test_a_warm_up_alone_leaves_every_weight_and_gradient_as_it_was():
    trainable = _classifier()
    before = {n: t.detach().clone() for n, t in trainable.parameters().items()}
    names = list(trainable.names)

    warm_up(
        trainable,
        names,
        _batch(0),
        loss=classification_loss,
        engine=make_client_engine(ClientConfig(engine="mezo")),
    )

    after = trainable.parameters()
    assert all(torch.equal(before[n], after[n]) for n in names)
    assert all(after[n].grad is None for n in names)
    assert not trainable.model.training


def test_step_peaks_follow_train_slice_step_by_step():
    # The tracked block is each step: three of them, the longest batch's length
    peaks = StepPeaks("cpu")
    peaks.start()

    _train(_classifier(), ClientConfig(engine="forward"), warm=True, peaks=peaks)

    assert peaks.steps == 3
    assert peaks.tokens in (10, 11, 12)  # one of the batches' own lengths
    assert peaks.peak_bytes >= peaks.baseline_bytes > 0
    assert batch_tokens(_batch(0, length=12)) == 12
    assert batch_tokens({"pixels": torch.zeros(2, 64)}) == 0
