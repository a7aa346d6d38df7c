"""A strategy restored from a checkpoint continues exactly as the original would.

The restored copy gets other node ids (a restarted federation's nodes get new
ones); the next round must sample the same partitions, send the same content and
end with bit-identical weights and optimizer state.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

from server import checkpoint
from server.checkpoint import Checkpoint
from server.resume import Resumed
from spry.aggregation import ServerOptimizer
from spry.config import RunConfig
from strategies import FwdLLM, Spry
from tests.helpers import reply

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPES = {"l0.A": (2, 3), "l0.B": (3,), "l1.A": (2, 3), "l1.B": (3,), "head.w": (2,)}


def _arrays(values):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def _initial():
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


def _round(strategy, server_round, values, scale=1.0):
    """Configure and aggregate one round; replies depend on partition and round."""
    messages = list(
        strategy.configure_train(
            server_round, _arrays(values), ConfigRecord(), grid=None
        )
    )
    replies = []
    for msg in messages:
        node = msg.metadata.dst_node_id
        partition = strategy.partitions[node]
        rng = np.random.default_rng(100 * server_round + partition)
        owned = strategy.assignment[node]
        update = {
            n: (values[n] + scale * rng.normal(size=SHAPES[n])).astype(np.float32)
            for n in owned
        }
        replies.append(reply(node, update, {"num-examples": partition + 1}))
    arrays, _ = strategy.aggregate_train(server_round, replies)
    new = values if arrays is None else {k: v.numpy() for k, v in arrays.items()}
    sent = sorted(
        (strategy.partitions[m.metadata.dst_node_id], sorted(m.content.keys()))
        for m in messages
    )
    return new, sent


def _restored(strategy, make, tmp_path, server_round, values):
    """`make(node_offset)`'s strategy, loaded from `strategy`'s checkpoint file."""
    arrays, state = strategy.checkpoint_state()
    path = checkpoint.save(
        tmp_path / "checkpoint.npz",
        Checkpoint(
            server_round=server_round,
            weights=values,
            config=RunConfig().to_mapping(),
            strategy_arrays=arrays,
            strategy_state=state,
        ),
    )
    saved = checkpoint.load(path)
    restored = make(7000)  # other node ids, same partitions
    restored.load_checkpoint_state(saved.strategy_arrays, saved.strategy_state)
    return restored, saved.weights


def _assert_same_state(a, b):
    for moment in ("m", "v"):
        left, right = (
            getattr(a.optimizer_state, moment),
            getattr(b.optimizer_state, moment),
        )
        assert left.keys() == right.keys()
        for name in left:
            assert np.array_equal(left[name], right[name])
    assert a.feature_center == b.feature_center


def test_spry_resumed_from_its_checkpoint_takes_the_same_next_step(tmp_path):
    # Prepare: two rounds of Yogi with a split, a shared head and a fault plan
    def make(offset=1000):
        return Spry(
            partitions={offset + p: p for p in range(5)},
            clients_per_round=3,
            shared_names=["head.w"],
            optimizer=ServerOptimizer(kind="yogi", eta=0.05),
            seed=4,
        )

    original = make()
    original.feature_center = [0.25, -1.5]
    values = _initial()
    for server_round in (1, 2):
        values, _ = _round(original, server_round, values)

    # Execute: restore into a fresh strategy, then run round 3 on both
    restored, weights = _restored(original, make, tmp_path, 2, values)
    _assert_same_state(original, restored)
    assert restored.round_log == {
        r: {**e, "peaks": [list(p) for p in e["peaks"]]}
        for r, e in original.round_log.items()
    }
    expected, sent = _round(original, 3, values)
    got, sent_restored = _round(restored, 3, weights)

    # Assert
    assert sent_restored == sent
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name
    _assert_same_state(original, restored)


def test_fwdllm_resumed_mid_step_asks_the_same_partitions_and_steps_the_same(
    tmp_path,
):
    # Prepare: step 1 taken (a previous gradient to follow); then a noisy round
    # leaves a pool and a repeat pass pending when the checkpoint is written
    def make(offset=500):
        return FwdLLM(
            partitions={offset + p: p for p in range(5)},
            clients_per_round=2,
            split=False,
            seed=3,
            optimizer=ServerOptimizer(kind="sgd", eta=0.1),
            var_threshold=0.5,
            max_repeats=1,  # round 3 must step, whatever its variance
            num_rounds=6,
        )

    original = make()
    values = _initial()
    values, _ = _round(original, 1, values, scale=0.01)
    values, _ = _round(original, 2, values, scale=10.0)
    assert original.repeat_nodes is not None and original.pool
    assert original.previous is not None and original.steps == 1

    # Execute
    restored, weights = _restored(original, make, tmp_path, 2, values)
    expected, sent = _round(original, 3, values, scale=0.01)
    got, sent_restored = _round(restored, 3, weights, scale=0.01)

    # Assert: the repeat pass went to the same partitions, the step is identical
    assert sent_restored == sent
    assert restored.steps == original.steps == 2
    for name in expected:
        assert np.array_equal(got[name], expected[name]), name


class _SilentGrid:
    """A grid that records what it is asked to send and gets no replies."""

    def __init__(self):
        self.sent = []

    def send_and_receive(self, messages, *, timeout=None):
        self.sent.append(list(messages))
        return []


def test_start_from_a_later_round_skips_the_restored_ones():
    strategy = Spry(partitions={10 + p: p for p in range(3)}, clients_per_round=2)
    grid = _SilentGrid()
    evaluated = []

    def evaluate(server_round, arrays):
        evaluated.append(server_round)
        return MetricRecord({"accuracy": 0.5})

    Resumed(strategy, first_round=3).start(
        grid, _arrays(_initial()), num_rounds=3, evaluate_fn=evaluate
    )

    # Rounds 1 and 2 (train and evaluate each) sent nothing; round 3 trained
    assert [len(batch) for batch in grid.sent[:4]] == [0, 0, 0, 0]
    assert len(grid.sent[4]) == 2
    assert evaluated == [3]
    assert list(strategy.round_log) == [3]
