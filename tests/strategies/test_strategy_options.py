"""Each strategy owns its options: `<strategy>.<option>` keys, built by its registry.

The library's resolving step keeps the run's strategy's keys as given (it cannot
know a strategy's options) and refuses a prefix that is neither a task nor the
run's strategy; `strategies.resolve` builds the strategy's `Options` from them,
types them, completes them with the defaults and refuses a bad one in one line
naming the key. A one-step strategy says so itself (the config lists no strategy).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

import strategies
from server.server_app import compose_strategy
from spry import protocol
from spry.config import ConfigError, Options, RunConfig
from spry.devices import DeviceProfile, Fleet
from spry.resolve import resolve
from strategies import STRATEGIES, Baffle, FedSGD, FwdLLM, Spry
from strategies.baffle import BaffleOptions
from strategies.fwdllm import FwdLLMOptions

PARTITIONS = {100 + p: p for p in range(10)}
FWDLLM = {"num-clients": 10, "strategy": "fwdllm", "engine": "fwdllm"}
BAFFLE = {"num-clients": 10, "strategy": "baffle", "engine": "baffle"}


def _resolve(values):
    return strategies.resolve(resolve(values))


def _compose(cfg):
    fleet = Fleet([DeviceProfile("host", float("inf"), 1.0)] * 10)
    return compose_strategy(cfg, PARTITIONS, ["head.w"], fleet)


def test_the_options_defaults_are_the_former_config_defaults():
    assert BaffleOptions() == BaffleOptions(clip=0.3)
    assert FwdLLMOptions() == FwdLLMOptions(
        var_threshold=0.1, max_repeats=4, candidates=10
    )
    assert Spry.Options is FedSGD.Options is Options  # no options of their own
    # A strategy built by hand has its options' defaults
    hand_built = FwdLLM(partitions=PARTITIONS, clients_per_round=2)
    assert (hand_built.var_threshold, hand_built.max_repeats) == (0.1, 4)
    assert hand_built.candidates == 10
    assert Baffle(partitions=PARTITIONS, clients_per_round=2).clip == 0.3


def test_resolving_types_and_completes_the_run_strategys_options():
    given = {**FWDLLM, "fwdllm.max-repeats": "2", "raee.k": 3}
    raw = RunConfig.from_run_config(given)
    assert raw.strategy_options == (("max-repeats", "2"),)  # as given
    assert resolve(given).strategy_options == raw.strategy_options  # the library's

    cfg = _resolve(given)
    assert cfg.strategy_options == (
        ("candidates", 10),
        ("max-repeats", 2),
        ("var-threshold", 0.1),
    )
    flat = cfg.to_mapping()
    assert flat["fwdllm.max-repeats"] == 2 and "raee.k" not in flat
    assert _resolve(flat) == cfg  # config.json and checkpoints round-trip
    assert _resolve({}).strategy_options == ()  # spry has none


def test_an_option_set_by_key_reaches_the_constructed_strategy():
    strategy = _compose(_resolve({**FWDLLM, "fwdllm.max-repeats": "2"}))
    assert type(strategy) is FwdLLM
    assert (strategy.max_repeats, strategy.var_threshold, strategy.candidates) == (
        2,
        0.1,
        10,
    )
    baffle = _compose(_resolve({**BAFFLE, "baffle.clip": 0.5}))
    assert type(baffle) is Baffle and baffle.clip == 0.5
    # What clients are sent carries them too (a resumed run compares them)
    assert baffle.run_config["baffle.clip"] == 0.5


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {**FWDLLM, "fwdllm.candidates": "0"},
            "strategy 'fwdllm': `candidates` should be at least 1, got 0 "
            "(set as `fwdllm.<option>`)",
        ),
        ({**FWDLLM, "fwdllm.max-repeats": -1}, "`max-repeats` should be >= 0, got -1"),
        ({**FWDLLM, "fwdllm.var-threshold": "high"}, "`var-threshold` should be a"),
        ({**BAFFLE, "baffle.clip": -0.1}, "`clip` should be >= 0, got -0.1"),
        (
            {**FWDLLM, "fwdllm.candidate": 3},
            "strategy 'fwdllm' has no option(s) ['fwdllm.candidate']; its options: "
            "['fwdllm.candidates', 'fwdllm.max-repeats', 'fwdllm.var-threshold']",
        ),
        (
            {"strategy": "fedsgd", "fedsgd.clip": 1},
            "strategy 'fedsgd' has no option(s) ['fedsgd.clip']; its options: none",
        ),
        # What the strategy cannot take from the rest of the run: its own check
        (
            {**FWDLLM, "upload-scalars": True},
            "the fwdllm strategy uploads dense gradients",
        ),
        (
            {**FWDLLM, "engine": "forward"},
            "the fwdllm strategy chooses the directions of a finite-difference",
        ),
        (
            {**BAFFLE, "engine": "backprop"},
            "the baffle strategy uploads K scalars along shared directions",
        ),
        (
            {"strategy": "fedsgd", "local-epochs": 2},
            "the fedsgd strategy takes one batch per client per round; "
            "`local-epochs` (2)",
        ),
    ],
)
def test_a_bad_strategy_option_is_refused_in_one_line_naming_it(values, message):
    cfg = resolve(values)  # the library cannot know a strategy's options
    with pytest.raises(ConfigError) as error:
        strategies.resolve(cfg)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="strateg"):  # the ServerApp's composition
        _compose(cfg)


def test_another_strategys_key_is_refused_by_the_librarys_resolving_step():
    with pytest.raises(ConfigError) as error:
        resolve({**FWDLLM, "baffle.clip": 0.5})
    assert "config key 'baffle.clip' names no registered task" in str(error.value)
    assert "nor the run's strategy ('fwdllm')" in str(error.value)


def test_one_step_is_the_strategys_own_and_its_messages_say_so(server_identity):
    assert {name for name, cls in STRATEGIES.items() if cls.one_step} == {
        "fedsgd",
        "baffle",
        "fwdllm",
    }
    arrays = ArrayRecord({"head.w": Array(np.zeros(2, np.float32))})
    for cls, one_step in ((FedSGD, True), (Spry, False)):
        strategy = cls(partitions=PARTITIONS, clients_per_round=2, split=False)
        messages = strategy.configure_train(1, arrays, ConfigRecord(), grid=None)
        for message in messages:
            fields = message.content[protocol.CONFIG]
            assert fields.get(protocol.ONE_STEP, False) is one_step


def test_the_config_knows_no_strategy():
    from spry import config

    assert not hasattr(config.StrategyConfig, "ONE_STEP")
    fields = {f.name for f in dataclasses.fields(config.StrategyConfig)}
    assert not {f for f in fields if f.startswith(("baffle", "fwdllm"))}
