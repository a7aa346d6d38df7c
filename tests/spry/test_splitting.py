from __future__ import annotations

import pytest

from spry.splitting import assign_groups, coverage, make_groups

NAMES = [f"t{i}" for i in range(26)]  # MiniLM + LoRA r=1: 24 LoRA tensors + 2 head


@pytest.mark.parametrize("num_clients", [3, 13, 20])  # groups > = < clients (13 groups)
def test_every_trainable_tensor_is_assigned_to_at_least_one_client(num_clients):
    groups = make_groups(NAMES, 2)
    clients = list(range(100, 100 + num_clients))

    assignment = assign_groups(groups, clients)

    assert len(groups) == 13
    assert set(assignment) == set(clients)
    assert coverage(assignment, NAMES) == 1.0
    assert all(assignment[c] for c in clients)  # nobody idles


def test_more_groups_than_clients_deals_round_robin():
    groups = make_groups(NAMES[:10], 2)  # 5 groups
    assignment = assign_groups(groups, [7, 8])
    assert assignment[7] == ["t0", "t1", "t4", "t5", "t8", "t9"]
    assert assignment[8] == ["t2", "t3", "t6", "t7"]


def test_more_clients_than_groups_repeats_groups():
    groups = make_groups(NAMES[:4], 2)  # 2 groups
    assignment = assign_groups(groups, [1, 2, 3, 4, 5])
    assert [assignment[c] for c in (1, 2, 3, 4, 5)] == [
        ["t0", "t1"],
        ["t2", "t3"],
        ["t0", "t1"],
        ["t2", "t3"],
        ["t0", "t1"],
    ]


def test_shared_tensors_go_to_every_client_once():
    groups = make_groups(NAMES[:4], 2)
    assignment = assign_groups(groups, [1, 2, 3], shared=["head", "t0"])
    assert assignment[1] == ["t0", "t1", "head"]
    assert assignment[2] == ["t2", "t3", "head", "t0"]
    assert all("head" in owned for owned in assignment.values())


def test_groups_keep_model_order_and_last_group_may_be_short():
    assert make_groups(["a", "b", "c"], 2) == [("a", "b"), ("c",)]


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="group_size"):
        make_groups(NAMES, 0)
    with pytest.raises(ValueError, match="no clients"):
        assign_groups(make_groups(NAMES, 2), [])
    with pytest.raises(ValueError, match="distinct"):
        assign_groups(make_groups(NAMES, 2), [1, 1])
