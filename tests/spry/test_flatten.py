"""One flatten/unflatten pair for every checkpoint key ("a/b/c")."""

from __future__ import annotations

import numpy as np
import pytest

from spry.flatten import flatten, unflatten


def test_round_trip_keeps_the_keys_checkpoints_have_always_used():
    # Prepare: the strategy arrays of a FwdLLM run mid-step
    tree = {
        "optimizer": {"m": {"l0.A": np.ones(2)}, "v": {"l0.A": np.zeros(2)}},
        "fwdllm": {
            "previous": {"l0.A": np.full(2, 3.0)},
            "pool": {"0": {"l0.A": np.full(2, 4.0)}, "1": {"l0.A": np.full(2, 5.0)}},
        },
    }

    # Execute
    flat = flatten(tree)
    back = unflatten(flat)

    # Assert
    assert list(flat) == [
        "optimizer/m/l0.A",
        "optimizer/v/l0.A",
        "fwdllm/previous/l0.A",
        "fwdllm/pool/0/l0.A",
        "fwdllm/pool/1/l0.A",
    ]
    assert flatten(back).keys() == flat.keys()
    for key, value in flatten(back).items():
        assert value is flat[key]
    assert flatten({"empty": {}, "w": 1}, prefix="weights/") == {"weights/w": 1}


@pytest.mark.parametrize("key", ["a/b", ""])
def test_a_segment_that_would_come_back_at_another_depth_is_refused(key):
    with pytest.raises(ValueError, match="empty or holds"):
        flatten({"weights": {key: np.ones(1)}})


def test_a_key_that_is_both_a_leaf_and_a_branch_is_refused():
    with pytest.raises(ValueError, match="both a leaf and a branch"):
        unflatten({"a/b": 1, "a/b/c": 2})
    with pytest.raises(ValueError, match="both a leaf and a branch"):
        unflatten({"a/b/c": 2, "a/b": 1})
