"""Scalar uploads on the real default model: what the server rebuilds is what the
client computed (fp32 tolerance), for one step (per-iteration Spry) and for a whole
local epoch (replayed AdamW)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from spry.classification import classification_loss, iterate_batches
from spry.config import ClientConfig
from spry.engines import ForwardGradient, mezo
from spry.training import estimate_one_batch, train_slice
from strategies import FedSGD, Spry
from tests.helpers import reply

pytestmark = pytest.mark.usefixtures("server_identity")


def _batches(model, data, count, size=8):
    return list(
        iterate_batches(
            data.train.select(range(count * size)),
            model.tokenizer,
            batch_size=size,
            max_length=32,
        )
    )


def _configure(strategy, model, server_round=1):
    arrays = ArrayRecord({k: Array(v) for k, v in model.state().items()})
    return list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None)
    )


def _scalar_reply(node_id, scalars, examples):
    message = reply(node_id, None, {"num-examples": examples, "train-loss": 0.0})
    message.content["scalars"] = ArrayRecord(
        {"scalars": Array(np.asarray(scalars, np.float64))}
    )
    return message


@pytest.mark.parametrize("engine", [ForwardGradient(num_tangents=2), mezo()])
def test_per_iteration_rebuild_equals_the_clients_estimate(
    default_model, default_data, engine
):
    # Prepare: Spry's split over the real trainable tensors, per-iteration uploads
    strategy = FedSGD(
        partitions={10 + p: p for p in range(4)},
        clients_per_round=4,
        split=True,
        upload_scalars=True,
        client_cfg=ClientConfig(num_tangents=engine.num_tangents),
        seed=5,
    )
    messages = _configure(strategy, default_model)
    batch = _batches(default_model, default_data, 1)[0]
    for message in messages:
        node = message.metadata.dst_node_id
        owned = list(message.content["config"]["trainable-names"])
        seed = int(message.content["config"]["direction-seed"])

        # Act: the client's estimate of its slice, then the server's rebuild
        grads, estimate = estimate_one_batch(
            default_model,
            owned,
            batch,
            loss=classification_loss,
            engine=engine,
            generator=torch.Generator().manual_seed(seed),
        )
        rebuilt, weight, _, nbytes = strategy._contribution(
            1, node, _scalar_reply(node, [estimate.projected], 8)
        )

        # Assert: the same gradient from len(K) floats
        assert sorted(rebuilt) == sorted(owned) and weight == 8.0
        assert nbytes == 8 * len(estimate.projected)
        for name in owned:
            np.testing.assert_allclose(
                rebuilt[name], grads[name].numpy(), rtol=1e-5, atol=1e-7
            )


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_replayed_local_epoch_equals_the_clients_trained_slice(
    default_model, default_data, optimizer
):
    # Prepare: Spry with scalar uploads; one client, the real model, 3 local steps
    client_cfg = ClientConfig(lr=1e-2, client_optimizer=optimizer)
    strategy = Spry(
        partitions={7: 0},
        clients_per_round=1,
        split=True,
        upload_scalars=True,
        client_cfg=client_cfg,
        seed=2,
    )
    initial = default_model.state()
    (message,) = _configure(strategy, default_model, server_round=3)
    owned = list(message.content["config"]["trainable-names"])
    batches = _batches(default_model, default_data, 3)
    try:
        # Act: the client trains its slice locally ...
        report = train_slice(
            default_model,
            owned,
            lambda epoch: iter(batches),
            loss=classification_loss,
            engine=ForwardGradient(),
            cfg=client_cfg,
            seed=2,
            server_round=3,
            partition_id=0,
        )
        trained = {
            n: default_model.parameters()[n].detach().numpy().copy() for n in owned
        }
        # ... and uploads only its 3 x 1 scalars; the server replays its steps
        replayed, _, _, nbytes = strategy._contribution(
            3, 7, _scalar_reply(7, report.scalars, report.num_examples)
        )
    finally:
        default_model.load(initial)

    assert report.steps == 3 and nbytes == 3 * 8
    for name in owned:
        assert not np.allclose(trained[name], initial[name])  # it did train
        np.testing.assert_allclose(replayed[name], trained[name], rtol=1e-5, atol=1e-6)
