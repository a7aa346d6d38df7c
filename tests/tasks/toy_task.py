"""A third-party task, defined outside the core: two Gaussian blobs and a small MLP.

It is registered only through an entry point that the test writes into a temporary
dist-info folder (`[spry.tasks] toy = tests.tasks.toy_task:ToyTask`), exactly as an
installed package would register it; nothing in spry/ names it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spry.config import ConfigError
from spry.engines.base import Batch
from spry.models import TrainableModel
from spry.tasks import ClientData, Task, TaskOptions


@dataclass(frozen=True)
class Blobs:
    """Points (n, 2) and their labels (n,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def blobs(n: int, separation: float, seed: int) -> Blobs:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)) + separation * (2 * y[:, None] - 1) / 2
    return Blobs(x.astype(np.float32), y)


@dataclass(frozen=True)
class ToyOptions(TaskOptions):
    width: int = field(default=8, metadata={"help": "hidden units"})
    separation: float = field(default=2.0, metadata={"help": "distance of the means"})

    def __post_init__(self) -> None:
        if self.width < 1:
            raise ConfigError(f"`width` should be at least 1, got {self.width}")


class ToyTask(Task):
    name: ClassVar[str] = "toy"
    summary: ClassVar[str] = "two Gaussian blobs, a 2-layer MLP (accuracy)"
    Options = ToyOptions
    has_report: ClassVar[bool] = True

    def build_model(self, device: str) -> TrainableModel:
        torch.manual_seed(self.run.runtime.seed)
        width = self.options.width  # type: ignore[attr-defined]
        model = nn.Sequential()
        model.add_module("hidden", nn.Linear(2, width))
        model.add_module("relu", nn.ReLU())
        model.add_module("classifier", nn.Linear(width, 2))
        names = {name: name for name, _ in model.named_parameters()}
        return TrainableModel(model=model.to(device), tokenizer=None, names=names)

    def load_partition(self, partition_id: int) -> ClientData:
        seed = self.run.runtime.seed * 1000 + partition_id
        sep = self.options.separation  # type: ignore[attr-defined]
        return ClientData(
            train=blobs(40, sep, seed), held_out=blobs(10, sep, seed + 500)
        )

    def test_data(self) -> Blobs:
        return blobs(200, self.options.separation, 12345)  # type: ignore[attr-defined]

    def batches(
        self,
        trainable: TrainableModel,
        rows: Blobs,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        index = np.arange(len(rows)) if order is None else order
        for start in range(0, len(index), batch_size):
            rows_ = index[start : start + batch_size]
            yield {
                "x": torch.from_numpy(rows.x[rows_]),
                "labels": torch.from_numpy(rows.y[rows_]),
            }

    @staticmethod
    def loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Any]:
        logits = model(batch["x"])
        return F.cross_entropy(logits, batch["labels"]), logits

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Blobs, device: str = "cpu"
    ) -> dict[str, float]:
        if not len(rows):
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        batch = next(self.batches(trainable, rows, batch_size=len(rows)))
        loss, logits = self.loss(trainable.model, batch)
        correct = (logits.argmax(-1) == batch["labels"]).float().mean()
        return {
            "accuracy": float(correct),
            "loss": float(loss),
            "num-examples": len(rows),
        }

    def report(
        self, trainable: TrainableModel, partition_id: int, device: str = "cpu"
    ) -> dict[str, float]:
        scores = self.evaluate(trainable, self.partition(partition_id).held_out)
        n = scores["num-examples"]
        return {"correct": scores["accuracy"] * n, "examples": n}

    def merge_reports(self, reports: Sequence[Mapping[str, float]]) -> dict[str, float]:
        merged = super().merge_reports(reports)
        merged["held-out-accuracy"] = merged["correct"] / merged["examples"]
        return merged
