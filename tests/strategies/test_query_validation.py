"""Replies to the server's queries outside the rounds are validated too: the
feature statistics before round 1 (their mean is subtracted in every later forward
pass) and the task reports after the last round. A bad reply is dropped with a log
line; the honest ones are used.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from server.queries import estimate_feature_center, task_reports
from spry import protocol
from strategies import Spry
from tests.helpers import reply

pytestmark = pytest.mark.usefixtures("server_identity")

NODES = {1000 + p: p for p in range(4)}


class _ReplyingGrid:
    """A grid that answers every message with the reply `answer(node)` builds."""

    def __init__(self, answer):
        self.answer = answer

    def send_and_receive(self, messages, *, timeout=None):
        return [self.answer(m.metadata.dst_node_id) for m in messages]


def _feature_reply(node, total, count):
    message = reply(node, None, {protocol.NUM_EXAMPLES: count})
    message.content = RecordDict(
        {
            protocol.FEATURE_SUM: ArrayRecord({protocol.FEATURE_SUM: Array(total)}),
            protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count}),
        }
    )
    return message


BAD_FEATURE_SUMS = {
    "NaN": (np.array([1.0, np.nan, 0.0], np.float32), 4, "NaN or Inf"),
    "Inf": (np.array([1.0, np.inf, 0.0], np.float32), 4, "NaN or Inf"),
    "2-d": (np.ones((3, 1), np.float32), 4, "shape (3, 1)"),
    "integer": (np.ones(3, np.int64), 4, "not floating point"),
    "wrong width": (np.ones(5, np.float32), 4, "most clients sent (3,)"),
}


@pytest.mark.parametrize("kind", BAD_FEATURE_SUMS)
def test_a_bad_feature_sum_is_dropped_and_the_center_is_the_honest_mean(kind, caplog):
    bad_total, bad_count, reason = BAD_FEATURE_SUMS[kind]
    strategy = Spry(partitions=NODES, clients_per_round=4, seed=0)
    bad_node = 1000

    def answer(node):
        if node == bad_node:
            return _feature_reply(node, bad_total, bad_count)
        return _feature_reply(node, np.full(3, NODES[node], np.float32), 2)

    with caplog.at_level(logging.WARNING):
        count = estimate_feature_center(strategy, _ReplyingGrid(answer), ConfigRecord())

    # Three honest clients with sums 1, 2, 3 (2 examples each): the mean is 1.0
    assert count == 6
    assert strategy.feature_center == [1.0, 1.0, 1.0]
    assert any(
        "dropping node 1000 (partition 0)" in r.message and reason in r.message
        for r in caplog.records
    ), [r.message for r in caplog.records]


def test_a_client_without_examples_is_left_out_of_the_center_without_a_warning(
    caplog,
):
    """A Dirichlet draw may leave a partition empty: nothing to add, nothing wrong."""
    strategy = Spry(partitions=NODES, clients_per_round=4, seed=0)

    def answer(node):
        if node == 1000:
            return _feature_reply(node, np.zeros(3, np.float32), 0)
        return _feature_reply(node, np.full(3, NODES[node], np.float32), 2)

    with caplog.at_level(logging.INFO):
        count = estimate_feature_center(strategy, _ReplyingGrid(answer), ConfigRecord())

    assert count == 6
    assert strategy.feature_center == [1.0, 1.0, 1.0]
    assert not [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(
        "partition 0 has no training examples" in r.message for r in caplog.records
    ), [r.message for r in caplog.records]


def test_feature_statistics_with_no_valid_reply_stop_before_training():
    strategy = Spry(partitions=NODES, clients_per_round=4, seed=0)
    grid = _ReplyingGrid(lambda n: _feature_reply(n, np.full(3, np.nan), 2))
    with pytest.raises(RuntimeError, match="no client returned feature statistics"):
        estimate_feature_center(strategy, grid, ConfigRecord())


def _report_reply(node, values):
    return reply(node, None, values, message_type="query")


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"correct": float("nan")}, "report `correct` is nan"),
        ({"correct": float("inf")}, "report `correct` is inf"),
        ({"correct": 3.0, protocol.PARTITION_ID: 2}, "claims partition 2"),
    ],
)
def test_a_bad_task_report_is_left_out_of_the_merge(values, reason, caplog):
    strategy = Spry(partitions=NODES, clients_per_round=2, seed=0)

    def answer(node):
        if node == 1000:
            return _report_reply(node, values)
        return _report_reply(node, {"correct": 1.0, protocol.PARTITION_ID: NODES[node]})

    with caplog.at_level(logging.WARNING):
        reports = task_reports(strategy, _ReplyingGrid(answer), ArrayRecord())

    assert reports == [{"correct": 1.0}] * 3
    assert any(reason in r.message for r in caplog.records), [
        r.message for r in caplog.records
    ]
