"""Client partitions, built with flwr-datasets' partitioners.

Dirichlet(alpha) label skew is the paper's setting (alpha = 1.0; 0.1 for strong
heterogeneity); IID is the homogeneous control. The partition depends only on the
data, the number of clients, alpha and the run seed, so every process that builds it
gets the same clients.
"""

from __future__ import annotations

import datasets
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, Partitioner

from ..config import DataConfig
from ..seeding import STREAM_DATA, derive_seed


def make_partitioner(
    train: datasets.Dataset,
    cfg: DataConfig,
    *,
    seed: int,
    partition_by: str = "label",
) -> Partitioner:
    """A partitioner over `train` with `cfg.num_clients` partitions.

    Dirichlet skews the share of each value of the `partition_by` column.
    """
    partition_seed = derive_seed(seed, STREAM_DATA) % (2**32)
    partitioner: Partitioner
    if cfg.partitioner == "iid":
        partitioner = IidPartitioner(num_partitions=cfg.num_clients)
    else:
        partitioner = DirichletPartitioner(
            num_partitions=cfg.num_clients,
            partition_by=partition_by,
            alpha=cfg.alpha,
            min_partition_size=0,
            self_balancing=False,
            seed=partition_seed,
        )
    partitioner.dataset = train.shuffle(seed=partition_seed)
    return partitioner


def client_split(
    partition: datasets.Dataset, cfg: DataConfig, *, seed: int, partition_id: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, held-out) parts of one client's partition, fixed by (seed, client)."""
    n_eval = int(round(len(partition) * cfg.client_eval_fraction))
    if n_eval == 0 or n_eval >= len(partition):
        return partition, partition.select([])
    shuffled = partition.shuffle(
        seed=derive_seed(seed, STREAM_DATA, partition_id + 1) % (2**32)
    )
    return (
        shuffled.select(range(n_eval, len(shuffled))),
        shuffled.select(range(n_eval)),
    )
