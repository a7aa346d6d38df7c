"""CLIPScope's comparison on the offline ID/OOD pairs, with an untrained image tower.

The numbers of an untrained tower mean nothing; checked here: the pairs are
what they say (sizes, classes), every method is scored on both pairs, the
federated prior is the smoothed pooled count of the clients' predictions, and
the picture is written.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spry.tasks.clipscope.detector import embed_texts, image_logits, label_space
from spry.tasks.clipscope.evaluation import (
    METHODS,
    compare,
    ood_pairs,
    plot_score_distributions,
)
from spry.tasks.clipscope.mining import mine_ood_labels
from spry.tasks.clipscope.prior import class_prior, prediction_counts
from spry.vision.clip import build_offline_clip_model
from spry.vision.images import FASHION_MNIST_DIR
from spry.vision.vit import ViTConfig

pytestmark = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR} is missing)",
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vit = ViTConfig(width=32, depth=2, heads=2, patch_size=7, mlp_ratio=2)
    return build_offline_clip_model(vit, "all-MiniLM-L6-v2").eval()


def test_pairs_hold_what_they_name():
    far, near = ood_pairs(max_images=0)
    assert far.name == "fashion-vs-digits" and len(far.id_names) == 10
    assert len(far.id_images) == 10000 and len(far.ood_images) == 360
    assert near.id_names == (
        "t-shirt",
        "trousers",
        "pullover",
        "dress",
        "coat",
        "sandal",
    )
    assert len(near.id_images) == 6000 and len(near.ood_images) == 4000
    assert len(near.prior_images) == 36000  # the ID classes' train images


def test_every_method_on_both_pairs(model, tmp_path):
    # Prepare
    words = ["jacket", "skirt", "galaxy", "algebra", "number", "volcano"]
    pairs = ood_pairs(max_images=60)
    results, mined_per_pair = [], []
    # Execute
    for pair in pairs:
        mined = mine_ood_labels(
            words,
            embed_texts(model, [f"the {w}" for w in words]),
            embed_texts(model, [f"a photo of a {n}" for n in pair.id_names]),
            num_nearest=2,
            num_farthest=2,
        )
        mined_per_pair.append(mined)
        results.append(compare(model, pair, mined, num_clients=4))
    plot_score_distributions(results, tmp_path / "scores.png")
    # Assert
    for pair, mined, result in zip(pairs, mined_per_pair, results, strict=True):
        assert tuple(result.metrics) == METHODS
        for values in result.metrics.values():
            assert 0.0 <= values["auroc"] <= 1.0 and 0.0 <= values["fpr95"] <= 1.0
        for method in METHODS:
            assert result.id_scores[method].shape == (60,)
            assert np.isfinite(result.ood_scores[method]).all()
        # the federated prior: 4 clients' counts summed = the pooled count
        space = label_space(model, pair.id_names, mined)
        pooled, _ = image_logits(model, pair.prior_images, space)
        np.testing.assert_allclose(
            result.prior,
            class_prior(prediction_counts(pooled, len(pair.id_names))).numpy(),
        )
    assert (tmp_path / "scores.png").stat().st_size > 10_000
