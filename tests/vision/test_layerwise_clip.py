"""The layer-wise walk through both CLIPs equals their own whole-tower features.

`LayerwiseClip` is what SEP and CoOp drive (spry/tasks/sep/prompted.py): if
embedding, each layer and the pooling, called one after another with nothing
inserted, give exactly `CLIPModel.get_text_features` / `get_image_features`
(and the offline CLIP's own features), then the walk is CLIP's. The real CLIP
is a tiny random `CLIPModel` with a real `CLIPTokenizer` (tests/vision/tiny_clip.py);
the offline one a random 2-layer ViT under the real locked all-MiniLM-L6-v2.
"""

from __future__ import annotations

import pytest
import torch

from spry.models.classifier import ModelError
from spry.vision.clip import (
    LayerwiseClip,
    TransformersClip,
    build_offline_clip_model,
    causal_mask,
    eos_position,
    load_transformers_clip,
)
from spry.vision.vit import ViTConfig

from .tiny_clip import IMAGE_SIZE, save_tiny_clip

TEXTS = ["a photo of a bag", "a photo of a ankle boot", "seven"]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="module")
def real(clip_folder) -> TransformersClip:
    return load_transformers_clip(str(clip_folder))


@pytest.fixture(scope="module")
def offline():
    vit = ViTConfig(width=32, depth=2, heads=2, patch_size=7)
    torch.manual_seed(0)
    return build_offline_clip_model(vit, "all-MiniLM-L6-v2").eval()


def _walk_text(clip: LayerwiseClip, texts: list[str]) -> torch.Tensor:
    ids, attention = clip.tokenize_prompts(texts, min_length=1)
    hidden = clip.text_input(clip.word_embeddings(ids))
    for index in range(clip.text_depth):
        hidden = clip.text_layer(index, hidden, attention)
    return clip.text_pool(hidden, ids, attention)


def _walk_image(clip: LayerwiseClip, images: torch.Tensor) -> torch.Tensor:
    tokens = clip.image_input(clip.image_tokens(images))
    for index in range(clip.image_depth):
        tokens = clip.image_layer(index, tokens)
    return clip.image_pool(tokens)


@torch.no_grad()
def test_transformers_walk_is_clips_own_text_and_image_features(real):
    # Prepare: the same ids (padded to the tower's 40 positions) for both
    ids, attention = real.tokenize_prompts(TEXTS, min_length=1)
    images = torch.randn(3, 1, 28, 28)
    # Execute
    text = _walk_text(real, TEXTS)
    image = _walk_image(real, images)
    # Assert: CLIPModel's features on the same inputs, to float precision
    model = real.model
    expected_text = model.get_text_features(input_ids=ids, attention_mask=attention)
    expected_image = model.get_image_features(pixel_values=real.prepare(images))
    torch.testing.assert_close(text, expected_text.pooler_output)
    torch.testing.assert_close(image, expected_image.pooler_output)
    torch.testing.assert_close(
        torch.nn.functional.normalize(text, dim=-1), real.text_features(TEXTS)
    )
    assert text.shape == (3, 16) and image.shape == (3, 16)


@torch.no_grad()
def test_offline_walk_is_its_own_text_and_image_features(offline):
    images = torch.randn(3, 1, 28, 28)
    text = torch.nn.functional.normalize(_walk_text(offline, TEXTS), dim=-1)
    image = torch.nn.functional.normalize(_walk_image(offline, images), dim=-1)
    torch.testing.assert_close(text, offline.text_features(TEXTS))
    torch.testing.assert_close(image, offline.image_features(images))


def test_both_clips_describe_their_towers(real, offline):
    # the widths and depths the prompt learner sizes its prompts and TFMs by
    assert (real.text_width, real.text_depth) == (32, 3)
    assert (real.image_width, real.image_depth) == (48, 2)
    assert (offline.text_width, offline.text_depth) == (384, 6)
    assert (offline.image_width, offline.image_depth) == (32, 2)
    # CLS + (32 / 8)^2 patches at CLIP's side; CLS + (28 / 7)^2 offline
    images = torch.randn(2, 1, 28, 28)
    assert real.image_tokens(images).shape == (2, 1 + 16, 48)
    assert offline.image_tokens(images).shape == (2, 1 + 16, 32)
    assert real.prepare(images).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_context_init_is_the_words_own_embeddings(real, offline):
    # CoOp's init: "a photo of a" is 4 tokens in both vocabularies
    for clip, table in (
        (real, real.model.text_model.embeddings.token_embedding.weight),
        (offline, offline.text.encoder.embeddings.word_embeddings.weight),
    ):
        context = clip.context_embeddings("a photo of a")
        ids = clip.tokenize_prompts(["a photo of a"], 1)[0][0, 1:5]
        assert context.shape == (4, clip.text_width)
        torch.testing.assert_close(context, table[ids])
        assert not context.requires_grad


def test_prompts_pad_to_the_tower_and_refuse_more_than_its_positions(real):
    ids, attention = real.tokenize_prompts(["a photo of a bag"], min_length=9)
    assert ids.shape == attention.shape == (1, 40)  # the text tower's positions
    end = real.tokenizer.eos_token_id
    assert ids[0, 0] == real.tokenizer.bos_token_id
    assert ids[0, int(attention.sum()) - 1] == end and (ids[0, 17:] == end).all()
    with pytest.raises(ValueError, match="positions for 40"):
        real.tokenize_prompts(["a bag"], min_length=41)


def test_causal_mask_blocks_later_tokens_and_padding():
    attention = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mask = causal_mask(attention, torch.float32)
    blocked = mask == torch.finfo(torch.float32).min
    assert mask.shape == (2, 1, 3, 3)
    assert blocked[0, 0].tolist() == [
        [False, True, True],
        [False, False, True],
        [False, False, False],
    ]
    assert blocked[1, 0, 2].tolist() == [False, False, True]  # padding key
    assert (mask[~blocked] == 0).all()


def test_eos_position_follows_transformers_rule():
    # current configs: the first end token (padding may repeat it)
    ids = torch.tensor([[5, 7, 9, 9, 9], [5, 9, 9, 9, 9]])
    assert eos_position(ids, 9).tolist() == [2, 1]
    # configs from before transformers' fix say 2: the largest id
    ids = torch.tensor([[49406, 320, 49407, 0], [49406, 49407, 0, 0]])
    assert eos_position(ids, 2).tolist() == [2, 1]


def test_a_missing_clip_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="no CLIP folder"):
        load_transformers_clip(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="from that folder"):
        load_transformers_clip(str(empty))
    # a hub name with HF_HUB_OFFLINE set: the cache only, never a download
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set"):
        load_transformers_clip("spry-tests/no-such-clip")


def test_a_half_precision_checkpoint_loads_in_float32(clip_folder, tmp_path):
    # forward-mode prompt tuning runs in float32 whatever the checkpoint holds
    from transformers import AutoTokenizer, CLIPModel

    half = tmp_path / "half"
    CLIPModel.from_pretrained(clip_folder).half().save_pretrained(half)
    AutoTokenizer.from_pretrained(clip_folder).save_pretrained(half)
    loaded = load_transformers_clip(str(half))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.float32}
    assert next(CLIPModel.from_pretrained(half).parameters()).dtype == torch.float16
