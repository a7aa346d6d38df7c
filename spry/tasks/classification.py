"""The default task: fine-tune a sentence classifier (Spry's paper setting).

A pretrained encoder (offline all-MiniLM-L6-v2 by default) with LoRA adapters and a
head, on labelled sentences (offline Rotten Tomatoes by default), split into a fixed
test set and Dirichlet or IID client partitions. Model and data come from the run's
`model` and `data` config sections, which exist for this task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

import datasets
import numpy as np

from ..classification import classification_loss, evaluate, iterate_batches, move
from ..data import load_for
from ..data.sources import TextDataset
from ..engines.base import Batch
from ..models import TrainableModel, build_classifier
from .base import LabelledDataTask


class ClassificationTask(LabelledDataTask):
    """Sentence classification with LoRA; accuracy on a fixed test split."""

    name: ClassVar[str] = "classification"
    summary: ClassVar[str] = (
        "sentence classification: LoRA on MiniLM, Rotten Tomatoes (accuracy)"
    )
    loss = staticmethod(classification_loss)  # type: ignore[assignment]

    @property
    def dataset(self) -> TextDataset:
        return load_for(self.run.data)  # cached by config

    def build_model(self, device: str) -> TrainableModel:
        return build_classifier(
            self.run.model,
            num_labels=self.dataset.num_labels,
            seed=self.run.runtime.seed,
            device=device,
        )

    def batches(
        self,
        trainable: TrainableModel,
        rows: datasets.Dataset,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        return iterate_batches(
            rows,
            trainable.tokenizer,
            batch_size=batch_size,
            max_length=self.run.model.max_length,
            order=order,
        )

    def evaluate(
        self, trainable: TrainableModel, rows: datasets.Dataset, device: str = "cpu"
    ) -> dict[str, float]:
        return evaluate(
            trainable.model,
            trainable.tokenizer,
            rows,
            batch_size=self.run.client.eval_batch_size,
            max_length=self.run.model.max_length,
            device=device,
        )

    def centers_features(self) -> bool:
        return self.run.model.center_features

    def feature_sum(
        self, trainable: TrainableModel, rows: Iterable, device: str = "cpu"
    ) -> tuple[np.ndarray, int]:
        """Sum and count of the pooled features of `rows` (for the feature center)."""
        batches = self.batches(
            trainable, rows, batch_size=self.run.client.eval_batch_size
        )
        return trainable.feature_sum(move(b, device) for b in batches)
