"""FedSGD, BAFFLE and FwdLLM: configure/aggregate on hand-built replies.

The aggregation must equal its formula; scalar uploads must rebuild to what the
client computed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from spry.aggregation import ServerOptimizer
from spry.config import ClientConfig
from spry.engines import rebuild_from_scalars
from strategies import Baffle, FedSGD, FwdLLM
from strategies.fwdllm import pool_variance
from tests.helpers import reply

pytestmark = pytest.mark.usefixtures("server_identity")

NAMES = ["l0.A", "l0.B", "head.w"]
SHAPES = {"l0.A": (2, 3), "l0.B": (3,), "head.w": (2,)}


def _current():
    return {n: np.full(SHAPES[n], 0.5, np.float32) for n in NAMES}


def _configure(strategy, server_round=1):
    arrays = ArrayRecord({k: Array(v) for k, v in _current().items()})
    return list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None)
    )


def _make(cls, clients=3, **kwargs):
    partitions = {500 + p: p for p in range(5)}
    kwargs.setdefault("optimizer", ServerOptimizer(kind="sgd", eta=0.1))
    return cls(
        partitions=partitions, clients_per_round=clients, split=False, seed=3, **kwargs
    )


def _scalar_reply(node, scalars, examples=4):
    return reply(
        node,
        None,
        {"num-examples": examples, "train-loss": 0.5},
    ), np.asarray([scalars], np.float64)


def _with_scalars(message, scalars):
    message.content["scalars"] = ArrayRecord({"scalars": Array(scalars)})
    return message


def test_fedsgd_step_is_current_minus_eta_times_the_weighted_mean_gradient():
    strategy = _make(FedSGD)
    _configure(strategy)
    rng = np.random.default_rng(0)
    replies, grads, weights = [], [], []
    for i, node in enumerate(strategy.assignment):
        g = {n: rng.normal(size=SHAPES[n]).astype(np.float32) for n in NAMES}
        replies.append(reply(node, g, {"num-examples": i + 1, "train-loss": 0.1}))
        grads.append(g)
        weights.append(i + 1)

    arrays, metrics = strategy.aggregate_train(1, replies)

    total = sum(weights)
    for n in NAMES:
        mean = (
            sum(
                w * g[n].astype(np.float64) for w, g in zip(weights, grads, strict=True)
            )
            / total
        )
        np.testing.assert_allclose(
            arrays[n].numpy(), _current()[n] - 0.1 * mean, rtol=1e-5
        )
    assert metrics["upload-bytes-mean"] == sum(4 * np.prod(SHAPES[n]) for n in NAMES)


def test_each_client_gets_its_own_direction_seed_and_baffle_shares_one():
    fedsgd, baffle = _make(FedSGD), _make(Baffle)
    own = {m.content["config"]["direction-seed"] for m in _configure(fedsgd, 2)}
    shared = {m.content["config"]["direction-seed"] for m in _configure(baffle, 2)}
    assert len(own) == 3 and len(shared) == 1
    assert shared != {
        m.content["config"]["direction-seed"] for m in _configure(baffle, 3)
    }


def test_scalar_upload_is_rebuilt_from_the_seed_the_server_sent():
    # Prepare: the client side of a K = 3 scalar upload, done by hand
    strategy = _make(
        FedSGD, clients=2, upload_scalars=True, client_cfg=ClientConfig(num_tangents=3)
    )
    messages = _configure(strategy)
    replies, expected = [], []
    for k, msg in enumerate(messages):
        seed = int(msg.content["config"]["direction-seed"])
        scalars = [0.3 + k, -1.2, 2.0]
        client = rebuild_from_scalars(
            SHAPES, scalars, torch.Generator().manual_seed(seed)
        )
        expected.append({n: t.numpy().astype(np.float64) for n, t in client.items()})
        message, array = _scalar_reply(msg.metadata.dst_node_id, scalars)
        replies.append(_with_scalars(message, array))

    arrays, metrics = strategy.aggregate_train(1, replies)

    for n in NAMES:
        mean = (expected[0][n] + expected[1][n]) / 2
        np.testing.assert_allclose(
            arrays[n].numpy(), _current()[n] - 0.1 * mean, rtol=1e-5, atol=1e-7
        )
    assert metrics["upload-bytes-mean"] == 3 * 8  # three float64 scalars


def test_baffle_clips_the_rebuilt_gradient_to_the_inf_norm():
    strategy = _make(Baffle, clients=1, clip=0.3, optimizer=ServerOptimizer("sgd", 1.0))
    (msg,) = _configure(strategy)
    big = {n: np.full(SHAPES[n], 5.0, np.float32) for n in NAMES}
    big["head.w"][0] = -10.0
    arrays, _ = strategy.aggregate_train(
        1, [reply(msg.metadata.dst_node_id, big, {"num-examples": 2})]
    )
    step = {n: _current()[n] - arrays[n].numpy() for n in NAMES}
    assert max(float(np.abs(s).max()) for s in step.values()) == pytest.approx(
        0.3, rel=1e-4
    )
    np.testing.assert_allclose(step["l0.B"], 5.0 * 0.3 / 10.0, rtol=1e-4)


def test_pool_variance_is_the_variance_between_the_two_half_means():
    probes = [
        np.array([1.0, 0.0]),
        np.array([3.0, 0.0]),
        np.array([5.0, 2.0]),
        np.array([7.0, 2.0]),
    ]
    # half means: [2, 0] and [6, 2]; unbiased variances: 8 and 2; mean 5
    assert pool_variance(probes) == pytest.approx(5.0)
    assert pool_variance(probes[:1]) == 0.0


def test_fwdllm_holds_the_step_and_asks_the_same_clients_while_variance_is_high():
    strategy = _make(FwdLLM, clients=2, var_threshold=0.5, max_repeats=1)
    first = _configure(strategy, 1)
    nodes = [m.metadata.dst_node_id for m in first]
    noisy = [
        reply(
            n,
            {k: np.full(SHAPES[k], s, np.float32) for k in NAMES},
            {"num-examples": 1},
        )
        for n, s in zip(nodes, (-3.0, 3.0), strict=True)
    ]
    arrays, _ = strategy.aggregate_train(1, noisy)
    # No step: the variance (18 on the probe) is above 0.5
    for n in NAMES:
        np.testing.assert_array_equal(arrays[n].numpy(), _current()[n])
    assert strategy.round_log[1]["fwdllm-variance"] == pytest.approx(18.0)

    second = _configure(strategy, 2)
    assert [m.metadata.dst_node_id for m in second] == nodes
    assert {m.content["config"]["data-round"] for m in second} == {1}
    calm = [
        reply(
            n,
            {k: np.full(SHAPES[k], 1.0, np.float32) for k in NAMES},
            {"num-examples": 1},
        )
        for n in nodes
    ]
    arrays, _ = strategy.aggregate_train(2, calm)
    # max_repeats reached: one step on the unweighted mean of all 4 pooled estimates
    # (-3 + 3 + 1 + 1) / 4 = 0.5, at eta 0.1
    for n in NAMES:
        np.testing.assert_allclose(arrays[n].numpy(), _current()[n] - 0.05, rtol=1e-6)


def test_fwdllm_selects_directions_on_odd_steps_and_decays_its_rate():
    strategy = _make(FwdLLM, clients=2, var_threshold=1e9, num_rounds=4)
    assert all("target" not in m.content for m in _configure(strategy, 1))
    strategy.aggregate_train(
        1,
        [
            reply(
                m,
                {k: np.ones(SHAPES[k], np.float32) for k in NAMES},
                {"num-examples": 1},
            )
            for m in strategy.assignment
        ],
    )
    messages = _configure(strategy, 2)
    assert all("target" in m.content for m in messages)
    assert sorted(m.content["config"]["select-index"] for m in messages) == [0, 1]
    assert {m.content["config"]["select-count"] for m in messages} == {20}
    assert strategy._optimizer_now().eta == pytest.approx(0.1 * 3 / 4)
