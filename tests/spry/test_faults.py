"""Fault injection draws: exact shares, fixed by (seed, round, wave)."""

from __future__ import annotations

from collections import Counter

import pytest

from spry.faults import FaultPlan


def test_thirty_percent_of_ten_is_three_clients_every_round():
    plan = FaultPlan(crash=0.1, timeout=0.1, straggle=0.1)
    partitions = list(range(40, 50))
    for server_round in range(1, 20):
        faults = plan.draw(0, server_round, 0, partitions)
        assert Counter(faults.values()) == {"crash": 1, "timeout": 1, "straggle": 1}
        assert set(faults) <= set(partitions)


def test_the_draw_depends_on_seed_round_and_wave_not_on_order():
    plan = FaultPlan(crash=0.3)
    partitions = list(range(10))
    draw = plan.draw(0, 1, 0, partitions)
    assert plan.draw(0, 1, 0, partitions[::-1]) == draw
    assert len({frozenset(plan.draw(0, r, 0, partitions)) for r in range(1, 30)}) > 10
    assert (
        plan.draw(1, 1, 0, partitions) != draw or plan.draw(0, 1, 1, partitions) != draw
    )
    assert FaultPlan().draw(0, 1, 0, partitions) == {}


def test_shares_that_cannot_be_met_are_refused():
    with pytest.raises(ValueError, match="sum to at most 1"):
        FaultPlan(crash=0.6, timeout=0.6)
    with pytest.raises(ValueError, match="straggle factor"):
        FaultPlan(straggle=0.1, straggle_factor=0.5)
    # Three shares that each round up never fault more clients than were sampled
    assert (
        len(FaultPlan(crash=0.34, timeout=0.33, straggle=0.33).draw(0, 1, 0, [1, 2]))
        == 2
    )
