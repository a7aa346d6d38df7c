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
