"""Federated evaluation's mean: example-weighted, per metric, over who reports it.

The fine-tuned scores (`eval-finetune-epochs`) travel beside the plain ones and are
averaged the same way; without them the mean is Flower's, number for number.
"""

from __future__ import annotations

import pytest
from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from spry import protocol
from spry.aggregation import ServerOptimizer
from strategies import Spry
from strategies.strategy_utils import evaluate_metrics
from tests.helpers import reply

A = {"num-examples": 3, "accuracy": 0.1, "loss": 0.7}
B = {"num-examples": 7, "accuracy": 0.3, "loss": 0.9}
TUNED = {"finetuned-accuracy": 0.5, "finetuned-loss": 0.2}


def _records(*metrics: dict) -> list[RecordDict]:
    return [RecordDict({protocol.METRICS: MetricRecord(dict(m))}) for m in metrics]


def test_the_mean_is_weighted_by_examples():
    c = {"num-examples": 5, "accuracy": 0.9, "loss": 0.1, **TUNED}
    b = {**B, "finetuned-accuracy": 0.8, "finetuned-loss": 0.4}
    a = {**A, **TUNED}
    mean = evaluate_metrics(_records(a, b, c))

    # By hand: weights 3, 7, 5 of 15
    assert mean["accuracy"] == pytest.approx((3 * 0.1 + 7 * 0.3 + 5 * 0.9) / 15)
    assert mean["finetuned-accuracy"] == pytest.approx(
        (3 * 0.5 + 7 * 0.8 + 5 * 0.5) / 15
    )
    assert mean["finetuned-loss"] == pytest.approx((3 * 0.2 + 7 * 0.4 + 5 * 0.2) / 15)
    assert "num-examples" not in mean


def test_without_finetuned_scores_it_is_flowers_mean_bit_for_bit():
    records = _records(A, B, {"num-examples": 11, "accuracy": 1 / 3, "loss": 0.123})
    assert dict(evaluate_metrics(records)) == dict(
        aggregate_metricrecords(records, protocol.NUM_EXAMPLES)
    )


def test_a_score_some_replies_leave_out_is_the_mean_of_the_others():
    # Not diluted: the reply without fine-tuned scores carries no weight in them
    mean = evaluate_metrics(_records({**A, **TUNED}, B))
    assert mean["finetuned-accuracy"] == pytest.approx(0.5)
    assert mean["accuracy"] == pytest.approx((3 * 0.1 + 7 * 0.3) / 10)


@pytest.mark.usefixtures("server_identity")
def test_the_strategy_logs_both_federated_scores():
    strategy = Spry(
        partitions={1000: 0, 1001: 1},
        clients_per_round=2,
        seed=0,
        optimizer=ServerOptimizer(kind="avg"),
    )
    replies = [
        reply(1000, None, {**A, **TUNED}, "evaluate"),
        reply(1001, None, {**B, "finetuned-accuracy": 0.9, "finetuned-loss": 0.1}),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)

    logged = strategy.round_log[1]["federated-evaluate"]
    assert logged == dict(metrics)
    assert logged["accuracy"] == pytest.approx((3 * 0.1 + 7 * 0.3) / 10)
    assert logged["finetuned-accuracy"] == pytest.approx((3 * 0.5 + 7 * 0.9) / 10)
