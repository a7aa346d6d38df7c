"""The server's client samples: one stream, offsets from `spry.seeding`.

Training, evaluation, feature-statistics and second-wave samples are draws of
STREAM_SAMPLING at (offset + round). The literal offsets below are the ones runs
have always used: moving them must not change a single drawn client.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from server.queries import estimate_feature_center
from server.second_wave import SecondWave
from spry.seeding import (
    SAMPLE_EVALUATE,
    SAMPLE_REASSIGN,
    SAMPLE_STATISTICS,
    SAMPLE_TRAIN,
)
from spry.splitting import sample_clients
from strategies import Spry

pytestmark = pytest.mark.usefixtures("server_identity")

PARTITIONS = {900 - 7 * p: p for p in range(12)}  # node ids not in partition order
NODES = [900 - 7 * p for p in range(12)]  # in partition order


def _old(seed, offset, server_round, count, population=NODES):
    return [population[i] for i in sample_clients(seed, offset + server_round, count,
                                                  len(population))]  # fmt: skip


def test_the_offsets_are_the_ones_runs_have_always_used():
    assert (SAMPLE_TRAIN, SAMPLE_EVALUATE, SAMPLE_STATISTICS, SAMPLE_REASSIGN) == (
        0,
        1_000_000,
        2_000_000,
        3_000_000,
    )


@pytest.mark.parametrize("seed", [0, 7])
def test_training_and_evaluation_draw_what_they_always_drew(seed):
    strategy = Spry(partitions=PARTITIONS, clients_per_round=4, seed=seed,
                    eval_clients_per_round=5)  # fmt: skip
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    for server_round in (1, 2, 9):
        train = strategy.configure_train(server_round, arrays, ConfigRecord(), None)
        evaluate = strategy.configure_evaluate(
            server_round, arrays, ConfigRecord(), None
        )
        assert [m.metadata.dst_node_id for m in train] == _old(seed, 0, server_round, 4)
        assert [m.metadata.dst_node_id for m in evaluate] == _old(
            seed, 1_000_000, server_round, 5
        )


class _Grid:
    def __init__(self):
        self.sent = []

    def send_and_receive(self, messages, *, timeout=None):
        self.sent.append([m.metadata.dst_node_id for m in messages])
        return []


def test_statistics_and_second_wave_draw_what_they_always_drew():
    strategy = Spry(partitions=PARTITIONS, clients_per_round=3, seed=5)
    grid = _Grid()
    with pytest.raises(RuntimeError):  # nobody answers
        estimate_feature_center(strategy, grid, ConfigRecord())
    assert grid.sent[0] == _old(5, 2_000_000, 0, 3)

    arrays = ArrayRecord({f"t{i}": Array(np.zeros(2, np.float32)) for i in range(6)})
    strategy.configure_train(4, arrays, ConfigRecord(), grid)
    spare = [n for n in NODES if n not in strategy.assignment]
    SecondWave()(strategy, 4, strategy.groups, failed=3)
    assert grid.sent[1] == _old(5, 3_000_000, 4, 3, population=spare)
