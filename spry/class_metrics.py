"""Classification scores that stay honest on imbalanced data.

Accuracy on a set with an 87% majority class says little: a model that always
answers the majority scores 87%. Macro-F1 (the unweighted mean of per-class F1)
and balanced accuracy (the unweighted mean of per-class recall) give every class
the same say, so they fall to 1/C-ish levels for a constant predictor. Both are
computed from one confusion matrix, as scikit-learn defines them (its
`f1_score(average="macro")` and `balanced_accuracy_score`), without needing it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    num_classes: int,
) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def class_scores(matrix: np.ndarray) -> dict[str, float]:
    """`macro-f1` and `balanced-accuracy` of a confusion matrix.

    A class absent from both the labels and the predictions is left out of both
    means (scikit-learn's labels-present convention); a class that is predicted
    but never true has recall undefined and is left out of balanced accuracy only.
    """
    true = matrix.sum(axis=1).astype(float)  # (C,)
    predicted = matrix.sum(axis=0).astype(float)  # (C,)
    hits = np.diag(matrix).astype(float)  # (C,)
    present = (true + predicted) > 0
    f1 = np.divide(2 * hits, true + predicted, out=np.zeros_like(hits), where=present)
    recall = np.divide(hits, true, out=np.zeros_like(hits), where=true > 0)
    return {
        "macro-f1": float(f1[present].mean()) if present.any() else 0.0,
        "balanced-accuracy": float(recall[true > 0].mean())
        if (true > 0).any()
        else 0.0,
    }
