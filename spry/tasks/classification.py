"""The default task: fine-tune a sentence classifier (Spry's paper setting).

A pretrained encoder (offline all-MiniLM-L6-v2 by default) with LoRA adapters and a
head, on labelled sentences (offline Rotten Tomatoes by default), split into a fixed
test set and Dirichlet or IID client partitions. Model and data come from the run's
`model` and `data` config sections, which exist for this task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import ClassVar

import datasets
import numpy as np

from ..classification import (
    classification_loss,
    evaluate,
    iterate_batches,
    move,
    tokenize,
)
from ..config import ConfigValue
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
        return self._classifier(self.dataset.num_labels, device)

    def _classifier(self, num_labels: int, device: str) -> TrainableModel:
        return build_classifier(
            self.run.model,
            num_labels=num_labels,
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

    # -- memory planning: the classifier and a full-length batch ---------------------

    def probe_context(self) -> dict[str, ConfigValue]:
        return {"num-labels": self.dataset.num_labels}

    def probe_inputs(
        self, device: str, context: Mapping[str, ConfigValue]
    ) -> tuple[TrainableModel, Batch]:
        """The classifier and `batch-size` examples of `max-length` tokens.

        Sentences are padded to the longest of their batch, so a client's peak is
        at a batch of full-length ones; the probe does not read the data set.
        """
        num_labels = int(context["num-labels"])
        trainable = self._classifier(num_labels, device)
        size, length = self.run.client.batch_size, self.run.model.max_length
        text = " ".join(["memory"] * length)
        labels = [i % num_labels for i in range(size)]
        batch = tokenize(trainable.tokenizer, [text] * size, labels, length)
        return trainable, move(batch, device)
