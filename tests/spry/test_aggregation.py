from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedYogi

from spry.aggregation import ServerOptimizer, merge_into, weighted_mean_per_tensor
from tests.helpers import reply


def test_weighted_mean_per_tensor_matches_hand_computation():
    # Prepare: client 1 trains a and b (10 examples), client 2 trains b (30 examples)
    c1 = {"a": np.array([1.0, 2.0]), "b": np.array([4.0])}
    c2 = {"b": np.array([8.0])}

    # Execute
    mean = weighted_mean_per_tensor([(c1, 10), (c2, 30)])

    # Assert: a only from client 1; b = (10*4 + 30*8) / 40 = 7
    np.testing.assert_allclose(mean["a"], [1.0, 2.0])
    np.testing.assert_allclose(mean["b"], [7.0])


def test_untrained_tensors_keep_their_value():
    current = {"a": np.zeros(2, np.float32), "b": np.ones(1, np.float32)}
    merged = merge_into(current, {"a": np.full(2, 3.0, np.float32)})
    np.testing.assert_array_equal(merged["a"], [3.0, 3.0])
    np.testing.assert_array_equal(merged["b"], [1.0])


def test_non_positive_weights_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        weighted_mean_per_tensor([({"a": np.zeros(1)}, 0)])


def test_yogi_step_matches_hand_computed_values():
    # Prepare: one tensor, w = 1, aggregate = 1.5 -> delta = 0.5
    opt = ServerOptimizer(kind="yogi", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    current = {"w": np.array([1.0], np.float32)}
    state = opt.init(current)

    # Execute: two steps
    new, state = opt.update(current, {"w": np.array([1.5], np.float32)}, state)
    new2, state2 = opt.update(new, {"w": new["w"] + 0.2}, state)

    # Assert: m1 = 0.05; v1 = 0 - 0.01*0.25*sign(0-0.25) = 0.0025;
    # w1 = 1 + 0.1*0.05/(0.05+1e-3)
    w1 = 1 + 0.1 * 0.05 / (0.05 + 1e-3)
    np.testing.assert_allclose(new["w"], [w1], rtol=1e-6)
    # m2 = 0.9*0.05 + 0.1*0.2 = 0.065;
    # v2 = 0.0025 - 0.01*0.04*sign(0.0025-0.04) = 0.0029
    w2 = w1 + 0.1 * 0.065 / (np.sqrt(0.0029) + 1e-3)
    np.testing.assert_allclose(new2["w"], [w2], rtol=1e-5)
    np.testing.assert_allclose(state2.v["w"], [0.0029], rtol=1e-6)


def test_adam_and_avg_steps():
    current = {"w": np.array([0.0], np.float32)}
    adam = ServerOptimizer(kind="adam", eta=1.0, beta_1=0.0, beta_2=0.0, tau=0.0)
    new, _ = adam.update(
        current, {"w": np.array([-2.0], np.float32)}, adam.init(current)
    )
    np.testing.assert_allclose(new["w"], [-1.0])  # sign step of size eta
    avg = ServerOptimizer(kind="avg")
    new, _ = avg.update(current, {"w": np.array([5.0], np.float32)}, avg.init(current))
    np.testing.assert_allclose(new["w"], [5.0])
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer(kind="sgdm")


def test_full_coverage_yogi_equals_flowers_own_fedyogi():
    # Prepare: two rounds of replies in which every client returns every tensor
    rng = np.random.default_rng(0)
    current = {
        "a": rng.normal(size=(3, 2)).astype(np.float32),
        "b": rng.normal(size=4).astype(np.float32),
    }
    rounds = [
        [
            (
                {
                    k: v + rng.normal(size=v.shape).astype(np.float32) * 0.1
                    for k, v in current.items()
                },
                n,
            )
            for n in (5, 20, 11)
        ]
        for _ in range(2)
    ]
    ours_opt = ServerOptimizer(kind="yogi")
    flower = FedYogi()  # same defaults: eta 1e-2, b1 0.9, b2 0.99, tau 1e-3

    ours, state = dict(current), ours_opt.init(current)
    theirs = ArrayRecord({k: Array(v) for k, v in current.items()})
    for replies in rounds:
        # Execute (ours)
        ours, state = ours_opt.update(ours, weighted_mean_per_tensor(replies), state)
        # Execute (Flower's)
        flower.current_arrays = {k: a.numpy() for k, a in theirs.items()}
        messages = [
            reply(i + 1, arrays, {"num-examples": n})
            for i, (arrays, n) in enumerate(replies)
        ]
        theirs, _ = flower.aggregate_train(1, messages)

    # Assert
    for k in current:
        np.testing.assert_allclose(ours[k], theirs[k].numpy(), rtol=1e-5, atol=1e-6)


def test_estimated_tensors_can_take_the_aggregate_while_the_head_steps_with_yogi():
    """`estimated-server-optimizer=avg`: the forward-trained slices are taken as
    trained, the exact head takes exactly the Yogi step it takes alone, and each
    keeps its own moments across rounds."""
    current = {"head": np.array([1.0, -1.0]), "lora": np.array([0.0, 0.5])}
    rounds = [
        {"head": np.array([1.2, -0.7]), "lora": np.array([0.01, 0.49])},
        {"head": np.array([0.9, -1.3]), "lora": np.array([-0.02, 0.52])},
    ]
    split = ServerOptimizer(
        kind="yogi", eta=0.1, estimated_kind="avg", is_exact=lambda n: n == "head"
    )
    alone = ServerOptimizer(kind="yogi", eta=0.1)
    state, solo = split.init(current), alone.init({"head": current["head"]})
    weights, head = dict(current), {"head": current["head"]}
    for target in rounds:
        # clients start from the current weights: the aggregate is an offset of it
        aggregate = {k: weights[k] + (target[k] - current[k]) for k in weights}
        weights, state = split.update(weights, aggregate, state)
        head, solo = alone.update(head, {"head": aggregate["head"]}, solo)
        np.testing.assert_array_equal(weights["lora"], aggregate["lora"])
        np.testing.assert_allclose(weights["head"], head["head"], rtol=0, atol=0)
    np.testing.assert_array_equal(state.m["head"], solo.m["head"])
    np.testing.assert_array_equal(state.m["lora"], np.zeros(2))  # avg keeps none
    with pytest.raises(ValueError, match="unknown server optimizer"):
        ServerOptimizer(estimated_kind="lion")


def test_without_a_split_the_estimated_kind_changes_nothing():
    current = {"a": np.array([1.0]), "b": np.array([2.0])}
    aggregate = {"a": np.array([1.5]), "b": np.array([1.0])}
    plain = ServerOptimizer(kind="yogi", eta=0.1)
    same = ServerOptimizer(kind="yogi", eta=0.1, estimated_kind="yogi",
                           is_exact=lambda n: n == "a")  # fmt: skip
    for opt in (same, ServerOptimizer(kind="yogi", eta=0.1, estimated_kind="avg")):
        new, _ = opt.update(current, aggregate, opt.init(current))
        expected, _ = plain.update(current, aggregate, plain.init(current))
        assert {k: v.tolist() for k, v in new.items()} == {
            k: v.tolist() for k, v in expected.items()
        }


def test_a_split_server_step_keeps_the_tensor_order_the_next_round_is_cut_in():
    """The next round's groups are cut in the global model's tensor order: a
    split step that returned the head first (or in a set's hash-seeded order)
    would deal other slices, and two runs with one seed would differ."""
    names = [f"layer{i}.lora_{ab}" for i in range(6) for ab in "AB"]
    names.insert(5, "classifier.weight")
    current = {n: np.full(2, float(i)) for i, n in enumerate(names)}
    split = ServerOptimizer(
        kind="yogi", estimated_kind="avg", is_exact=lambda n: n.startswith("classif")
    )
    aggregate = {n: w + 0.1 for n, w in current.items()}

    weights, _ = split.update(current, aggregate, split.init(current))

    assert list(weights) == names
