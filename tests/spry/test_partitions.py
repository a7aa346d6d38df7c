"""What each client holds (spry/data): partitions, the held-out split, the test set.

The heterogeneity a run reports is what its partitions hold, so they are checked
against what they are drawn from, on small synthetic labels (no hub, no model):
Dirichlet label shares against the same draw made again, IID sizes, the stratified
central test split, each client's held-out part, and the caps on both splits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from itertools import count

import datasets
import numpy as np
import pytest

from spry.config import DataConfig
from spry.data import client_split, load_for, load_text_dataset, make_partitioner
from spry.data.sources import OFFLINE_DATASETS
from spry.seeding import STREAM_DATA, derive_seed

# Examples of each class: unequal, so shares and rounding are visible
CLASS_SIZES = (70, 45, 25)
_names = count()


def _labelled(sizes: Sequence[int] = CLASS_SIZES) -> datasets.Dataset:
    """sizes[c] examples of class c in a fixed mixed order; `id` names each one."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(123).shuffle(labels)
    features = datasets.Features(
        {
            "id": datasets.Value("int64"),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=[f"c{c}" for c in range(len(sizes))]),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "id": list(range(len(labels))),
            "text": [f"sentence {i}" for i in range(len(labels))],
            "label": labels.tolist(),
        },
        features=features,
    )


def _id(data: datasets.Dataset) -> list[int]:
    return list(data["id"])


def _labels(data: datasets.Dataset) -> list[int]:
    return list(data["label"])


def _partitions(
    data: datasets.Dataset, cfg: DataConfig, seed: int
) -> list[datasets.Dataset]:
    partitioner = make_partitioner(data, cfg, seed=seed)
    return [partitioner.load_partition(p) for p in range(cfg.num_clients)]


def _ids(parts: Sequence[datasets.Dataset]) -> list[list[int]]:
    return [sorted(_id(part)) for part in parts]


def _assert_disjoint_and_covering(ids: Sequence[Sequence[int]], n: int) -> None:
    every = [i for part in ids for i in part]
    assert len(every) == len(set(every)), "an example is on two clients"
    assert sorted(every) == list(range(n)), "an example is on no client"


def _offline_source(monkeypatch, data: datasets.Dataset) -> str:
    """Register `data` as an offline dataset under a fresh name (the loaders cache
    by name); return the name."""
    name = f"synthetic-{next(_names)}"
    monkeypatch.setitem(OFFLINE_DATASETS, name, lambda: data)
    return name


# --- Dirichlet label skew ------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.3, 1.0])
def test_dirichlet_label_shares_are_the_seeded_draws(alpha):
    """Client c holds share p[c] of class k, p ~ Dirichlet(alpha) drawn per class
    (in label order) from the run's data stream: within one example of p[c] * n_k."""
    data, clients, seed = _labelled(), 5, 7
    cfg = DataConfig(num_clients=clients, alpha=alpha)

    parts = _partitions(data, cfg, seed)

    _assert_disjoint_and_covering(_ids(parts), len(data))
    draw = np.random.default_rng(derive_seed(seed, STREAM_DATA) % 2**32)
    for label, n_k in enumerate(CLASS_SIZES):
        shares = draw.dirichlet([alpha] * clients)
        held = [Counter(_labels(part))[label] for part in parts]
        assert sum(held) == n_k
        assert np.all(np.abs(np.array(held) - shares * n_k) < 1.0), (label, held)


def test_the_dirichlet_partition_is_a_function_of_the_seed():
    """Every process that builds it gets the same clients; another seed, others."""
    data, cfg = _labelled(), DataConfig(num_clients=4, alpha=0.5)

    first, again = _partitions(data, cfg, 0), _partitions(data, cfg, 0)
    other = _partitions(data, cfg, 1)

    assert [_id(p) for p in first] == [_id(p) for p in again]  # order too
    assert _ids(other) != _ids(first)


def test_a_small_alpha_skews_labels_more_than_a_large_one():
    """The mean over clients of the largest class share grows as alpha shrinks."""
    data = _labelled((300, 300))

    def top_share(alpha: float) -> float:
        parts = _partitions(data, DataConfig(num_clients=10, alpha=alpha), 0)
        tops = [max(Counter(_labels(p)).values()) / len(p) for p in parts if len(p)]
        return float(np.mean(tops))

    assert top_share(0.1) > top_share(1.0) > top_share(100.0) > 0.5


# --- IID ----------------------------------------------------------------------------


def test_iid_partitions_are_equal_within_one_example_disjoint_and_cover_the_data():
    data = _labelled()
    cfg = DataConfig(num_clients=8, partitioner="iid")

    parts = _partitions(data, cfg, 3)

    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(data)
    _assert_disjoint_and_covering(_ids(parts), len(data))
    # Shuffled with the seed first: not the data's first examples in order
    assert _ids(parts) != _ids(_partitions(data, cfg, 4))


# --- each client's held-out part ----------------------------------------------------


def test_a_clients_held_out_part_is_its_share_fixed_by_seed_and_client():
    partition = _labelled().select(range(40))
    cfg = DataConfig(client_eval_fraction=0.2)

    train, held_out = client_split(partition, cfg, seed=0, partition_id=2)

    assert (len(train), len(held_out)) == (32, 8)
    assert sorted(_id(train) + _id(held_out)) == _id(partition)
    again = client_split(partition, cfg, seed=0, partition_id=2)[1]
    assert _id(again) == _id(held_out)
    other_client = client_split(partition, cfg, seed=0, partition_id=3)[1]
    other_seed = client_split(partition, cfg, seed=1, partition_id=2)[1]
    assert _id(held_out) != _id(other_client)
    assert _id(held_out) != _id(other_seed)
    # No held-out part: all of it trains
    no_held_out = DataConfig(client_eval_fraction=0.0)
    whole, none = client_split(partition, no_held_out, seed=0, partition_id=2)
    assert (len(whole), len(none)) == (40, 0)


# --- the central test split and the caps --------------------------------------------


def test_the_test_split_keeps_each_class_share_within_one_example(monkeypatch):
    data = _labelled()
    name = _offline_source(monkeypatch, data)

    split = load_text_dataset(name, test_fraction=0.2)

    train_ids, test_ids = _id(split.train), _id(split.test)
    _assert_disjoint_and_covering([train_ids, test_ids], len(data))
    held = Counter(_labels(split.test))
    for label, n_k in enumerate(CLASS_SIZES):
        assert abs(held[label] - 0.2 * n_k) <= 1, (label, held[label])
    assert split.label_names == ("c0", "c1", "c2")
    # Fixed (it depends on no run seed): a fresh load splits the same way
    fresh = load_text_dataset.__wrapped__(name, test_fraction=0.2)
    assert _id(fresh.test) == test_ids and _id(fresh.train) == train_ids


def test_the_caps_take_the_first_examples_of_each_split(monkeypatch):
    name = _offline_source(monkeypatch, _labelled())
    whole = load_for(DataConfig(dataset=name))

    capped = load_for(
        DataConfig(dataset=name, max_train_examples=50, max_test_examples=7)
    )
    over = load_for(DataConfig(dataset=name, max_train_examples=10_000))

    assert _id(capped.train) == _id(whole.train)[:50]
    assert _id(capped.test) == _id(whole.test)[:7]
    assert capped.label_names == whole.label_names
    assert _id(over.train) == _id(whole.train)  # a cap above the size: all of it
    assert _id(over.test) == _id(whole.test)  # 0: uncapped
