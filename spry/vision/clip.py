"""One vision-language model interface, two sources: the offline CLIP and a real one.

Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision" (CLIP), 2021. Paper: arxiv.org/abs/2103.00020

What prompt tuning (SEP, CoOp) and zero-shot OOD detection (CLIPScope) need of a
CLIP is small: L2-normalized image features, L2-normalized text features, and the
logit scale that turns their cosines into softmax logits. `VisionLanguageModel`
is that interface; `logits` is CLIP's `scale * image @ text.T`.

- `OfflineClip` is the model this project builds itself (`spry.vision.build`):
  the real, locked all-MiniLM-L6-v2 sentence encoder as its text tower
  (mean-pooled, as sentence-transformers pools it) and a small ViT image tower
  trained to meet it (Zhai et al., "LiT: Zero-Shot Transfer with Locked-image text
  Tuning", arxiv.org/abs/2111.07991, with the towers' roles swapped: here the
  *text* side is locked, so the model keeps the language a pretrained encoder
  knows: any WordNet noun, any new class name).
- `TransformersClip` wraps a transformers `CLIPModel` (a hub name or a local
  folder) when a user has real CLIP weights; images arrive in this package's
  normalized 28x28 grey form and are converted to what CLIP expects.

Both towers keep their per-layer token sequences reachable (`VisionOutput`,
`TextOutput`) for methods that insert tokens at every layer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .images import PIXEL_MEAN, PIXEL_STD
from .vit import VisionTransformer, ViTConfig

# OpenAI CLIP's RGB normalization (the statistics its image towers were trained on).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
INITIAL_TEMPERATURE = 0.07  # CLIP's: logit scale starts at 1 / 0.07
MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned scale here


class VisionLanguageModel(nn.Module, ABC):
    """Normalized image and text features in one space, and CLIP's logit scale."""

    @abstractmethod
    def image_features(self, images: Tensor) -> Tensor:
        """`(B, 1, 28, 28)` normalized images -> `(B, D)` unit-norm features."""

    @abstractmethod
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """`N` texts -> `(N, D)` unit-norm features."""

    @property
    @abstractmethod
    def logit_scale(self) -> Tensor:
        """The scalar multiplying cosines into logits (CLIP's exp(t))."""

    def logits(self, images: Tensor, text_features: Tensor) -> Tensor:
        """CLIP's image-to-text logits, `(B, N)`: scale * cos(image, text)."""
        return self.logit_scale * self.image_features(images) @ text_features.T


class TextOutput(NamedTuple):
    """The text tower's sentence embeddings and every layer's tokens."""

    embeds: Tensor  # (N, D), not normalized
    hidden_states: tuple[Tensor, ...]  # layers + 1 tensors (N, T, D): embeddings first
    attention_mask: Tensor  # (N, T)


