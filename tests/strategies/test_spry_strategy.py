"""Spry's configure/aggregate on hand-built replies (no network, as Flower tests)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from server.budgets import BudgetDealer
from server.faults import FaultInjection
from spry.aggregation import ServerOptimizer
from strategies import Spry
from tests.helpers import error_reply, reply

pytestmark = pytest.mark.usefixtures("server_identity")

NAMES = ["l0.A", "l0.B", "l1.A", "l1.B", "head.w", "head.b"]  # 3 groups of 2


def _current():
    return {n: np.full((2,), i, np.float32) for i, n in enumerate(NAMES)}


def _strategy(clients=2, **kwargs):
    partitions = {1000 + p: p for p in range(4)}  # node id -> partition id
    kwargs.setdefault("optimizer", ServerOptimizer(kind="avg"))
    return Spry(partitions=partitions, clients_per_round=clients, seed=0, **kwargs)


def _configure(strategy, server_round=1):
    arrays = ArrayRecord({k: Array(v) for k, v in _current().items()})
    return list(
        strategy.configure_train(server_round, arrays, ConfigRecord(), grid=None)
    )


def test_each_node_is_sent_only_its_slice_and_the_rest_read_only():
    strategy = _strategy(clients=2)
    messages = _configure(strategy)

    assert len(messages) == 2
    sent = {}
    for msg in messages:
        names = list(msg.content["config"]["trainable-names"])
        assert sorted(msg.content["arrays"].keys()) == sorted(names)
        assert sorted(msg.content["context"].keys()) == sorted(set(NAMES) - set(names))
        sent[msg.metadata.dst_node_id] = names
    assert sorted(n for owned in sent.values() for n in owned) == sorted(NAMES)
    assert sent == strategy.assignment


def test_without_context_nothing_but_the_slice_travels():
    strategy = _strategy(clients=3, send_context=False)
    for msg in _configure(strategy):
        assert "context" not in msg.content


def test_sampling_depends_on_seed_and_round_only():
    a, b = _strategy(clients=3), _strategy(clients=3)
    assert (
        _configure(a, 5)[0].metadata.dst_node_id
        == _configure(b, 5)[0].metadata.dst_node_id
    )
    assert a.assignment == b.assignment
    samples = set()
    for r in range(1, 8):
        _configure(a, r)
        samples.add(tuple(a.round_log[r]["sampled-partitions"]))
    assert len(samples) > 1  # different rounds sample differently


def test_aggregate_is_per_tensor_weighted_mean_and_untrained_tensors_stay():
    # Prepare: 4 clients, 3 groups -> one group is trained by two clients
    strategy = _strategy(clients=4)
    _configure(strategy)
    replies, expected_sum, expected_w = [], {}, {}
    for i, (node, owned) in enumerate(strategy.assignment.items()):
        arrays = {n: np.full((2,), 10.0 * (i + 1), np.float32) for n in owned}
        n_examples = i + 1
        replies.append(
            reply(node, arrays, {"num-examples": n_examples, "train-loss": 0.5})
        )
        for n in owned:
            expected_sum[n] = expected_sum.get(n, 0.0) + n_examples * 10.0 * (i + 1)
            expected_w[n] = expected_w.get(n, 0.0) + n_examples

    # Execute
    arrays, metrics = strategy.aggregate_train(1, replies)

    # Assert
    for n in NAMES:
        np.testing.assert_allclose(arrays[n].numpy(), expected_sum[n] / expected_w[n])
    assert metrics["num-examples"] == 1 + 2 + 3 + 4
    assert strategy.round_log[1]["dropped"] == 0


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda a: {**a, "intruder": np.zeros(2, np.float32)}, "wrong tensor names"),
        (lambda a: dict(list(a.items())[1:]), "wrong tensor names"),
        (lambda a: {k: np.zeros(3, np.float32) for k in a}, "shape"),
        (lambda a: {k: np.full(2, np.nan, np.float32) for k in a}, "NaN"),
        (lambda a: {k: np.zeros(2, np.int64) for k in a}, "dtype"),
    ],
)
def test_a_bad_reply_is_dropped_and_the_round_goes_on(corrupt, reason, caplog):
    # Prepare
    strategy = _strategy(clients=3)
    _configure(strategy)
    nodes = list(strategy.assignment)
    good = [
        reply(
            node,
            {n: np.full(2, 5.0, np.float32) for n in strategy.assignment[node]},
            {"num-examples": 3},
        )
        for node in nodes[1:]
    ]
    bad_arrays = corrupt(
        {n: np.full(2, 99.0, np.float32) for n in strategy.assignment[nodes[0]]}
    )
    bad = reply(nodes[0], bad_arrays, {"num-examples": 3})

    # Execute
    arrays, _ = strategy.aggregate_train(1, [bad, *good])

    # Assert: the bad node's own tensors keep their value, the others moved to 5
    bad_only = set(strategy.assignment[nodes[0]]) - {
        n for node in nodes[1:] for n in strategy.assignment[node]
    }
    for n in NAMES:
        expected = _current()[n] if n in bad_only else np.full(2, 5.0)
        np.testing.assert_allclose(arrays[n].numpy(), expected)
    assert strategy.round_log[1]["dropped"] == 1
    assert reason in caplog.text or reason.lower() in caplog.text.lower()


def test_reply_from_a_node_that_got_no_slice_cannot_write():
    strategy = _strategy(clients=1)
    _configure(strategy)
    (owner,) = strategy.assignment
    stranger = next(n for n in strategy.partitions if n != owner)
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(
                stranger,
                {n: np.zeros(2, np.float32) for n in NAMES},
                {"num-examples": 5},
            )
        ],
    )
    assert arrays is None
    log = strategy.round_log[1]
    # The stranger's reply is invalid; the owner, who never answered, timed out.
    assert (log["dropped-invalid"], log["dropped-timeout"], log["dropped"]) == (1, 1, 2)


def test_zero_examples_adds_nothing():
    strategy = _strategy(clients=1)
    _configure(strategy)
    (owner,) = strategy.assignment
    arrays, _ = strategy.aggregate_train(
        1,
        [
            reply(
                owner,
                {n: np.zeros(2, np.float32) for n in strategy.assignment[owner]},
                {"num-examples": 0},
            )
        ],
    )
    assert arrays is None
    assert strategy.round_log[1]["dropped-empty"] == 1


def test_yogi_moves_every_tensor_on_the_first_round_it_is_trained():
    strategy = _strategy(clients=3, optimizer=ServerOptimizer(kind="yogi"))
    _configure(strategy)
    replies = [
        reply(node, {n: _current()[n] + 1.0 for n in owned}, {"num-examples": 2})
        for node, owned in strategy.assignment.items()
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    for n in NAMES:
        step = arrays[n].numpy() - _current()[n]
        # first Yogi step: eta * 0.1 d / (0.1 |d| + tau) with d = 1 -> ~ eta
        np.testing.assert_allclose(step, 0.01 * 0.1 / (0.1 + 1e-3), rtol=1e-5)


def test_a_round_in_which_every_client_crashed_stops_the_run():
    from flwr.app import Error, Message

    from strategies import RoundFailedError

    strategy = _strategy(clients=2)
    _configure(strategy)
    crashed = []
    for node in strategy.assignment:
        ok = reply(node, None, {"num-examples": 1})
        crashed.append(
            Message(
                error=Error(code=0, reason="ValueError: boom"), metadata=ok.metadata
            )
        )
    with pytest.raises(RoundFailedError, match="all 2 clients failed.*boom"):
        strategy.aggregate_train(1, crashed)


def test_without_split_every_client_trains_every_tensor_and_aggregation_is_fedavg():
    # Prepare
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    strategy = _strategy(clients=3, split=False)
    messages = _configure(strategy)
    assert all(sorted(m.content["arrays"].keys()) == sorted(NAMES) for m in messages)
    rng = np.random.default_rng(1)
    replies = [
        reply(node, {n: rng.normal(size=2).astype(np.float32) for n in NAMES},
              {"num-examples": n_ex})
        for node, n_ex in zip(strategy.assignment, (3, 7, 11), strict=True)
    ]  # fmt: skip

    # Execute
    ours, _ = strategy.aggregate_train(1, replies)
    flowers = aggregate_arrayrecords([r.content for r in replies], "num-examples")

    # Assert: identical to Flower's own FedAvg aggregation
    for n in NAMES:
        np.testing.assert_allclose(ours[n].numpy(), flowers[n].numpy(), rtol=1e-6)


# ------------------------------------------------------ devices, budgets, faults
def _fleet(budgets_mib, speeds=None):
    """4 partitions' devices; the memory model: 100 MiB + 1 MiB per parameter."""
    from spry.devices import DeviceProfile, Fleet
    from spry.memory_model import MemoryModel

    speeds = speeds or [1.0] * len(budgets_mib)
    profiles = [
        DeviceProfile(f"d{i}", budget_mib=b, speed=s)
        for i, (b, s) in enumerate(zip(budgets_mib, speeds, strict=True))
    ]
    memory = MemoryModel(fixed_bytes=100 * 2**20, per_param_bytes=2**20)
    return Fleet(profiles, memory, margin=0.0)


