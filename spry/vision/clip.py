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

Both implement `LayerwiseClip`: the parts of each tower one at a time (token
embeddings, each encoder layer, pooling), so prompt methods that insert or replace
tokens between layers (SEP, CoOp: `spry.tasks.sep.prompted`) drive either CLIP
through the same calls.
"""

from __future__ import annotations

import math
import os
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


class LayerwiseClip(VisionLanguageModel):
    """A CLIP whose towers a prompt method walks one layer at a time.

    Text: `tokenize_prompts` -> `word_embeddings` (where a method swaps in its
    context vectors) -> `text_input` (positions added) -> `text_layer` for each
    of `text_depth` layers -> `text_pool` (the unnormalized feature). Image:
    `image_tokens` (class and patch tokens with positions, where a method
    appends its prompts) -> `image_input` -> `image_layer` x `image_depth` ->
    `image_pool`. Run with nothing changed, each walk is exactly
    `text_features` / `image_features` before normalization.

    What differs between the two CLIPs, behind these calls:

    - pooling: the offline CLIP's text tower (MiniLM, bidirectional) mean-pools
      the attended tokens of the last layer, without a projection; a real
      CLIP's text tower is causal (each token sees only those before it), takes
      the final layer norm at the end-of-text token and projects it
      (`text_projection`). Images: CLS after a layer norm, projected, in both;
      a real CLIP also normalizes all tokens before the first layer
      (`pre_layrnorm`, `image_input`), the offline ViT does not.
    - CoOp's context init (`context_embeddings`): the word embeddings of the
      words' pieces from each CLIP's own vocabulary (BERT word pieces; CLIP's
      byte-pair tokens, as CoOp's `token_embedding` of "a photo of a").
    - SEP's text rule (the K tokens after the K prompts) reads the same
      positions in both: the first token is BERT's [CLS] or CLIP's start token,
      so the name's tokens follow the prompts. In a causal tower the fused
      prompts thereby carry the class name to tokens before it, which
      attention alone could not.
    """

    # -- the text tower ----------------------------------------------------------------

    @property
    @abstractmethod
    def text_width(self) -> int:
        """The text tower's token width (the context vectors' width)."""

    @property
    @abstractmethod
    def text_depth(self) -> int:
        """The text tower's number of layers."""

    @abstractmethod
    def context_embeddings(self, words: str) -> Tensor:
        """`(K, text_width)` word embeddings of `words`' K tokens (no specials)."""

    @abstractmethod
    def tokenize_prompts(
        self, texts: Sequence[str], min_length: int
    ) -> tuple[Tensor, Tensor]:
        """Ids and attention mask `(N, T)`, padded to the tower's length or more."""

    @abstractmethod
    def word_embeddings(self, ids: Tensor) -> Tensor:
        """`(N, T)` ids -> `(N, T, text_width)` token embeddings."""

    @abstractmethod
    def text_input(self, words: Tensor) -> Tensor:
        """Token embeddings -> the first layer's input (positions added)."""

    @abstractmethod
    def text_layer(self, index: int, hidden: Tensor, attention: Tensor) -> Tensor:
        """Text layer `index` on `(N, T, D)` tokens; `attention` `(N, T)` 1 = real."""

    @abstractmethod
    def text_pool(self, hidden: Tensor, ids: Tensor, attention: Tensor) -> Tensor:
        """The last layer's tokens -> `(N, embed)` text features (unnormalized)."""

    # -- the image tower ---------------------------------------------------------------

    @property
    @abstractmethod
    def image_width(self) -> int:
        """The image tower's token width (the visual prompts' width)."""

    @property
    @abstractmethod
    def image_depth(self) -> int:
        """The image tower's number of layers."""

    @abstractmethod
    def image_tokens(self, images: Tensor) -> Tensor:
        """`(B, 1, H, W)` normalized grey images -> `(B, 1 + P, W)` CLS + patches."""

    @abstractmethod
    def image_input(self, tokens: Tensor) -> Tensor:
        """Tokens (with any appended) -> the first layer's input."""

    @abstractmethod
    def image_layer(self, index: int, tokens: Tensor) -> Tensor:
        """Image layer `index` on `(B, T, W)` tokens, any T."""

    @abstractmethod
    def image_pool(self, tokens: Tensor) -> Tensor:
        """The last layer's tokens -> `(B, embed)` image features (unnormalized)."""


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


