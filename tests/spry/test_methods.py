from __future__ import annotations

import pytest

import strategies
from spry.config import ConfigError, RunConfig, default_values
from spry.methods import METHODS, method_of, method_overrides
from spry.resolve import resolve


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_a_valid_config_that_is_recognised(name):
    cfg = strategies.resolve(resolve({**default_values(), **method_overrides(name)}))
    assert method_of(cfg) == name


def test_defaults_are_spry_and_a_changed_setting_is_custom():
    assert method_of(RunConfig()) == "spry"
    # A tuned hyperparameter is still the method; the paper's settings are named
    assert method_of(RunConfig.from_run_config({"num-tangents": 4})) == "spry"
    paper = RunConfig.from_run_config(method_overrides("spry-paper"))
    assert method_of(paper) == "spry-paper"
    assert method_of(RunConfig.from_run_config({"engine": "baffle"})) == "custom"


def test_head_only_is_spry_with_lora_frozen_and_is_named_so():
    # Spry's every defining setting, LoRA frozen: told from Spry by `train-lora`
    spry, head_only = METHODS["spry"], METHODS["head-only"]
    assert head_only == {**spry, "head-gradient": "exact", "train-lora": False}
    frozen = RunConfig.from_run_config({"train-lora": False})
    assert method_of(frozen) == "head-only"
    tuned = {"train-lora": False, "num-tangents": 4, "lr": 1e-4}
    assert method_of(RunConfig.from_run_config(tuned)) == "head-only"
    # LoRA frozen under another method's engine is no named method
    fedavg = {**method_overrides("fedavg"), "train-lora": False}
    assert method_of(RunConfig.from_run_config(fedavg)) == "custom"


def test_spry_paper_trains_with_dropout_and_weight_decay_as_the_authors_ran_it():
    paper = RunConfig.from_run_config(method_overrides("spry-paper"))
    assert paper.client.dropout and paper.client.weight_decay == 0.01
    assert paper.model.lora_dropout == 0.1 and paper.model.train_lora
    # Training settings, not the method: Spry with dropout or decay is still Spry
    for tuned in ({"dropout": True}, {"weight-decay": 0.01}, {"lora-dropout": 0.1}):
        assert method_of(RunConfig.from_run_config(tuned)) == "spry"
    # The paper's Spry with dropout off is a tuned form of Spry, as with any of its
    # other training settings changed
    assert method_of(paper) == "spry-paper"
    off = {**method_overrides("spry-paper"), "dropout": False}
    assert method_of(RunConfig.from_run_config(off)) == "spry"


def test_backprop_baselines_do_not_split_and_spry_does():
    assert (
        METHODS["fedavg"]["split"] is False
        and METHODS["fedavg"]["engine"] == "backprop"
    )
    assert METHODS["spry"]["split"] is True and METHODS["spry"]["engine"] == "forward"


def test_unknown_method_lists_the_known_ones():
    known = "known methods: spry, spry-paper, spry-iter, fedfgd"
    with pytest.raises(ConfigError, match=known):
        method_overrides("fedprox")


def test_a_spry_run_with_scalar_uploads_is_not_reported_as_spry():
    cfg = RunConfig.from_run_config({"upload-scalars": True, "head-gradient": "shared"})
    assert method_of(cfg) == "custom"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"engine": "backprop", "upload-scalars": True}, "upload-scalars"),
        ({"engine": "backprop-checkpoint", "strategy": "baffle"}, "baffle strategy"),
        ({"engine": "forward", "strategy": "fwdllm"}, "fwdllm strategy"),
        ({"engine": "baffle-plus", "upload-scalars": True}, "upload-scalars"),
        ({"strategy": "fedsgd", "local-epochs": 2}, "one batch per client"),
        ({"engine": "mezo", "zo-format": "forward"}, "applies to baffle"),
    ],
)
def test_incompatible_options_fail_with_a_message_naming_them(overrides, message):
    # The library's resolving step, then the strategy's (one-step strategies
    # refuse local epochs where their options are checked)
    with pytest.raises(ConfigError, match=message):
        strategies.resolve(resolve(overrides))


def test_scalar_uploads_with_the_exact_head_fail_naming_the_fix():
    with pytest.raises(ConfigError, match="use `head-gradient` 'shared'"):
        RunConfig.from_run_config({"upload-scalars": True})
    with pytest.raises(ConfigError, match="use `head-gradient` 'shared'"):
        resolve({"upload-scalars": True})