class SentenceTextTower(nn.Module):
    """A BERT-style sentence encoder, mean-pooled over its tokens.

    Mean pooling over the attention mask is how sentence-transformers pools
    all-MiniLM-L6-v2 (its `1_Pooling/config.json`: `pooling_mode_mean_tokens`).
    """

    def __init__(self, encoder: nn.Module, tokenizer: Any, max_length: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def width(self) -> int:
        return int(self.encoder.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        device = next(self.encoder.parameters()).device
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v.to(device) for k, v in batch.items()}

    def forward(self, texts: Sequence[str]) -> TextOutput:
        batch = self.tokenize(texts)
        out = self.encoder(**batch, output_hidden_states=True)
        pooled = self.pool(out.last_hidden_state, batch["attention_mask"])
        return TextOutput(pooled, tuple(out.hidden_states), batch["attention_mask"])

    # -- the parts, for methods that insert tokens between layers (SEP, CoOp) --------

    def embed(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """`(N, T, D)` token embeddings (the first layer's input), `(N, T)` mask."""
        batch = self.tokenize(texts)
        hidden = self.encoder.embeddings(
            input_ids=batch["input_ids"], token_type_ids=batch.get("token_type_ids")
        )
        return hidden, batch["attention_mask"]

    @property
    def layers(self) -> nn.ModuleList:
        """The encoder's transformer layers, in order."""
        return self.encoder.encoder.layer  # type: ignore[no-any-return]

    def run_layer(self, index: int, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """Layer `index` on any token sequence `(N, T', D)`.

        `attention_mask` is `(N, T')`, 1 where a token is attended to: tokens a
        method appends get 1s. It becomes BERT's additive mask here.
        """
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * (
            torch.finfo(hidden.dtype).min
        )  # (N, 1, 1, T')
        out = self.layers[index](hidden, attention_mask=additive)
        return out[0] if isinstance(out, tuple) else out

    @staticmethod
    def pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """The mean of the attended tokens' last states, `(N, D)`."""
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def load_sentence_tower(name: str, max_length: int = 32) -> SentenceTextTower:
    """The named sentence encoder (offline all-MiniLM-L6-v2 by default), locked.

    Eager attention: the default `sdpa` kernels on CPU have no forward-mode AD
    rule (RECIPES.md), and prompt methods differentiate through this tower.
    """
    import transformers
    from transformers import AutoModel, AutoTokenizer

    from ..models.classifier import resolve_model_path

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = resolve_model_path(name)
    encoder = AutoModel.from_pretrained(path, attn_implementation="eager")
    if getattr(encoder, "pooler", None) is not None:
        encoder.pooler = None  # mean pooling reads the last hidden states only
    encoder.eval().requires_grad_(False)
    return SentenceTextTower(encoder, AutoTokenizer.from_pretrained(path), max_length)


class OfflineClip(VisionLanguageModel):
    """The locked sentence encoder and a ViT image tower trained to meet it.

    The text tower's mean-pooled embedding *is* the text feature (normalized; no
    text projection), so the text space is the pretrained encoder's own and
    words the image sets never named keep their meaning. The image tower
    projects into that space (`ViTConfig.embed_dim` = the encoder's width).
    """

    def __init__(self, vision: VisionTransformer, text: SentenceTextTower) -> None:
        super().__init__()
        if vision.config.embed_dim != text.width:
            raise ValueError(
                f"image tower embeds into {vision.config.embed_dim} dims, the text "
                f"tower into {text.width}: set ViTConfig.embed_dim={text.width}"
            )
        self.vision = vision
        self.text = text
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE)))

    def image_features(self, images: Tensor) -> Tensor:
        return F.normalize(self.vision(images).embeds, dim=-1)

    def text_features(self, texts: Sequence[str]) -> Tensor:
        return F.normalize(self.text(texts).embeds, dim=-1)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def trainable_state(self) -> dict[str, Tensor]:
        """What the build trains and the cache stores: image tower and scale."""
        state = {f"vision.{k}": v for k, v in self.vision.state_dict().items()}
        state["log_scale"] = self.log_scale.detach()
        return state


def build_offline_clip_model(
    vit: ViTConfig, text_model: str, max_length: int = 32
) -> OfflineClip:
    """An untrained offline CLIP: a random ViT and the locked named text tower."""
    return OfflineClip(
        VisionTransformer(vit), load_sentence_tower(text_model, max_length)
    )


class TransformersClip(VisionLanguageModel):
    """A transformers `CLIPModel` behind the same interface.

    Images come as this package's normalized grey `(B, 1, 28, 28)` tensors; they
    are un-normalized, repeated to RGB, resized (bilinear) to the vision
    tower's input side and normalized with CLIP's statistics. No torchvision
    and no image processor are involved.
    """

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1))

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    def prepare(self, images: Tensor) -> Tensor:
        """Normalized grey images -> CLIP's normalized RGB input."""
        pixels = (images * PIXEL_STD + PIXEL_MEAN).clamp(0.0, 1.0)
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        side = self.image_size
        if pixels.shape[-2:] != (side, side):
            pixels = F.interpolate(
                pixels, size=(side, side), mode="bilinear", align_corners=False
            )
        return (pixels - self.clip_mean) / self.clip_std

    def image_features(self, images: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values=self.prepare(images))
        return F.normalize(_features(out), dim=-1)

    def text_features(self, texts: Sequence[str]) -> Tensor:
        device = self.clip_mean.device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, return_tensors="pt"
        )
        out = self.model.get_text_features(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        return F.normalize(_features(out), dim=-1)

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp()


def _features(out: Any) -> Tensor:
    """The features: transformers 5 returns an output object, 4 a tensor."""
    if isinstance(out, Tensor):
        return out
    return out.pooler_output


def load_transformers_clip(name_or_path: str) -> TransformersClip:
    """A real CLIP from a hub name or a local folder, behind the interface."""
    import transformers
    from transformers import AutoTokenizer, CLIPModel

    transformers.logging.set_verbosity_error()
    model = CLIPModel.from_pretrained(name_or_path, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    return TransformersClip(model.eval(), tokenizer)
