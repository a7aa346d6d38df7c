"""Sentence classification: batching, the loss every engine differentiates, metrics.

Shared by the client task (training, federated evaluation) and the server
(centralized evaluation on the fixed test split), so both score the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .class_metrics import class_scores, confusion
from .engines.base import Batch


def classification_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of the model's logits; the logits are the side output."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits  # (B, num_labels)
    return F.cross_entropy(logits, batch["labels"]), logits


def tokenize(
    tokenizer: Any, texts: Sequence[str], labels: Sequence[int], max_length: int
) -> dict[str, Tensor]:
    """One padded batch (padded to its longest example, at most `max_length`)."""
    encoded = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    batch = dict(encoded)
    batch["labels"] = torch.as_tensor(list(labels), dtype=torch.long)
    return batch


def iterate_batches(
    data: datasets.Dataset,
    tokenizer: Any,
    *,
    batch_size: int,
    max_length: int,
    order: np.ndarray | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Batches over `data` in `order` (a permutation of its rows) or as stored."""
    texts, labels = data["text"], data["label"]
    index = np.arange(len(texts)) if order is None else order
    for start in range(0, len(index), batch_size):
        rows = index[start : start + batch_size]
        yield tokenize(
            tokenizer, [texts[i] for i in rows], [labels[i] for i in rows], max_length
        )


def move(batch: Batch, device: torch.device | str) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokenizer: Any,
    data: datasets.Dataset,
    *,
    batch_size: int,
    max_length: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Accuracy, macro-F1, balanced accuracy and mean loss over `data`.

    Empty data gives zero examples and no class scores.

    Examples are batched in order of length, so a batch pads to a similar length
    (2-3x less compute than random order on short sentences); metrics do not depend
    on the order.
    """
    correct, total_loss, count = 0, 0.0, 0
    matrix: np.ndarray | None = None
    by_length = np.argsort([len(text) for text in data["text"]], kind="stable")
    for batch in iterate_batches(
        data, tokenizer, batch_size=batch_size, max_length=max_length, order=by_length
    ):
        batch = move(batch, device)
        loss, logits = classification_loss(model, batch)
        n = len(batch["labels"])
        predicted = logits.argmax(-1)
        correct += int((predicted == batch["labels"]).sum())
        part = confusion(
            batch["labels"].cpu().numpy(), predicted.cpu().numpy(), logits.shape[-1]
        )
        matrix = part if matrix is None else matrix + part
        total_loss += float(loss) * n
        count += n
    if count == 0 or matrix is None:
        return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
    return {
        "accuracy": correct / count,
        "loss": total_loss / count,
        "num-examples": count,
        **class_scores(matrix),
    }
