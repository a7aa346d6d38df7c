"""The real ClientApp steps at the rate `lr-decay` gives the round it is sent.

One local SGD step (a client's whole partition in one batch) moves the slice by
-lr g, with g fixed by the message (weights, slice, seeds): so in round 2 of 2
under `linear` the move is half of what the same message trains at a constant
rate. A client that ignored the schedule, or read the round wrong, moves as much.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from clients.client_app import app
from spry import protocol
from spry.config import ClientConfig, ConfigError
from spry.tasks import load_task
from strategies import Spry
from tests.helpers import SMALL_RUN_NODES as PARTITIONS
from tests.helpers import answer, small_run

pytestmark = pytest.mark.usefixtures("server_identity")


def _run(message: Message) -> dict[str, np.ndarray]:
    reply = answer(app, message, PARTITIONS, 4)
    return {k: v.numpy() for k, v in reply.content[protocol.ARRAYS].items()}


def test_round_two_of_two_under_linear_decay_moves_half_as_far():
    cfg = small_run(
        batch_size=64,  # one step
        client_optimizer="sgd",
        lr=0.5,
        lr_decay="linear",
        num_server_rounds=2,
    )
    start = dict(load_task(cfg).model().state())
    strategy = Spry.from_run(cfg, PARTITIONS, [])
    arrays = ArrayRecord({k: Array(v) for k, v in start.items()})
    message = next(iter(strategy.configure_train(2, arrays, ConfigRecord(), None)))
    decayed = _run(message)
    message.content[protocol.CONFIG]["lr-decay"] = "constant"
    constant = _run(message)

    moved = 0
    for name, value in constant.items():
        full = value - start[name]
        np.testing.assert_allclose(
            decayed[name] - start[name], 0.5 * full, rtol=1e-4, atol=1e-7
        )
        moved += bool(np.abs(full).max() > 0)
    assert moved  # the step moved something, so the half is a real check


def test_the_schedules_over_four_rounds():
    def rates(decay: str) -> list[float]:
        cfg = ClientConfig(lr=2.0, estimated_lr=0.4, lr_decay=decay)
        scheduled = [cfg.at_round(t, 4) for t in range(1, 5)]
        assert [c.estimated_lr / 0.4 for c in scheduled] == pytest.approx(
            [c.lr / 2.0 for c in scheduled]
        )
        return [c.lr / 2.0 for c in scheduled]

    assert rates("constant") == [1.0, 1.0, 1.0, 1.0]
    assert rates("linear") == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert rates("cosine") == pytest.approx(
        [1.0, 0.5 + 0.5 * np.cos(np.pi / 4), 0.5, 0.5 - 0.5 * np.cos(np.pi / 4)]
    )
    with pytest.raises(ConfigError, match="lr-decay"):
        ClientConfig(lr_decay="step")
