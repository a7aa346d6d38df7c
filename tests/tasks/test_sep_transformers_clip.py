"""SEP and CoOp on a transformers `CLIPModel`: the prompted walk, tangents, the task.

The CLIP is a tiny random `CLIPModel` with a real `CLIPTokenizer`, saved to a
folder (tests/vision/tiny_clip.py), the way a user's downloaded CLIP arrives;
`sep.clip=<folder>` loads it through the task. The offline CLIP's counterparts
are tests/tasks/test_sep_task.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spry.config import ConfigError, RunConfig, default_values
from spry.engines import make_engine
from spry.engines.forward import directional_derivative
from spry.models.classifier import ModelError
from spry.tasks import load_task
from spry.tasks.sep.classes import base_to_new_split, harmonic_mean
from spry.tasks.sep.prompted import PromptConfig, PromptedClip, prompt_loss
from spry.training import train_slice
from spry.vision.clip import (
    TransformersClip,
    build_offline_clip_model,
    load_transformers_clip,
)
from spry.vision.images import FASHION_MNIST_DIR
from spry.vision.vit import ViTConfig
from tests.vision.tiny_clip import (
    EMBED,
    IMAGE_LAYERS,
    IMAGE_WIDTH,
    TEXT_LAYERS,
    TEXT_WIDTH,
    save_tiny_clip,
)

needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(),
    reason=f"needs Debian's dataset-fashion-mnist ({FASHION_MNIST_DIR} is missing)",
)


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="module")
def clip(clip_folder) -> TransformersClip:
    return load_transformers_clip(str(clip_folder))


def _prompted(clip, method: str = "sep", **options) -> PromptedClip:
    split = base_to_new_split()
    frozen = [split.caption(c) for c in range(len(split.names))]
    config = PromptConfig(method=method, tfm_hidden=16, **options)
    torch.manual_seed(0)
    return PromptedClip(clip, split.names, frozen, config, split.base)


def _is_prompt_or_tfm(name: str) -> bool:
    return name in ("text_prompts", "visual_prompts") or name.startswith(
        ("text_fusion.", "visual_fusion.")
    )


def _batch(size: int = 6) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "images": torch.randn(size, 1, 28, 28, generator=generator),
        "labels": torch.arange(size) % 10,  # positions among the 10 base classes
    }


# -- the prompted CLIP -----------------------------------------------------------------


@pytest.fixture(scope="module")
def offline():
    """A random offline CLIP (2-layer ViT) under the real locked MiniLM."""
    torch.manual_seed(0)
    vit = ViTConfig(width=32, depth=2, heads=2, patch_size=7)
    return build_offline_clip_model(vit, "all-MiniLM-L6-v2").eval()


@torch.no_grad()
@pytest.mark.parametrize("which", ["transformers", "offline"])
def test_coop_from_a_photo_of_a_is_clips_own_caption_feature(which, request):
    # Prepare: CoOp's context starts as the embeddings of "a photo of a"
    clip = request.getfixturevalue("clip" if which == "transformers" else which)
    model = _prompted(clip, method="coop")
    split = base_to_new_split()
    classes = torch.arange(len(split.names))
    # Execute: the layer-wise walk with the context vectors swapped in
    prompted = model.text_features(classes)
    # Assert: exactly CLIPModel's feature of the written caption, every class
    captions = [f"a photo of a {name}" for name in split.names]
    torch.testing.assert_close(prompted, clip.text_features(captions))
    images = _batch()["images"]
    expected = clip.image_features(images)
    torch.testing.assert_close(model.image_features(images), expected)


@torch.no_grad()
def test_moving_the_context_moves_the_text_feature(clip):
    # the swapped-in vectors are what the walk reads (not the ids' embeddings)
    model = _prompted(clip, method="coop")
    classes = torch.tensor([0, 9])
    before = model.text_features(classes)
    # (not a constant: every layer norm removes a shift along all dims)
    model.text_prompts.add_(torch.randn(model.text_prompts.shape))
    assert not torch.allclose(model.text_features(classes), before, atol=1e-3)


def test_sep_prompts_and_one_tfm_per_layer_are_sized_by_the_towers(clip):
    # Prepare
    model = _prompted(clip)
    batch = _batch()
    # Execute
    with torch.no_grad():
        image, text, image_frozen, text_frozen = model.features(
            batch["images"], model.train_classes
        )
        logits = model(batch["images"], torch.arange(20))
    # Assert: K = 4 ("a photo of a" in CLIP's vocabulary), M = 4 visual prompts
    assert model.text_prompts.shape == (4, TEXT_WIDTH)
    assert model.visual_prompts.shape == (4, IMAGE_WIDTH)
    assert len(model.text_fusion) == TEXT_LAYERS - 1
    assert len(model.visual_fusion) == IMAGE_LAYERS - 1
    assert model.text_fusion[0].norm1.normalized_shape == (TEXT_WIDTH,)
    assert model.visual_fusion[0].norm1.normalized_shape == (IMAGE_WIDTH,)
    assert image.shape == image_frozen.shape == (6, EMBED)
    assert text.shape == text_frozen.shape == (10, EMBED)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(10))
    assert logits.shape == (6, 20)
    names = {n for n, _ in model.named_parameters() if not n.startswith("clip.")}
    assert names and all(_is_prompt_or_tfm(n) for n in names)


def test_sep_visual_prompts_go_through_clips_pre_layernorm(clip):
    # SEP's code appends its prompts after the positions and before ln_pre:
    # scaling the prompts leaves the layer input (hence the features) alone
    # only because the pre-layernorm normalizes them per token
    model = _prompted(clip)
    images = _batch(2)["images"]
    with torch.no_grad():
        before = model.image_features(images)
        model.visual_prompts.mul_(3.0)
        after = model.image_features(images)
        model.visual_prompts.mul_(-1.0)
        flipped = model.image_features(images)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(flipped, before, atol=1e-3)


def test_forward_mode_tangents_reach_only_prompts_and_tfms(clip):
    # Prepare: a tangent on every trainable tensor and on nothing else
    model = _prompted(clip)
    batch = _batch()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(params) == {
        n for n, _ in model.named_parameters() if not n.startswith("clip.")
    }
    generator = torch.Generator().manual_seed(0)
    tangents = {n: torch.randn(p.shape, generator=generator) for n, p in params.items()}
    # Execute: the project's forward-mode pass
    loss, derivative, logits = directional_derivative(
        model, prompt_loss, batch, params, tangents
    )
    # Assert: backprop's gradient along the same tangent
    model.zero_grad(set_to_none=True)
    reference, _ = prompt_loss(model, batch)
    reference.backward()
    expected = sum((params[n].grad * tangents[n]).sum() for n in params)
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-5, atol=1e-6)
    assert float(derivative) == pytest.approx(float(expected), rel=1e-3, abs=1e-5)
    assert logits.shape == (6, 10)
    # every prompt and TFM tensor gets a gradient, no CLIP tensor does
    assert all(params[n].grad is not None for n in params)
    assert params["text_prompts"].grad.abs().sum() > 0
    assert params["visual_prompts"].grad.abs().sum() > 0
    assert params["text_fusion.1.mix_attention"].grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())
    model.zero_grad(set_to_none=True)


# -- the task, sep.clip=<folder> -------------------------------------------------------


def _task(clip_folder, **extra):
    cfg = RunConfig.from_run_config(
        {
            **default_values(),
            "task": "sep",
            "num-clients": 4,
            "clients-per-round": 2,
            "eval-clients-per-round": 2,
            "batch-size": 4,
            "sep.clip": str(clip_folder),
            "sep.shots": 8,
            "sep.test-per-class": 3,
            "sep.tfm-hidden": 16,
            **extra,
        }
    )
    return load_task(cfg)


@needs_fashion_mnist
def test_sep_task_loads_the_clip_folder_and_scores_base_to_new(clip_folder):
    # Prepare
    task = _task(clip_folder)
    # Execute
    trainable = task.model()
    central = task.evaluate(trainable, task.test_data())
    # Assert: the folder's CLIP, frozen; only prompts and TFMs are shared
    model = trainable.model
    assert isinstance(model.clip, TransformersClip)
    assert model.text_prompts.shape == (4, TEXT_WIDTH)
    assert all(_is_prompt_or_tfm(n) for n in trainable.names)
    assert not any(p.requires_grad for p in model.clip.parameters())
    assert central["num-examples"] == 60  # 3 images x 20 classes
    assert central["harmonic-mean"] == pytest.approx(
        harmonic_mean(central["base-accuracy"], central["new-accuracy"])
    )
    for key in ("base-accuracy", "new-accuracy", "harmonic-mean"):
        assert 0.0 <= central[key] <= 1.0


@needs_fashion_mnist
def test_a_forward_step_on_the_clip_folder_changes_only_prompts_and_tfms(
    clip_folder,
):
    # Prepare
    task = _task(clip_folder)
    trainable = task.model()
    before = {k: v.clone() for k, v in trainable.model.state_dict().items()}
    batch = next(iter(task.train_batches(trainable, 0, 1, 0)))
    # Execute: one Spry client's local step
    report = train_slice(
        trainable,
        list(trainable.names),
        lambda epoch: [batch],
        loss=task.loss,
        engine=make_engine("forward", num_tangents=2),
        cfg=task.run.client,
        seed=0,
        server_round=1,
        partition_id=0,
    )
    # Assert
    after = trainable.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert report.steps == 1
    assert {"text_prompts", "visual_prompts"} <= changed
    assert all(_is_prompt_or_tfm(k) for k in changed)


@needs_fashion_mnist
def test_sep_images_reach_the_clip_at_its_side(clip_folder):
    # the offline sets' 28x28 grey images, resized and normalized for CLIP
    task = _task(clip_folder, **{"sep.method": "coop"})
    trainable = task.model()
    images = next(iter(task.train_batches(trainable, 0, 1, 0)))["images"]
    clip = trainable.model.clip
    assert images.shape[-2:] == (28, 28)
    with torch.no_grad():
        expected = F.normalize(
            clip.model.get_image_features(
                pixel_values=clip.prepare(images)
            ).pooler_output,
            dim=-1,
        )
        torch.testing.assert_close(trainable.model.image_features(images), expected)


def test_the_clip_option_is_checked(clip_folder, tmp_path):
    with pytest.raises(ConfigError, match="clip"):
        _task(clip_folder, **{"sep.clip": " "})
    task = _task(tmp_path / "no-clip-here")
    with pytest.raises(ModelError, match="no CLIP folder"):
        task.model()


def test_sep_and_clipscope_share_the_clip_option(clip_folder):
    from spry.tasks.clipscope.task import ClipscopeOptions
    from spry.tasks.offline_clip import OfflineClipOptions
    from spry.tasks.sep.task import SepOptions

    for options in (SepOptions, ClipscopeOptions):
        assert issubclass(options, OfflineClipOptions)
        assert options().clip == "offline"
    loaded = SepOptions(clip=str(clip_folder)).vision_language_model()
    assert isinstance(loaded, TransformersClip)
    assert loaded.image_size == 32
