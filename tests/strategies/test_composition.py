"""The ServerApp composes a strategy with the parts its run config asks for."""

from __future__ import annotations

import pytest

from server.budgets import BudgetDealer
from server.faults import FaultInjection
from server.second_wave import SecondWave
from server.server_app import compose_strategy
from spry.config import ConfigError, RunConfig
from spry.devices import DeviceProfile, Fleet
from spry.faults import FaultPlan
from spry.resolve import resolve
from strategies import FwdLLM, Spry

PARTITIONS = {100 + p: p for p in range(10)}


def _compose(**values):
    cfg = resolve({"num-clients": 10, **values})
    fleet = Fleet([DeviceProfile("host", float("inf"), 1.0)] * 10)
    return compose_strategy(cfg, PARTITIONS, ["head.w"], fleet), fleet


def test_every_part_comes_from_the_run_config():
    strategy, fleet = _compose(
        **{"fault-crash": 0.2, "round-deadline": 30.0, "round-timeout": 90.0}
    )

    assert type(strategy) is Spry
    assert isinstance(strategy.dealer, BudgetDealer) and strategy.dealer.fleet is fleet
    assert strategy.faults == FaultInjection(FaultPlan(crash=0.2), deadline=30.0)
    assert strategy.second_wave == SecondWave(timeout=90.0)


def test_without_a_deadline_the_round_timeout_is_one_and_orphans_may_be_skipped():
    strategy, _ = _compose(**{"round-timeout": 90.0, "orphan-slices": "skip"})

    assert strategy.faults == FaultInjection(FaultPlan(), deadline=90.0)
    assert strategy.second_wave is None


def test_fwdllm_takes_no_second_wave_and_an_unknown_strategy_is_refused():
    strategy, _ = _compose(strategy="fwdllm", engine="fwdllm")
    assert type(strategy) is FwdLLM and strategy.second_wave is None

    cfg = RunConfig.from_run_config({"num-clients": 10, "strategy": "fedprox"})
    with pytest.raises(ConfigError, match="unknown strategy 'fedprox'"):
        compose_strategy(cfg, PARTITIONS, [], Fleet([]))
