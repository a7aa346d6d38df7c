"""The head's view of the sequence: mean pooling, the first token, the model's own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spry.config import ConfigError, ModelConfig, RunConfig
from spry.models import ModelError, build_classifier, is_head


def _logits(trainable, texts):
    batch = trainable.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return trainable.model(**batch).logits


def test_mean_pooling_ignores_padding(default_model):
    # The default model pools by mean; padding a sentence must not change it.
    alone = _logits(default_model, ["a quiet, moving film"])
    padded = _logits(
        default_model,
        ["a quiet, moving film", "a much longer sentence that forces padding on the "
         "first one, many tokens more than it has"],
    )  # fmt: skip
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)


def test_every_pooling_trains_the_same_named_tensors(default_model):
    own_head = build_classifier(
        ModelConfig(pooling="model", center_features=False), num_labels=2, seed=0
    )
    first = build_classifier(ModelConfig(pooling="cls"), num_labels=2, seed=0)
    assert list(own_head.names) == list(default_model.names) == list(first.names)
    assert [n for n in default_model.names if is_head(n)] == [
        "classifier.weight",
        "classifier.bias",
    ]
    # The encoder's pooler is not used by a pooled head, so it is not computed.
    assert default_model.model.base_model.model.bert.pooler is None


def test_pooled_heads_see_different_features(default_model):
    # Same seed, same LoRA init: only the pooling differs, so the logits do.
    first = build_classifier(ModelConfig(pooling="cls"), num_labels=2, seed=0)
    texts = ["a quiet, moving film", "dull and far too long"]
    assert not torch.allclose(_logits(first, texts), _logits(default_model, texts))


def test_unknown_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="`pooling` should be one of"):
        RunConfig.from_run_config({"pooling": "max"})


def test_the_feature_center_is_the_mean_the_head_subtracts(default_model):
    # Prepare: a batch, its pooled-feature sum, and the head's logits uncentred
    batch = default_model.tokenizer(
        ["a quiet, moving film", "dull and far too long", "fine"],
        return_tensors="pt",
        padding=True,
    )
    total, count = default_model.feature_sum([dict(batch)])
    before = _logits(default_model, ["a quiet, moving film"])
    head = default_model.pooled_head

    # Execute
    default_model.set_feature_center(total / count)
    try:
        after = _logits(default_model, ["a quiet, moving film"])
    finally:
        default_model.set_feature_center(np.zeros_like(total))

    # Assert: logits move by exactly -W @ center; the sum counts every example
    shift = head.classifier.weight.detach() @ torch.as_tensor(total / count)
    torch.testing.assert_close(after[0], before[0] - shift, atol=1e-5, rtol=1e-5)
    assert count == 3 and np.abs(total).sum() > 0


def test_feature_center_errors_name_the_problem(default_model):
    with pytest.raises(ValueError, match="feature center has shape"):
        default_model.set_feature_center(np.zeros(3))
    own_head = build_classifier(
        ModelConfig(pooling="model", center_features=False), num_labels=2, seed=0
    )
    with pytest.raises(ModelError, match="needs a pooled head"):
        own_head.set_feature_center(np.zeros(384))
    with pytest.raises(ConfigError, match="`center-features` needs a pooled head"):
        RunConfig.from_run_config({"pooling": "model"})
