from __future__ import annotations

import pytest

from spry.config import ConfigError, RunConfig, default_values
from spry.methods import METHODS, method_of, method_overrides


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_is_a_valid_config_that_is_recognised(name):
    cfg = RunConfig.from_run_config({**default_values(), **method_overrides(name)})
    assert method_of(cfg) == name


def test_defaults_are_spry_and_a_changed_setting_is_custom():
    assert method_of(RunConfig()) == "spry"
    assert method_of(RunConfig.from_run_config({"engine": "baffle"})) == "custom"


def test_backprop_baselines_do_not_split_and_spry_does():
    assert (
        METHODS["fedavg"]["split"] is False
        and METHODS["fedavg"]["engine"] == "backprop"
    )
    assert METHODS["spry"]["split"] is True and METHODS["spry"]["engine"] == "forward"


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known methods: spry, fedfgd"):
        method_overrides("fedprox")
