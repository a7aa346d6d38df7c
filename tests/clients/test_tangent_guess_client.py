"""The real ClientApp tilts its tangents by the guess the server sends, and only then.

Round 1 of a real Spry strategy with `tangent-guess` trains two real clients; round
2's messages carry the last update over each slice. The client's trained slice
then differs from the one it trains from the same message without the guess, which
is what a run with the key at 0 trains: the guess reaches the engine under the
model's own names (a wrong key would leave the tangents plain).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from clients.client_app import app
from spry import protocol
from spry.tasks import load_task
from strategies import Spry
from tests.helpers import SMALL_RUN_NODES as PARTITIONS
from tests.helpers import answer, small_run

pytestmark = pytest.mark.usefixtures("server_identity")


def _run(message: Message) -> Message:
    return answer(app, message, PARTITIONS, 4)


def _slice(answer: Message) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in answer.content[protocol.ARRAYS].items()}


def _cfg(guess: float):
    return small_run(tangent_guess=guess)


def test_the_client_trains_along_the_guess_it_is_sent():
    cfg = _cfg(0.5)
    model = load_task(cfg).model()
    strategy = Spry.from_run(cfg, PARTITIONS, [])
    start = ArrayRecord({k: Array(v) for k, v in model.state().items()})
    first = list(strategy.configure_train(1, start, ConfigRecord(), grid=None))
    assert all(protocol.GUESS not in m.content for m in first)
    replies = [_run(m) for m in first]  # from each node, for round 1
    after, _ = strategy.aggregate_train(1, replies)
    assert after is not None

    message = next(iter(strategy.configure_train(2, after, ConfigRecord(), None)))
    owned = list(message.content[protocol.CONFIG][protocol.TRAINABLE_NAMES])
    assert list(message.content[protocol.GUESS].keys()) == owned
    guessed = _slice(_run(message))

    del message.content[protocol.GUESS]  # the same message, no guess
    plain = _slice(_run(message))
    message.content[protocol.CONFIG]["tangent-guess"] = 0.0  # the key at 0
    default = _slice(_run(message))

    moved = [n for n in owned if not np.array_equal(guessed[n], plain[n])]
    assert any("lora_" in n for n in moved)  # (the head follows from step 2 on)
    for name in owned:
        np.testing.assert_array_equal(plain[name], default[name])
