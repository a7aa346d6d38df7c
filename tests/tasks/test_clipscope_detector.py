"""CLIPScope on a real text space: all-MiniLM-L6-v2, the offline CLIP's text tower.

The image tower here is untrained (the builder's own tests train one): what is
checked is the wiring (mining in the model's text space, WordNet candidates and
their cache, image logits into the scores), plus one semantic fact of the real
text tower: clothing nouns are nearer to Fashion-MNIST's classes than
astronomy and algebra are.
"""

from __future__ import annotations

import pytest
import torch

from spry.tasks.clipscope.detector import (
    embed_texts,
    image_logits,
    label_space,
    mine_from_wordnet,
)
from spry.tasks.clipscope.mining import mine_ood_labels
from spry.tasks.clipscope.prior import (
    class_prior,
    merge_counts,
    prediction_counts,
    uniform_prior,
)
from spry.tasks.clipscope.score import clipscope_score, msp_score, ood_metrics
from spry.tasks.clipscope.wordnet import WORDNET_DIR, key
from spry.vision.clip import build_offline_clip_model
from spry.vision.images import FASHION_CLASSES, load_image_set
from spry.vision.vit import ViTConfig

needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason=f"needs Debian's wordnet-base ({WORDNET_DIR}/data.noun is missing): "
    "apt-get install --no-install-recommends wordnet-base",
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vit = ViTConfig(width=32, depth=2, heads=2, patch_size=7, mlp_ratio=2)
    return build_offline_clip_model(vit, "all-MiniLM-L6-v2").eval()


def test_mining_in_the_real_text_space(model):
    # Prepare
    near = ["jacket", "sweater", "skirt", "blouse", "boot"]
    far = ["galaxy", "algebra", "theorem", "volcano", "photosynthesis"]
    candidates = [w for pair in zip(near, far, strict=True) for w in pair]
    features = embed_texts(model, [f"the {w}" for w in candidates])
    id_features = embed_texts(model, [f"a photo of a {n}" for n in FASHION_CLASSES])
    # Execute
    mined = mine_ood_labels(
        candidates, features, id_features, num_nearest=3, num_farthest=3
    )
    # Assert
    assert set(mined.nearest) <= set(near), mined
    assert set(mined.farthest) <= set(far), mined


@needs_wordnet
def test_mining_wordnet_caches_the_noun_features(model, tmp_path, monkeypatch):
    # Prepare
    monkeypatch.setenv("SPRY_CACHE", str(tmp_path))
    kwargs = {
        "num_nearest": 5,
        "num_farthest": 5,
        "max_candidates": 300,
        "seed": 0,
        "text_key": "all-MiniLM-L6-v2",
    }
    # Execute
    first = mine_from_wordnet(model, FASHION_CLASSES, **kwargs)
    cached = list((tmp_path / "clipscope-nouns").glob("*.pt"))
    again = mine_from_wordnet(model, FASHION_CLASSES, **kwargs)
    # Assert
    assert len(cached) == 1
    assert again.labels == first.labels
    assert torch.equal(again.distances, first.distances)
    assert len(set(first.labels)) == 10
    assert not {key(n) for n in first.labels} & {key(n) for n in FASHION_CLASSES}
    assert len(first.distances) == 300


def test_scores_on_image_logits(model):
    # Prepare: digits 0-4 as ID, 5-9 as (near) OOD, two "clients" of ID images
    digits = load_image_set("digits")
    images, labels = digits.test_images, digits.test_labels
    id_images, ood_images = images[labels < 5][:40], images[labels >= 5][:40]
    names = ["zero", "one", "two", "three", "four"]
    far_and_near = mine_ood_labels(
        ["five", "six", "banana", "moon"],
        embed_texts(model, ["the five", "the six", "the banana", "the moon"]),
        embed_texts(model, [f"a photo of a {n}" for n in names]),
        num_nearest=2,
        num_farthest=2,
    )
    space = label_space(model, names, far_and_near)
    # Execute
    id_logits, id_ood = image_logits(model, id_images, space)
    ood_logits, ood_ood = image_logits(model, ood_images, space)
    counts = merge_counts(
        [prediction_counts(id_logits[:20], 5), prediction_counts(id_logits[20:], 5)]
    )
    prior = class_prior(counts)
    id_scores = clipscope_score(id_logits, id_ood, prior)
    ood_scores = clipscope_score(ood_logits, ood_ood, prior)
    metrics = ood_metrics(id_scores.numpy(), ood_scores.numpy())
    # Assert
    assert id_logits.shape == (40, 5) and id_ood.shape == (40, 4)
    assert space.ood_features.shape == (4, 384)
    assert counts.sum() == 40
    assert torch.all(id_scores > 0) and torch.isfinite(id_scores).all()
    assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["fpr95"] <= 1.0
    # without mined labels and with a uniform prior the score is C * MSP
    no_labels = label_space(model, names)
    plain_logits, none = image_logits(model, id_images, no_labels)
    assert none.shape == (40, 0)
    torch.testing.assert_close(
        clipscope_score(plain_logits, none, uniform_prior(5)),
        5 * msp_score(plain_logits),
    )