def test_budgets_deal_only_what_fits_and_never_sample_a_device_that_fits_nothing():
    # Each tensor has 2 parameters: the head (4) is 4 MiB, a group 4 MiB more.
    # Partition 0 fits nothing, 1 fits one group, 2 two, 3 all three.
    fleet = _fleet([103, 108.5, 112.5, 1e6])
    for server_round in range(1, 6):
        strategy = _strategy(
            clients=3, dealer=BudgetDealer(fleet), shared_names=["head.w", "head.b"]
        )
        _configure(strategy, server_round)
        by_partition = {
            strategy.partitions[n]: o for n, o in strategy.assignment.items()
        }
        assert 0 not in by_partition
        for partition, owned in by_partition.items():
            predicted = fleet.memory.peak_bytes(2 * len(owned))
            assert predicted <= fleet.profiles[partition].budget_bytes
        assert len(by_partition[1]) == 4 and len(by_partition[2]) <= 6
        assert strategy.round_log[server_round]["coverage-assigned"] == 1.0


def test_a_straggler_past_the_deadline_is_dropped_as_late():
    from spry.faults import FaultPlan

    fleet = _fleet([1e6] * 4, speeds=[0.5, 0.5, 0.5, 0.5])
    strategy = _strategy(
        clients=2,
        dealer=BudgetDealer(fleet),
        faults=FaultInjection(FaultPlan(straggle=0.5, straggle_factor=4.0), 10.0),
    )
    _configure(strategy)
    (slow,) = [
        n for n in strategy.assignment if strategy.partitions[n] in strategy._faults
    ]
    replies = [
        reply(n, {k: np.ones(2, np.float32) for k in owned},
              {"num-examples": 4, "train-seconds": 2.0})
        for n, owned in strategy.assignment.items()
    ]  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, replies)
    log = strategy.round_log[1]
    # 2 s on the host = 4 s on a half-speed device; x4 straggling = 16 s > 10 s
    assert (log["dropped-late"], log["dropped"]) == (1, 1)
    assert log["device-seconds"] == 10.0  # the server waited out the deadline
    assert arrays is not None
    assert log["orphan-groups"] == len(strategy.assignment[slow]) // 2  # pairs


def test_injected_crashes_of_every_client_do_not_stop_the_run():
    from spry.faults import FaultPlan, InjectedFault

    strategy = _strategy(clients=2, faults=FaultInjection(FaultPlan(crash=1.0)))
    messages = _configure(strategy)
    assert all(m.content["config"]["fault"] == "crash" for m in messages)
    replies = [
        error_reply(n, f"ClientAppException. Message: {InjectedFault.MARKER}: crash")
        for n in strategy.assignment
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None and strategy.round_log[1]["dropped-crash"] == 2
