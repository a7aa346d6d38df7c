"""Macro-F1 and balanced accuracy from a confusion matrix, as scikit-learn has them."""

from __future__ import annotations

import numpy as np
import pytest

from spry.class_metrics import class_scores, confusion


def test_a_majority_guess_scores_its_accuracy_but_not_its_class_scores():
    # 9 of class 0, 1 of class 1; the model always says 0: accuracy 90%
    labels, predictions = [0] * 9 + [1], [0] * 10

    scores = class_scores(confusion(labels, predictions, 2))

    # class 0: F1 = 2*9 / (9 + 10) ; class 1: F1 = 0 ; recalls 1 and 0
    assert scores["macro-f1"] == pytest.approx((18 / 19 + 0.0) / 2)
    assert scores["balanced-accuracy"] == pytest.approx(0.5)


def test_confusion_counts_true_rows_and_predicted_columns():
    matrix = confusion([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)

    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    scores = class_scores(matrix)
    # recalls 1/2, 1, 2/3 ; F1s 2/(2+2)=.5, 2/(1+2)=2/3, 4/(3+2)=.8
    assert scores["balanced-accuracy"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert scores["macro-f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_the_scores_equal_scikit_learns_on_random_predictions():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for classes in (2, 3, 6):
        for _ in range(20):
            labels = rng.integers(0, classes, 40)
            predictions = rng.integers(0, classes, 40)
            present = sorted(set(labels) | set(predictions))

            scores = class_scores(confusion(labels, predictions, classes))

            assert scores["macro-f1"] == pytest.approx(
                metrics.f1_score(labels, predictions, average="macro", labels=present)
            )
            assert scores["balanced-accuracy"] == pytest.approx(
                metrics.balanced_accuracy_score(labels, predictions)
            )
