"""Malformed training replies on the strategy itself: each is rejected, logged, and
counted, and the honest replies of the same round are still aggregated.

The twenty kinds of tests/malformed.py (those the end-to-end test also sends
through Flower's engine), then kinds only a hand-built message can carry: values
Flower's records refuse (bools, strings), replies the engine never routes (a node
not sent a slice, two replies, another round's), and scalar uploads.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from spry.aggregation import ServerOptimizer
from spry.config import ClientConfig
from strategies import FedSGD, Spry
from tests.helpers import reply
from tests.malformed import KINDS, content

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPES = {
    "l0.A": (1, 3),
    "l0.B": (3, 1),
    "l1.A": (1, 3),
    "l1.B": (3, 1),
    "head.w": (2, 3),
    "head.b": (2,),
}  # three groups of two


def _current():
    return {n: np.full(s, i, np.float32) for i, (n, s) in enumerate(SHAPES.items())}


def _configure(strategy, server_round=1):
    arrays = ArrayRecord({k: Array(v) for k, v in _current().items()})
    return list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None)
    )


def _spry(**kwargs):
    strategy = Spry(
        partitions={1000 + p: p for p in range(4)},
        clients_per_round=3,
        seed=0,
        optimizer=ServerOptimizer(kind="avg"),
        **kwargs,
    )
    _configure(strategy)
    return strategy


def _honest(strategy, node):
    arrays = {n: np.full(SHAPES[n], 5.0, np.float32) for n in strategy.assignment[node]}
    metrics = {
        "num-examples": 3,
        "train-loss": 0.5,
        "train-seconds": 0.1,
        "peak-mem-bytes": 10,
        "partition-id": strategy.partitions[node],
    }
    return arrays, metrics


def _with_content(node, records):
    message = reply(node, None, {})
    message.content = records
    return message


def _round(strategy, bad, caplog):
    """Aggregate `bad` (the first node's reply) with honest replies of the rest."""
    nodes = list(strategy.assignment)
    good = [reply(n, *_honest(strategy, n)) for n in nodes[1:]]
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(1, [bad, *good])
    return nodes[0], arrays, metrics


def _assert_rejected(strategy, node, arrays, reason, caplog):
    """One invalid drop, logged with node, partition and reason; the rest applied."""
    partition = strategy.partitions[node]
    (line,) = [r.getMessage() for r in caplog.records if "invalid reply" in r.message]
    assert f"round 1: dropping node {node} (partition {partition})" in line
    assert reason in line, line
    log = strategy.round_log[1]
    assert (log["dropped"], log["dropped-invalid"]) == (1, 1)
    assert list(log["rejected"]) == [f"partition {partition}"]
    assert reason in log["rejected"][f"partition {partition}"]
    honest = {
        n for other in list(strategy.assignment)[1:] for n in strategy.assignment[other]
    }
    for name, start in _current().items():
        value = arrays[name].numpy()
        assert np.all(np.isfinite(value))
        expected = 5.0 if name in honest else start
        np.testing.assert_allclose(value, np.broadcast_to(expected, start.shape))


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_each_of_the_twenty_kinds_is_rejected_and_the_round_goes_on(kind, caplog):
    # Prepare
    strategy = _spry()
    node = next(iter(strategy.assignment))
    bad = _with_content(node, kind.corrupt(*_honest(strategy, node)))

    # Execute
    _, arrays, metrics = _round(strategy, bad, caplog)

    # Assert
    _assert_rejected(strategy, node, arrays, kind.reason, caplog)
    assert metrics["clients"] == 2 and metrics["num-examples"] == 6
    assert metrics["train-loss"] == pytest.approx(0.5)


def _bypass(metrics: dict) -> MetricRecord:
    """A MetricRecord holding values its constructor refuses (bool, str)."""
    record = MetricRecord({"num-examples": 1})
    record._data = dict(metrics)  # what a hand-built or foreign message could hold
    return record


def _metrics_kind(change):
    def corrupt(arrays, metrics):
        return content(arrays, change(dict(metrics)))

    return corrupt


EXTRA = {
    "bool-dtype": (
        lambda a, m: content({n: v.astype(bool) for n, v in a.items()}, m),
        "dtype bool, expected float32",
    ),
    "undecodable": (
        lambda a, m: content(
            None,
            m,
            arrays=ArrayRecord(
                {
                    n: Array(
                        dtype="float32", shape=v.shape, stype="numpy.ndarray", data=b"x"
                    )
                    for n, v in a.items()
                }
            ),
        ),
        "cannot decode",
    ),
    "no-metrics": (lambda a, m: content(a, None), "unexpected records {'metrics': []}"),
    "num-examples-huge": (
        _metrics_kind(lambda m: {**m, "num-examples": 2**62}),
        "got 4611686018427387904",
    ),
    "num-examples-float": (
        _metrics_kind(lambda m: {**m, "num-examples": 3.0}),
        "`num-examples` should be an integer in 1..1000000000, got 3.0",
    ),
    "num-examples-bool": (
        lambda a, m: content(a, None, metrics=_bypass({**m, "num-examples": True})),
        "metric `num-examples` should be a number, got bool True",
    ),
    "num-examples-str": (
        lambda a, m: content(a, None, metrics=_bypass({**m, "num-examples": "3"})),
        "metric `num-examples` should be a number, got str '3'",
    ),
    "train-loss-nan": (
        _metrics_kind(lambda m: {**m, "train-loss": float("nan")}),
        "metric `train-loss` is nan",
    ),
    "train-seconds-negative": (
        _metrics_kind(lambda m: {**m, "train-seconds": -1.0}),
        "metric `train-seconds` should be >= 0, got -1.0",
    ),
    "peak-memory-inf": (
        _metrics_kind(lambda m: {**m, "peak-mem-bytes": float("inf")}),
        "metric `peak-mem-bytes` is inf",
    ),
    "unknown-metric": (
        _metrics_kind(lambda m: {**m, "bonus": 1.0}),
        "unexpected metrics ['bonus']",
    ),
    "other-partition": (
        _metrics_kind(lambda m: {**m, "partition-id": m["partition-id"] + 1}),
        "claims partition",
    ),
}


def test_a_client_without_training_examples_is_dropped_as_empty_not_invalid(caplog):
    # Prepare: a well-formed reply of a client whose partition came out empty
    strategy = _spry()
    node = next(iter(strategy.assignment))
    arrays, metrics = _honest(strategy, node)
    empty = reply(node, arrays, {**metrics, "num-examples": 0})

    # Execute
    good = [reply(n, *_honest(strategy, n)) for n in list(strategy.assignment)[1:]]
    with caplog.at_level(logging.INFO):
        _, round_metrics = strategy.aggregate_train(1, [empty, *good])

    # Assert: its own drop reason, said at INFO, and the others' round applied
    log = strategy.round_log[1]
    assert (log["dropped"], log["dropped-empty"], log["dropped-invalid"]) == (1, 1, 0)
    assert log["rejected"] == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    partition = strategy.partitions[node]
    assert any(
        f"partition {partition} has no training examples" in r.getMessage()
        for r in caplog.records
    )
    assert round_metrics["clients"] == 2 and round_metrics["num-examples"] == 6


@pytest.mark.parametrize("name", list(EXTRA))
def test_more_malformed_replies_are_rejected(name, caplog):
    corrupt, reason = EXTRA[name]
    strategy = _spry()
    node = next(iter(strategy.assignment))
    bad = _with_content(node, corrupt(*_honest(strategy, node)))

    _, arrays, _ = _round(strategy, bad, caplog)

    _assert_rejected(strategy, node, arrays, reason, caplog)


def test_a_node_that_was_not_sent_a_slice_cannot_write_one(caplog):
    strategy = _spry()
    stranger = next(n for n in strategy.partitions if n not in strategy.assignment)
    owner = next(iter(strategy.assignment))
    arrays, metrics = _honest(strategy, owner)
    metrics["partition-id"] = strategy.partitions[stranger]
    nodes = list(strategy.assignment)
    replies = [reply(n, *_honest(strategy, n)) for n in nodes]
    replies.append(reply(stranger, arrays, metrics))

    with caplog.at_level(logging.WARNING):
        result, _ = strategy.aggregate_train(1, replies)

    assert "node was not sent a slice this round" in caplog.text
    assert strategy.round_log[1]["dropped-invalid"] == 1
    for name in SHAPES:  # the owners' values, not the stranger's
        np.testing.assert_allclose(result[name].numpy(), 5.0)


def test_two_replies_from_one_node_are_both_rejected(caplog):
    strategy = _spry()
    nodes = list(strategy.assignment)
    twice = reply(nodes[0], *_honest(strategy, nodes[0]))
    good = [reply(n, *_honest(strategy, n)) for n in nodes[1:]]
    with caplog.at_level(logging.WARNING):
        arrays, _ = strategy.aggregate_train(1, [twice, twice, *good])

    assert caplog.text.count("2 replies from one node (one expected)") == 2
    assert strategy.round_log[1]["dropped-invalid"] == 1  # one node dropped
    assert (
        "2 replies"
        in strategy.round_log[1]["rejected"][
            f"partition {strategy.partitions[nodes[0]]}"
        ]
    )


def test_a_reply_for_another_round_is_rejected(caplog):
    strategy = _spry()
    node = next(iter(strategy.assignment))
    stale = reply(node, *_honest(strategy, node))
    stale.metadata.group_id = "7"  # as the engine copies it from round 7's message

    _, arrays, _ = _round(strategy, stale, caplog)

    _assert_rejected(
        strategy, node, arrays, "reply for round 7, this is round 1", caplog
    )


def test_training_messages_carry_the_round_as_their_group_id():
    strategy = Spry(partitions={1: 0, 2: 1}, clients_per_round=2, seed=0)
    assert {m.metadata.group_id for m in _configure(strategy, 4)} == {"4"}


# ------------------------------------------------------------ scalar uploads
def _scalar_strategy():
    strategy = FedSGD(
        partitions={500 + p: p for p in range(3)},
        clients_per_round=2,
        split=False,
        seed=3,
        upload_scalars=True,
        client_cfg=ClientConfig(num_tangents=3),
        optimizer=ServerOptimizer(kind="sgd", eta=0.1),
    )
    _configure(strategy)
    return strategy


def _scalar_reply(node, scalars, partition):
    message = reply(node, None, {"num-examples": 4, "partition-id": partition})
    message.content["scalars"] = ArrayRecord({"scalars": Array(np.asarray(scalars))})
    return message


@pytest.mark.parametrize(
    "scalars, reason",
    [
        (np.ones(3), "scalars should be (steps, K), got shape (3,)"),
        (np.ones((1, 2)), "K = 2 per step, the server drew 3 directions"),
        (np.ones((1, 3), np.float32), "scalars: dtype float32, expected float64"),
        (np.ones((2, 3)), "scalars: one step expected, got 2"),
        (np.full((1, 3), np.nan), "scalars: contains NaN or Inf"),
        (np.ones((200_000, 3)), "bytes over the limit of"),
    ],
    ids=["1-d", "k-mismatch", "float32", "two-steps", "nan", "oversized"],
)
def test_a_malformed_scalar_upload_is_rejected(scalars, reason, caplog):
    strategy = _scalar_strategy()
    bad, good = list(strategy.assignment)
    replies = [
        _scalar_reply(bad, scalars, strategy.partitions[bad]),
        _scalar_reply(good, np.ones((1, 3)), strategy.partitions[good]),
    ]
    with caplog.at_level(logging.WARNING):
        arrays, metrics = strategy.aggregate_train(1, replies)

    assert reason in caplog.text
    assert strategy.round_log[1]["dropped-invalid"] == 1
    assert metrics["clients"] == 1 and arrays is not None


def test_a_scalar_upload_that_sends_tensors_instead_is_rejected(caplog):
    strategy = _scalar_strategy()
    node = next(iter(strategy.assignment))
    tensors = reply(node, _current(), {"num-examples": 4})
    with caplog.at_level(logging.WARNING):
        strategy.aggregate_train(1, [tensors])
    assert "unexpected records {'arrays': ['arrays']}" in caplog.text


# ---------------------------------------------------------------- evaluation
def test_a_malformed_evaluation_reply_is_left_out_of_the_mean(caplog):
    strategy = _spry()
    good = reply(
        1000, None, {"num-examples": 4, "accuracy": 0.5, "loss": 1.0}, "evaluate"
    )
    listed = reply(1001, None, {"num-examples": 4, "accuracy": [1.0], "loss": 0.0})
    nan = reply(1002, None, {"num-examples": 4, "accuracy": float("nan"), "loss": 0.0})
    empty = reply(1003, None, {"num-examples": 0, "accuracy": 0.0, "loss": 0.0})

    with caplog.at_level(logging.WARNING):
        metrics = strategy.aggregate_evaluate(1, [good, listed, nan, empty])

    assert dict(metrics) == {"accuracy": 0.5, "loss": 1.0}
    assert caplog.text.count("invalid evaluation reply") == 2
