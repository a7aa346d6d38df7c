"""The offline CLIP: its image tower, its loss, its build and cache, its CLI.

The builder runs at a tiny size (300 images, a 2-layer 32-wide ViT, 2 epochs):
seconds, on the real locked all-MiniLM-L6-v2 and the real offline image sets.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from spry.vision import build
from spry.vision.build import OfflineClipConfig, build_offline_clip, cache_dir
from spry.vision.contrastive import contrastive_loss
from spry.vision.images import FASHION_MNIST_DIR, IMAGE_SIZE, load_image_set
from spry.vision.vit import VisionTransformer, ViTConfig

TINY_VIT = ViTConfig(width=32, depth=2, heads=2, patch_size=7, mlp_ratio=2)
TINY = OfflineClipConfig(
    vit=TINY_VIT,
    max_train_per_set=200,
    max_test_per_set=100,
    epochs=2,
    batch_size=32,
    lr=3e-3,
)
needs_fashion = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR} is missing): "
    "apt-get install --no-install-recommends dataset-fashion-mnist",
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spry-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPRY_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def built(cache):
    return build_offline_clip(TINY, progress=False)


# -- the image tower ------------------------------------------------------------------


def test_vit_keeps_every_layer_tokens():
    # Prepare
    vit = VisionTransformer(TINY_VIT)
    images = torch.randn(3, 1, IMAGE_SIZE, IMAGE_SIZE)
    # Execute
    out = vit(images)
    # Assert: input tokens + one per layer, CLS first, 4x4 patches of 7 pixels
    assert out.embeds.shape == (3, 384)
    assert len(out.hidden_states) == TINY_VIT.depth + 1
    for tokens in out.hidden_states:
        assert tokens.shape == (3, 1 + 16, 32)
    assert torch.equal(vit.pool(out.hidden_states[-1]), out.embeds)


def test_vit_blocks_take_extra_tokens():
    # A prompt method appends learnable tokens between layers: any token count works
    vit = VisionTransformer(TINY_VIT)
    tokens = vit.embed(torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE))
    prompts = torch.randn(2, 4, 32)
    out = vit.blocks[0](torch.cat([tokens, prompts], dim=1))
    assert out.shape == (2, 17 + 4, 32)


def test_vit_runs_under_forward_mode_ad():
    # Prepare: a directional derivative of the embedding along one weight's tangent
    vit = VisionTransformer(TINY_VIT).eval()
    images = torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    name = "blocks.0.attn.qkv.weight"
    weight = dict(vit.named_parameters())[name].detach()
    tangent = torch.randn_like(weight)

    def embed(w):
        return torch.func.functional_call(vit, {name: w}, (images,)).embeds

    # Execute
    with torch.no_grad():
        _, jvp = torch.func.jvp(embed, (weight,), (tangent,))
    eps = 1e-3
    with torch.no_grad():
        finite = (embed(weight + eps * tangent) - embed(weight - eps * tangent)) / (
            2 * eps
        )
    # Assert
    torch.testing.assert_close(jvp, finite, rtol=1e-2, atol=1e-3)


def test_vit_config_rejects_bad_shapes():
    with pytest.raises(ValueError, match="patch_size"):
        ViTConfig(patch_size=5)
    with pytest.raises(ValueError, match="heads"):
        ViTConfig(width=30, heads=4)


# -- the loss -------------------------------------------------------------------------


def test_loss_is_clip_loss_when_each_image_has_its_own_caption():
    # Prepare: one image per class, so the positives are the diagonal (CLIP's case)
    images = F.normalize(torch.randn(5, 8), dim=-1)
    texts = F.normalize(torch.randn(5, 8), dim=-1)
    labels = torch.arange(5)
    scale = torch.tensor(10.0)
    logits = scale * images @ texts.T
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    # Execute / Assert
    torch.testing.assert_close(contrastive_loss(images, texts, labels, scale), expected)


def test_loss_spreads_a_caption_over_its_class_images():
    # Prepare: 2 classes, images 0 and 2 of class 0, image 1 of class 1; class 2 absent
    images = F.normalize(torch.randn(3, 4), dim=-1)
    texts = F.normalize(torch.randn(3, 4), dim=-1)
    labels = torch.tensor([0, 1, 0])
    scale = torch.tensor(3.0)
    logits = scale * images @ texts.T
    image_to_text = F.cross_entropy(logits, labels)
    col = logits.T.log_softmax(-1)
    text_to_image = -((col[0, 0] + col[0, 2]) / 2 + col[1, 1]) / 2
    # Execute / Assert
    torch.testing.assert_close(
        contrastive_loss(images, texts, labels, scale),
        (image_to_text + text_to_image) / 2,
    )


# -- the image sets -------------------------------------------------------------------


def test_digits_are_upsampled_and_normalized():
    digits = load_image_set("digits")
    assert digits.train_images.shape[1:] == (1, IMAGE_SIZE, IMAGE_SIZE)
    assert len(digits.train_images) + len(digits.test_images) == 1797
    assert len(digits.test_images) == 360  # the fixed 20%
    assert set(digits.test_labels.tolist()) == set(range(10))
    assert abs(float(digits.train_images.mean())) < 1.5  # normalized, not [0, 255]


@needs_fashion
def test_fashion_mnist_reads_debian_idx_files():
    fashion = load_image_set("fashion-mnist")
    assert fashion.train_images.shape == (60000, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert fashion.test_images.shape == (10000, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert fashion.class_names[9] == "ankle boot"
    # normalized with its own statistics: mean ~0, std ~1
    assert abs(float(fashion.train_images[:5000].mean())) < 0.05
    assert abs(float(fashion.train_images[:5000].std()) - 1.0) < 0.05


# -- the build ------------------------------------------------------------------------


@needs_fashion
def test_build_trains_and_reports(built):
    model, report = built
    assert not report.cached
    # the loss goes down over training (averaged by tenths of the steps)
    assert report.losses[-1] < report.losses[0] - 0.2, report.losses
    assert set(report.accuracy) == {"fashion-mnist", "digits"}
    assert report.test_images == {"fashion-mnist": 100, "digits": 100}
    assert all(0.0 <= acc <= 1.0 for acc in report.accuracy.values())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.trained_parameters == trained
    assert report.total_parameters > 22_000_000  # with the locked MiniLM
    assert report.size_bytes > 4 * trained  # float32 weights, plus config and report


@needs_fashion
def test_build_leaves_the_text_tower_as_shipped(built):
    from spry.vision.clip import load_sentence_tower

    model, _ = built
    fresh = load_sentence_tower(TINY.text_model).encoder.state_dict()
    trained = model.text.encoder.state_dict()
    assert fresh.keys() == trained.keys()
    for name, value in fresh.items():
        assert torch.equal(value, trained[name]), name
    assert not any(p.requires_grad for p in model.text.parameters())
    assert all(p.requires_grad for p in model.vision.parameters())


@needs_fashion
def test_cache_round_trip(built, cache):
    # Prepare
    model, report = built
    images = load_image_set("digits").test_images[:8]
    # Execute: a second build with the same config loads, it does not train
    again, loaded = build_offline_clip(TINY, progress=False)
    # Assert
    assert loaded.cached
    assert loaded.path == report.path == str(cache_dir(TINY))
    assert cache_dir(TINY).parent.parent == cache
    assert loaded.accuracy == report.accuracy
    assert loaded.build_seconds == report.build_seconds
    assert loaded.load_seconds < report.build_seconds
    with torch.no_grad():
        torch.testing.assert_close(
            again.image_features(images), model.image_features(images)
        )
    assert float(again.logit_scale.detach()) == pytest.approx(
        float(model.logit_scale.detach())
    )
    # another config is another entry
    other = OfflineClipConfig(**{**TINY.__dict__, "seed": 1})
    assert cache_dir(other) != cache_dir(TINY)


@needs_fashion
def test_features_are_unit_norm_and_logits_scaled(built):
    model, _ = built
    images = load_image_set("digits").test_images[:4]
    with torch.no_grad():
        image = model.image_features(images)
        text = model.text_features(["a photo of a bag", "a handwritten digit seven"])
        logits = model.logits(images, text)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(logits, model.logit_scale * image @ text.T)
    assert float(model.logit_scale.detach()) == pytest.approx(
        math.exp(float(model.log_scale.detach())), rel=1e-6
    )


@needs_fashion
def test_cli_prints_the_report(built, capsys):
    # The same tiny config through the command line: loaded from the cache
    args = [
        "--max-train-per-set=200",
        "--max-test-per-set=100",
        "--epochs=2",
        "--batch-size=32",
        "--lr=0.003",
        "--vit-width=32",
        "--vit-depth=2",
        "--vit-heads=2",
        "--vit-patch-size=7",
        "--vit-mlp-ratio=2",
        "--no-progress",
        "--json",
    ]
    assert build.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["cached"] is True
    assert report["accuracy"] == built[1].accuracy


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match="image_sets"):
        OfflineClipConfig(image_sets=("cifar",))
    with pytest.raises(ValueError, match="epochs"):
        OfflineClipConfig(epochs=0)
    assert build.main(["--image-sets=cifar", "--no-progress"]) == 2


@needs_fashion
def test_held_out_classes_are_never_trained_on(built):
    # Prepare
    model, _ = built
    config = OfflineClipConfig(
        **{**TINY.__dict__, "held_out_classes": ("shirt", "bag")}
    )
    sets = [load_image_set(name) for name in config.image_sets]
    # Execute
    data = build.training_data(model, config, sets, torch.Generator().manual_seed(0))
    # Assert: no shirt (6) or bag (8) image, 8 + 10 classes, 8 + 10 captions
    fashion_labels = sets[0].train_labels[data.indices[0]]
    assert not torch.isin(fashion_labels, torch.tensor([6, 8])).any()
    assert len(data.indices[0]) == 200
    assert torch.cat(data.labels).unique().tolist() == list(range(18))
    assert [len(c) for c in data.captions] == [8, 10]
    # the captions left are the other classes' own
    all_fashion = build.class_text_features(model, "fashion-mnist")
    kept = [c for c in range(10) if c not in (6, 8)]
    torch.testing.assert_close(data.captions[0], all_fashion[kept])


@needs_fashion
def test_report_scores_the_never_trained_classes(cache):
    config = OfflineClipConfig(
        **{**TINY.__dict__, "epochs": 1, "held_out_classes": ("shirt", "bag")}
    )
    _, report = build_offline_clip(config, progress=False)
    assert set(report.unseen_accuracy) == {"fashion-mnist"}
    assert 0.0 <= report.unseen_accuracy["fashion-mnist"] <= 1.0
    assert any("never-trained" in line for line in report.lines())
    with pytest.raises(ValueError, match="held_out_classes"):
        OfflineClipConfig(held_out_classes=("unicorn",))


def test_text_tower_layer_by_layer_equals_its_forward():
    # The parts a prompt method drives by hand give the tower's own result
    from spry.vision.clip import load_sentence_tower

    tower = load_sentence_tower("all-MiniLM-L6-v2")
    texts = ["a photo of a bag", "the number seven, written by hand"]
    with torch.no_grad():
        expected = tower(texts)
        hidden, mask = tower.embed(texts)
        states = [hidden]
        for index in range(len(tower.layers)):
            hidden = tower.run_layer(index, hidden, mask)
            states.append(hidden)
        pooled = tower.pool(hidden, mask)
        # two appended tokens, attended to, pass through a layer
        extra = torch.cat([states[0], torch.zeros(2, 2, states[0].shape[-1])], 1)
        widened = tower.run_layer(0, extra, torch.cat([mask, torch.ones(2, 2)], 1))
    assert len(states) == len(expected.hidden_states) == 7
    for mine, theirs in zip(states, expected.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pooled, expected.embeds, rtol=1e-5, atol=1e-5)
    assert widened.shape == (2, states[0].shape[1] + 2, 384)


@needs_fashion
def test_a_cache_entry_that_does_not_fit_is_refused(cache):
    config = OfflineClipConfig(**{**TINY.__dict__, "epochs": 1, "seed": 5})
    model, _ = build_offline_clip(config, progress=False)
    weights = cache_dir(config) / build.WEIGHTS_FILE
    state = torch.load(weights, weights_only=True)
    state["vision.extra"] = torch.zeros(1)
    torch.save(state, weights)
    with pytest.raises(RuntimeError, match="vision.extra"):
        build_offline_clip(config, progress=False)
