"""CLIPScope's class likelihood, federated: clients share prediction counts only.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737.

p(c), how often the model predicts ID class c, is counted over the images the
model scores. In a federation the images stay on the clients: each client
counts the ID class the model predicts for each of its own images
(`prediction_counts`, C integers) and shares only those counts; the server
sums them (`merge_counts`). A sum of counts is the count over the pooled
images, so the federated prior is exactly the one the pooled data would give.
The authors' code starts every count at one (add-one smoothing, so no class has
probability zero and the score's division is defined); `class_prior` adds that
once, at the server, after the merge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SMOOTHING = 1.0  # the authors' initial count per class


def prediction_counts(id_logits: Tensor, num_classes: int) -> np.ndarray:
    """A client's share: how many of its images the model assigns to each class."""
    predicted = id_logits.argmax(dim=-1).cpu().numpy()
    return np.bincount(predicted, minlength=num_classes).astype(np.int64)


def merge_counts(counts: Sequence[np.ndarray]) -> np.ndarray:
    """The server's merge: the clients' counts summed, class by class."""
    if not counts:
        raise ValueError("no client counts to merge")
    shapes = {np.shape(c) for c in counts}
    if len(shapes) != 1:
        raise ValueError(f"client counts disagree on the classes: shapes {shapes}")
    merged = np.sum(np.stack(counts), axis=0)
    if (merged < 0).any():
        raise ValueError("prediction counts cannot be negative")
    return merged.astype(np.int64)


def class_prior(counts: np.ndarray, smoothing: float = SMOOTHING) -> Tensor:
    """p(c) = (n_c + smoothing) / (sum n + C * smoothing), float32 `(C,)`."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum() + smoothing * len(counts)
    if total <= 0:
        raise ValueError("a prior needs counts or a positive smoothing")
    return torch.from_numpy((counts + smoothing) / total).to(torch.float32)


def uniform_prior(num_classes: int) -> Tensor:
    """p(c) = 1 / C: the score without the class-likelihood normalization."""
    return torch.full((num_classes,), 1.0 / num_classes)