class OfflineClip(LayerwiseClip):
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

    # -- LayerwiseClip: MiniLM's parts, the ViT's parts --------------------------------

    @property
    def text_width(self) -> int:
        return self.text.width

    @property
    def text_depth(self) -> int:
        return len(self.text.layers)

    def context_embeddings(self, words: str) -> Tensor:
        ids = self.text.tokenizer(words, add_special_tokens=False)["input_ids"]
        table = self.text.encoder.embeddings.word_embeddings.weight
        return table[torch.tensor(ids, device=table.device)].detach().clone()

    def tokenize_prompts(
        self, texts: Sequence[str], min_length: int
    ) -> tuple[Tensor, Tensor]:
        batch = self.text.tokenizer(
            list(texts),
            padding="max_length",
            max_length=max(min_length, self.text.max_length),
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    def word_embeddings(self, ids: Tensor) -> Tensor:
        return self.text.encoder.embeddings.word_embeddings(ids)  # type: ignore[no-any-return]

    def text_input(self, words: Tensor) -> Tensor:
        # BERT adds positions (and token type 0) and normalizes
        return self.text.encoder.embeddings(inputs_embeds=words)  # type: ignore[no-any-return]

    def text_layer(self, index: int, hidden: Tensor, attention: Tensor) -> Tensor:
        return self.text.run_layer(index, hidden, attention)

    def text_pool(self, hidden: Tensor, ids: Tensor, attention: Tensor) -> Tensor:
        return self.text.pool(hidden, attention)

    @property
    def image_width(self) -> int:
        return self.vision.config.width

    @property
    def image_depth(self) -> int:
        return self.vision.config.depth

    def image_tokens(self, images: Tensor) -> Tensor:
        return self.vision.embed(images)

    def image_input(self, tokens: Tensor) -> Tensor:
        return tokens  # the offline ViT has no pre-norm

    def image_layer(self, index: int, tokens: Tensor) -> Tensor:
        return self.vision.blocks[index](tokens)  # type: ignore[no-any-return]

    def image_pool(self, tokens: Tensor) -> Tensor:
        return self.vision.pool(tokens)


def build_offline_clip_model(
    vit: ViTConfig, text_model: str, max_length: int = 32
) -> OfflineClip:
    """An untrained offline CLIP: a random ViT and the locked named text tower."""
    return OfflineClip(
        VisionTransformer(vit), load_sentence_tower(text_model, max_length)
    )


class TransformersClip(LayerwiseClip):
    """A transformers `CLIPModel` behind the same interface.

    Images come as this package's normalized grey `(B, 1, 28, 28)` tensors; they
    are un-normalized, repeated to RGB, resized (bilinear) to the vision
    tower's input side and normalized with CLIP's statistics. No torchvision
    and no image processor are involved.

    The layer-wise walk (`LayerwiseClip`) repeats what `CLIPTextModel` and
    `CLIPVisionModel` do in their `forward`, one layer at a time: text tokens
    plus positions, each encoder layer under CLIP's causal mask (and the
    padding mask), the final layer norm, the state at the end-of-text token
    (found as transformers finds it, `eos_position`), `text_projection`; image
    class and patch tokens plus positions, `pre_layrnorm`, each encoder layer,
    `post_layernorm` of CLS, `visual_projection`.
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

    # -- LayerwiseClip: the text tower ---------------------------------------------

    @property
    def text_width(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    @property
    def text_depth(self) -> int:
        return len(self.model.text_model.encoder.layers)

    @property
    def text_length(self) -> int:
        """The longest sequence the text tower has positions for (CLIP's 77)."""
        return int(self.model.config.text_config.max_position_embeddings)

    def context_embeddings(self, words: str) -> Tensor:
        ids = self.tokenizer(words, add_special_tokens=False)["input_ids"]
        table = self.model.text_model.embeddings.token_embedding.weight
        return table[torch.tensor(ids, device=table.device)].detach().clone()

    def tokenize_prompts(
        self, texts: Sequence[str], min_length: int
    ) -> tuple[Tensor, Tensor]:
        if min_length > self.text_length:
            raise ValueError(
                f"prompts need {min_length} tokens, the text tower has positions "
                f"for {self.text_length}"
            )
        batch = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    def word_embeddings(self, ids: Tensor) -> Tensor:
        return self.model.text_model.embeddings.token_embedding(ids)  # type: ignore[no-any-return]

    def text_input(self, words: Tensor) -> Tensor:
        return self.model.text_model.embeddings(inputs_embeds=words)  # type: ignore[no-any-return]

    def text_layer(self, index: int, hidden: Tensor, attention: Tensor) -> Tensor:
        layer = self.model.text_model.encoder.layers[index]
        return _tensor(layer(hidden, causal_mask(attention, hidden.dtype)))

    def text_pool(self, hidden: Tensor, ids: Tensor, attention: Tensor) -> Tensor:
        text = self.model.text_model
        last = text.final_layer_norm(hidden)
        eos = eos_position(ids, text.config.eos_token_id)
        pooled = last[torch.arange(len(last), device=last.device), eos]
        return self.model.text_projection(pooled)  # type: ignore[no-any-return]

    # -- LayerwiseClip: the image tower --------------------------------------------

    @property
    def image_width(self) -> int:
        return int(self.model.config.vision_config.hidden_size)

    @property
    def image_depth(self) -> int:
        return len(self.model.vision_model.encoder.layers)

    def image_tokens(self, images: Tensor) -> Tensor:
        return self.model.vision_model.embeddings(self.prepare(images))  # type: ignore[no-any-return]

    def image_input(self, tokens: Tensor) -> Tensor:
        return self.model.vision_model.pre_layrnorm(tokens)  # type: ignore[no-any-return]

    def image_layer(self, index: int, tokens: Tensor) -> Tensor:
        layer = self.model.vision_model.encoder.layers[index]
        return _tensor(layer(tokens, None))

    def image_pool(self, tokens: Tensor) -> Tensor:
        cls = self.model.vision_model.post_layernorm(tokens[:, 0])
        return self.model.visual_projection(cls)  # type: ignore[no-any-return]


def causal_mask(attention: Tensor, dtype: torch.dtype) -> Tensor:
    """`(N, T)` padding mask -> `(N, 1, T, T)` additive mask: causal and padding.

    Query `i` may attend to key `j` when `j <= i` and `j` is a real token, as
    CLIP's text tower attends (transformers' `create_causal_mask` for eager
    attention); the first token is always real, so no row is empty.
    """
    t = attention.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=attention.device).tril()
    allowed = causal[None, None] & attention[:, None, None, :].bool()
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=attention.device)
    return blocked.masked_fill(~allowed, torch.finfo(dtype).min)


