"""The ClientApp knows no strategy: the training message says whether to take one step.

A one-estimate-a-round strategy (the FedSGD family) marks its messages
`protocol.ONE_STEP`; the client then makes one estimate on one batch of the round
the message names. The same message without the mark trains local epochs, though
the run config it carries names the same strategy.
"""

from __future__ import annotations

import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

import strategies
from clients.client_app import app
from spry import protocol
from spry.resolve import resolve
from spry.tasks import load_task
from strategies import FedSGD
from tests.helpers import answer

pytestmark = pytest.mark.usefixtures("server_identity")

PARTITIONS = {10 + p: p for p in range(4)}


def _steps(message) -> int:
    """What the real ClientApp reports for `message` (node: its partition)."""
    reply = answer(app, message, PARTITIONS, 4)
    return int(reply.content[protocol.METRICS][protocol.STEPS])


def test_a_client_takes_one_step_when_the_message_says_so():
    # 4 IID clients of 16 examples: two batches of 8 a local epoch
    cfg = strategies.resolve(
        resolve(
            {
                "strategy": "fedsgd",
                "engine": "backprop",
                "num-clients": 4,
                "clients-per-round": 1,
                "eval-clients-per-round": 1,
                "partitioner": "iid",
                "max-train-examples": 64,
                "client-eval-fraction": 0.0,
            }
        )
    )
    model = load_task(cfg).model()
    strategy = FedSGD.from_run(cfg, PARTITIONS, [])
    arrays = ArrayRecord({k: Array(v) for k, v in model.state().items()})
    (message,) = strategy.configure_train(1, arrays, ConfigRecord(), grid=None)
    fields = message.content[protocol.CONFIG]
    assert fields[protocol.ONE_STEP] is True

    assert _steps(message) == 1  # one estimate on one batch

    del fields[protocol.ONE_STEP]  # the same run config, unmarked: local epochs
    assert _steps(message) == 2
