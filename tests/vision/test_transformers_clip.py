"""A real transformers `CLIPModel` behind the same interface as the offline CLIP.

No CLIP weights are reachable here, so the model is a tiny random `CLIPModel`
saved to a folder with a BERT tokenizer (MiniLM's, offline): what is checked is
the wrapper (loading from a path, image conversion, normalization, the logit
scale), not what a random CLIP knows.
"""

from __future__ import annotations

import pytest
import torch

from spry.vision.clip import (
    CLIP_MEAN,
    CLIP_STD,
    TransformersClip,
    VisionLanguageModel,
    load_transformers_clip,
)
from spry.vision.images import PIXEL_MEAN, PIXEL_STD


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from spry.models.classifier import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    config = CLIPConfig(
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_loads_a_clip_folder_behind_the_interface(clip_folder):
    # Prepare
    model = load_transformers_clip(str(clip_folder))
    images = torch.randn(3, 1, 28, 28)
    # Execute
    with torch.no_grad():
        image = model.image_features(images)
        text = model.text_features(["a photo of a bag", "a handwritten digit seven"])
        logits = model.logits(images, text)
    # Assert
    assert isinstance(model, VisionLanguageModel)
    assert image.shape == (3, 16) and text.shape == (2, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(model.logit_scale, model.model.logit_scale.exp())
    torch.testing.assert_close(logits, model.logit_scale * image @ text.T)


def test_grey_images_become_clip_input(clip_folder):
    # A uniform grey image of value v in [0, 1] becomes (v - mean_c) / std_c per
    # RGB channel at CLIP's input side
    model: TransformersClip = load_transformers_clip(str(clip_folder))
    value = 0.6
    images = torch.full((1, 1, 28, 28), (value - PIXEL_MEAN) / PIXEL_STD)
    prepared = model.prepare(images)
    assert prepared.shape == (1, 3, 32, 32)
    for c in range(3):
        expected = (value - CLIP_MEAN[c]) / CLIP_STD[c]
        torch.testing.assert_close(
            prepared[0, c], torch.full((32, 32), expected), rtol=1e-5, atol=1e-5
        )