def eos_position(ids: Tensor, eos_token_id: int) -> Tensor:
    """`(N,)` the end-of-text token's position in each row, as transformers finds it.

    Configurations from before transformers' PR #24773 say `eos_token_id` 2; for
    them the end-of-text token is the largest id (CLIP's vocabulary ends with
    it, `argmax`); otherwise it is the first occurrence of `eos_token_id` (the
    padding may be the same token).
    """
    if eos_token_id == 2:
        return ids.argmax(dim=-1)
    return (ids == eos_token_id).int().argmax(dim=-1)


def _tensor(out: Any) -> Tensor:
    """A layer's output: transformers 5 returns the tensor, 4 a tuple."""
    return out[0] if isinstance(out, tuple) else out


def _features(out: Any) -> Tensor:
    """The features: transformers 5 returns an output object, 4 a tensor."""
    if isinstance(out, Tensor):
        return out
    return out.pooler_output


def load_transformers_clip(name_or_path: str) -> TransformersClip:
    """A real CLIP from a local folder or a hub name, behind the interface.

    A folder (`config.json`, the weights, the tokenizer's files) loads as it is.
    A hub name is looked up in the Hugging Face cache only when
    `HF_HUB_OFFLINE` is set (`local_files_only`), else downloaded; either way
    a name that cannot be loaded raises `ModelError` saying what was tried.
    Eager attention (the `sdpa` kernels on CPU have no forward-mode AD rule) and
    float32 whatever the checkpoint stores, as the project's other models load.
    """
    import transformers
    from transformers import AutoTokenizer, CLIPModel

    from ..models.classifier import ModelError

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    path = os.path.expanduser(name_or_path)
    is_folder = os.path.isdir(path)
    offline = not is_folder and _hub_offline()
    if not is_folder and path.startswith((".", "/", "~")):
        raise ModelError(f"no CLIP folder {name_or_path!r}")
    if is_folder:
        where = "that folder"
    elif offline:
        where = "the Hugging Face cache (HF_HUB_OFFLINE is set: no download)"
    else:
        where = "the Hugging Face hub"
    try:
        model = CLIPModel.from_pretrained(
            path,
            attn_implementation="eager",
            dtype=torch.float32,
            local_files_only=offline,
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    except OSError as error:
        raise ModelError(
            f"cannot load a transformers CLIPModel {name_or_path!r} from {where}: "
            f"{error}. Give a folder holding config.json, the weights and the "
            "tokenizer's files (what CLIPModel.save_pretrained and the "
            "tokenizer's save_pretrained write)"
        ) from error
    return TransformersClip(model.eval(), tokenizer)


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for the cache only, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE", "")
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")
