from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spry.config import ConfigError, RunConfig, default_values
from spry.resolve import named_choices, resolve

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_app_config_mirrors_the_dataclass_defaults():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    parsed = RunConfig.from_run_config(table)
    assert parsed == RunConfig()
    assert set(table) == set(default_values())
    assert resolve(table) == resolve({})  # and it passes the resolving step


def test_round_trip_through_the_flat_mapping():
    cfg = RunConfig.from_run_config(
        {"alpha": "0.5", "num-clients": "20", "share-head": "true"}
    )
    assert (
        cfg.data.alpha == 0.5 and cfg.data.num_clients == 20 and cfg.strategy.share_head
    )
    assert RunConfig.from_run_config(cfg.to_mapping()) == cfg


@pytest.mark.parametrize(
    "values, message",
    [
        ({"alpha": 0}, "`alpha` should be > 0, got 0"),
        ({"alpha": -1.0}, "`alpha` should be > 0"),
        (
            {"num-clients": 5, "clients-per-round": 10},
            "should not exceed `num-clients` (5)",
        ),
        ({"partitioner": "zipf"}, "`partitioner` should be one of"),
        ({"lr": "fast"}, "`lr` should be a float, got 'fast'"),
        ({"num-tangent": 2}, "unknown config key(s) ['num-tangent']"),
    ],
)
def test_bad_values_name_the_key_and_the_value(values, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config(values)
    assert message in str(error.value)
    with pytest.raises(ConfigError) as error:  # the resolving step checks them too
        resolve(values)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"engine": "nope"}, "`engine` should be one of ('forward', 'backprop'"),
        ({"server-optimizer": "lamb"}, "`server-optimizer` should be one of"),
        ({"tangent-distribution": "cauchy"}, "`tangent-distribution` should be one"),
        ({"device-profiles": "iphone:1"}, "unknown device profile 'iphone'"),
        ({"fault-crash": 0.8, "fault-timeout": 0.3}, "sum to at most 1"),
        ({"task": "nope"}, "unknown task 'nope'; registered tasks: "),
        ({"verx.epsilon": 0.3}, "'verx.epsilon' names no registered task"),
        ({"baffle.clip": 0.3}, "nor the run's strategy ('spry')"),
    ],
)
def test_names_are_checked_by_the_resolving_step_not_the_config(values, message):
    RunConfig.from_run_config(values)  # the config alone knows no registry
    with pytest.raises(ConfigError) as error:
        resolve(values)
    assert message in str(error.value)


def test_each_name_list_is_the_registry_that_implements_it():
    from spry.aggregation import ServerOptimizer
    from spry.engines import DISTRIBUTIONS, ENGINES

    choices = named_choices()
    assert choices["engine"] == tuple(ENGINES)
    assert choices["tangent-distribution"] is DISTRIBUTIONS
    assert choices["server-optimizer"] is ServerOptimizer.KINDS


def test_resolving_types_and_completes_the_selected_tasks_options():
    given = {"task": "verix", "verix.epsilon": "0.1", "raee.k": 3}
    raw = RunConfig.from_run_config(given)
    assert raw.task_options == (("epsilon", "0.1"),)  # as given; raee's left out
    cfg = resolve(given)
    options = dict(cfg.task_options)
    assert options["epsilon"] == 0.1 and len(options) > 1
    assert [k for k, _ in cfg.task_options] == sorted(options)
    assert RunConfig.from_run_config(cfg.to_mapping()) == cfg
    assert resolve(cfg.to_mapping()) == cfg


def test_the_run_strategys_keys_are_kept_as_given_for_the_strategies_to_check():
    given = {"strategy": "fwdllm", "engine": "fwdllm", "fwdllm.max-repeats": "2"}
    cfg = resolve({**given, "fwdllm.no-such-option": 1, "verix.epsilon": 0.2})
    # the library cannot know a strategy's options: `strategies.resolve` checks them
    assert cfg.strategy_options == (("max-repeats", "2"), ("no-such-option", 1))
    assert cfg.task_options == resolve({}).task_options  # verix's left out
    assert cfg.to_mapping()["fwdllm.max-repeats"] == "2"
    assert RunConfig.from_run_config(cfg.to_mapping()) == cfg


def test_importing_the_config_loads_no_torch_and_no_registry():
    code = (
        "import sys, spry.config, spry.methods, spry.resolve, spry.engines; "
        "heavy = {'torch', 'flwr', 'transformers', 'spry.devices', 'spry.tasks'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
