"""The default task: fine-tune a sentence classifier on a client's partition.

A worker process (a Ray actor in simulation, a SuperNode in deployment) runs many
clients over a run; the model and each partition are built once per process and
reused. Every message first resets the trainable tensors to the run's initial
values, so a client's result never depends on which client ran before it there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import datasets
import numpy as np
import torch
from flwr_datasets.partitioner import Partitioner

from spry.classification import classification_loss, evaluate, iterate_batches, move
from spry.config import DataConfig, ModelConfig, RunConfig
from spry.data import client_split, load_for, make_partitioner
from spry.engines.base import Batch, TaskLoss
from spry.models import TrainableModel, build_classifier
from spry.seeding import STREAM_DATA, numpy_rng


@lru_cache(maxsize=2)
def _model(cfg: ModelConfig, num_labels: int, seed: int, device: str) -> TrainableModel:
    return build_classifier(cfg, num_labels=num_labels, seed=seed, device=device)


@lru_cache(maxsize=2)
def _initial_state(cfg: ModelConfig, num_labels: int, seed: int, device: str) -> dict:
    return _model(cfg, num_labels, seed, device).state()


@lru_cache(maxsize=2)
def _partitioner(cfg: DataConfig, seed: int) -> Partitioner:
    return make_partitioner(load_for(cfg).train, cfg, seed=seed)


@lru_cache(maxsize=256)
def _partition(
    cfg: DataConfig, seed: int, partition_id: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    partitioner = _partitioner(cfg, seed)
    return client_split(
        partitioner.load_partition(partition_id),
        cfg,
        seed=seed,
        partition_id=partition_id,
    )


@dataclass
class ClassificationTask:
    """One client's view of the classification task in a run."""

    cfg: RunConfig
    partition_id: int
    device: str

    loss: TaskLoss = staticmethod(classification_loss)  # type: ignore[assignment]

    @property
    def num_labels(self) -> int:
        return load_for(self.cfg.data).num_labels

    def model(
        self,
        arrays: Mapping[str, np.ndarray],
        feature_center: Sequence[float] | None = None,
    ) -> TrainableModel:
        """The process's model, reset to the initial state, then `arrays` loaded.

        A pooled head also gets the run's `feature_center` (zero when not yet set).
        """
        key = (self.cfg.model, self.num_labels, self.cfg.runtime.seed, self.device)
        trainable = _model(*key)
        trainable.load(_initial_state(*key))
        trainable.load(arrays)
        head = trainable.pooled_head
        if head is not None:
            zero = np.zeros(head.center.shape)
            trainable.set_feature_center(
                zero if feature_center is None else feature_center
            )
        return trainable

    def feature_sum(self, trainable: TrainableModel) -> tuple[np.ndarray, int]:
        """Sum and count of the pooled features of this client's training examples."""
        batches = iterate_batches(
            self.train_data,
            trainable.tokenizer,
            batch_size=self.cfg.client.eval_batch_size,
            max_length=self.cfg.model.max_length,
        )
        return trainable.feature_sum(move(b, self.device) for b in batches)

    @property
    def train_data(self) -> datasets.Dataset:
        return _partition(self.cfg.data, self.cfg.runtime.seed, self.partition_id)[0]

    @property
    def eval_data(self) -> datasets.Dataset:
        return _partition(self.cfg.data, self.cfg.runtime.seed, self.partition_id)[1]

    def batches(
        self, trainable: TrainableModel, server_round: int, epoch: int
    ) -> Iterable[Batch]:
        """Shuffled local batches ordered by (seed, round, client, epoch)."""
        data = self.train_data
        order = numpy_rng(
            self.cfg.runtime.seed, STREAM_DATA, server_round, self.partition_id, epoch
        ).permutation(len(data))
        for batch in iterate_batches(
            data,
            trainable.tokenizer,
            batch_size=self.cfg.client.batch_size,
            max_length=self.cfg.model.max_length,
            order=order,
        ):
            yield move(batch, self.device)

    def first_batch(self, trainable: TrainableModel, data_round: int) -> Batch | None:
        """One batch for a one-step round: the first of round `data_round`'s order.

        None when the partition has no training examples.
        """
        return next(iter(self.batches(trainable, data_round, epoch=0)), None)

    def evaluate(self, trainable: TrainableModel) -> dict[str, float]:
        return evaluate(
            trainable.model,
            trainable.tokenizer,
            self.eval_data,
            batch_size=self.cfg.client.eval_batch_size,
            max_length=self.cfg.model.max_length,
            device=self.device,
        )


def load_task(cfg: RunConfig, partition_id: int) -> ClassificationTask:
    device = (
        "cuda"
        if torch.cuda.is_available() and cfg.runtime.client_num_gpus > 0
        else "cpu"
    )
    return ClassificationTask(cfg=cfg, partition_id=partition_id, device=device)
