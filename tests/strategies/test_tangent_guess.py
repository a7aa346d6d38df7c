"""`tangent-guess`: the server sends each client the last global update over its slice.

Real configure/aggregate rounds of the Spry strategy on hand-built replies: round
1 sends no guess (there is no update yet), round 2 sends new minus old weights for
exactly each client's slice, a resumed strategy sends the same, and with the key at
its default nothing new travels.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from server import checkpoint
from server.checkpoint import Checkpoint
from spry import protocol
from spry.aggregation import ServerOptimizer
from spry.config import ClientConfig, RunConfig
from strategies import Spry
from tests.helpers import reply

pytestmark = pytest.mark.usefixtures("server_identity")

SHAPES = {"l0.A": (2, 3), "l0.B": (3,), "l1.A": (2, 3), "l1.B": (3,), "head.w": (2,)}


def _strategy(guess: float, node_offset: int = 1000) -> Spry:
    return Spry(
        partitions={node_offset + p: p for p in range(4)},
        clients_per_round=2,
        shared_names=["head.w"],
        optimizer=ServerOptimizer(kind="yogi", eta=0.1),
        seed=0,
        client_cfg=ClientConfig(tangent_guess=guess),
    )


def _arrays(values):
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def _initial():
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s).astype(np.float32) for n, s in SHAPES.items()}


def _configure(strategy, server_round, values):
    return list(
        strategy.configure_train(server_round, _arrays(values), ConfigRecord(), None)
    )


def _aggregate(strategy, server_round, messages, values, replies=True):
    """Replies that move each client's slice by a seeded step; the new weights."""
    answers = []
    for msg in messages if replies else []:
        node = msg.metadata.dst_node_id
        rng = np.random.default_rng(10 * server_round + strategy.partitions[node])
        trained = {
            n: (values[n] + rng.normal(size=SHAPES[n])).astype(np.float32)
            for n in strategy.assignment[node]
        }
        answers.append(reply(node, trained, {"num-examples": 4}))
    arrays, _ = strategy.aggregate_train(server_round, answers)
    return values if arrays is None else {k: v.numpy() for k, v in arrays.items()}


def _guesses(messages):
    """node -> (its slice, the guess record's tensors or None)."""
    out = {}
    for msg in messages:
        owned = list(msg.content[protocol.CONFIG][protocol.TRAINABLE_NAMES])
        record = msg.content.array_records.get(protocol.GUESS)
        guess = None if record is None else {k: v.numpy() for k, v in record.items()}
        out[msg.metadata.dst_node_id] = (owned, guess)
    return out


def test_round_two_sends_each_client_the_last_update_over_exactly_its_slice():
    strategy = _strategy(0.5)
    start = _initial()

    first = _configure(strategy, 1, start)
    assert all(guess is None for _, guess in _guesses(first).values())
    after = _aggregate(strategy, 1, first, start)
    second = _configure(strategy, 2, after)

    for owned, guess in _guesses(second).values():
        assert guess is not None and list(guess) == owned  # the slice, in its order
        for name in owned:
            np.testing.assert_array_equal(guess[name], after[name] - start[name])
            assert np.abs(guess[name]).sum() > 0  # yogi moved every tensor
        # the rest of the model is not sent as a guess
        assert not set(guess) & (set(SHAPES) - set(owned))


def test_no_guess_travels_by_default_and_a_round_without_replies_clears_it():
    plain = _strategy(0.0)
    start = _initial()
    after = _aggregate(plain, 1, _configure(plain, 1, start), start)
    assert all(g is None for _, g in _guesses(_configure(plain, 2, after)).values())
    assert plain.previous_update == {}

    guessing = _strategy(0.5)
    after = _aggregate(guessing, 1, _configure(guessing, 1, start), start)
    messages = _configure(guessing, 2, after)
    assert _aggregate(guessing, 2, messages, after, replies=False) is after
    assert all(g is None for _, g in _guesses(_configure(guessing, 3, after)).values())


def test_a_resumed_strategy_sends_the_same_guess(tmp_path):
    original = _strategy(0.5)
    start = _initial()
    after = _aggregate(original, 1, _configure(original, 1, start), start)
    arrays, state = original.checkpoint_state()
    path = checkpoint.save(
        tmp_path / "checkpoint.npz",
        Checkpoint(
            server_round=1,
            weights=after,
            config=RunConfig.from_run_config({"tangent-guess": 0.5}).to_mapping(),
            strategy_arrays=arrays,
            strategy_state=state,
        ),
    )
    saved = checkpoint.load(path)
    restored = _strategy(0.5, node_offset=7000)  # a restarted federation's node ids
    restored.load_checkpoint_state(saved.strategy_arrays, saved.strategy_state)

    sent = sorted(
        (owned, sorted((k, v.tolist()) for k, v in (guess or {}).items()))
        for owned, guess in _guesses(_configure(original, 2, after)).values()
    )
    resent = sorted(
        (owned, sorted((k, v.tolist()) for k, v in (guess or {}).items()))
        for owned, guess in _guesses(_configure(restored, 2, saved.weights)).values()
    )
    assert sent == resent and len(sent) == 2
