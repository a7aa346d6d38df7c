from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from spry.config import ConfigError, RunConfig, default_values

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_app_config_mirrors_the_dataclass_defaults():
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    parsed = RunConfig.from_run_config(table)
    assert parsed == RunConfig()
    assert set(table) == set(default_values())


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
        ({"server-optimizer": "lamb"}, "`server-optimizer` should be one of"),
    ],
)
def test_bad_values_name_the_key_and_the_value(values, message):
    with pytest.raises(ConfigError) as error:
        RunConfig.from_run_config(values)
    assert message in str(error.value)


def test_engine_names_match_the_engine_registry():
    from spry.config import ClientConfig
    from spry.engines import ENGINES

    assert set(ClientConfig.ENGINES) == set(ENGINES)
    with pytest.raises(ConfigError, match="`engine` should be one of"):
        RunConfig.from_run_config({"engine": "nope"})
