"""A CLIP with CoOp's context tokens and, for SEP, TFMs at every layer.

CoOp: Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022,
arxiv.org/abs/2109.01134; code github.com/KaiyangZhou/CoOp (`trainers/coop.py`:
`PromptLearner` puts K learnable context vectors between the start token and the
class name's tokens, "[SOS] ctx_1 .. ctx_K name .", and only they train).
SEP: Yao et al., arxiv.org/abs/2405.15549; code github.com/htyao89/SEP
(`trainers/sep.py` `CustomCLIP`, `trainers/clip_text/model.py`).

The CLIP is any `spry.vision.clip.LayerwiseClip`: the offline one (locked
MiniLM text tower, small ViT) or a transformers `CLIPModel`; this module walks
their layers through that interface alone (what differs between them, the
pooling and the vocabulary, is said there). What one forward pass does
(`PromptedClip.forward`):

- text: for each candidate class, "[SOS] ctx_1 .. ctx_K name [EOS]" (BERT's
  [CLS]/[SEP] for MiniLM, CLIP's start/end-of-text tokens for a real CLIP)
  through the text tower, the context vectors in place of the placeholder
  tokens' word embeddings (the tower then adds positions). With SEP, before
  every layer but the first (the code's layer list `[1, ..., 11]` of 12) the
  tokens at the prompts' places are replaced by the layer's TFM output fused
  from them and the K tokens after them (the text rule,
  `selection.tokens_after_prompts`); the tower pools the last layer (MiniLM:
  the mean; CLIP: the end-of-text token, projected); normalized. No "." after
  the name (CoOp's and SEP's code write "name."): the offline CLIP's captions
  have none, and so CoOp's start from "a photo of a" is exactly either CLIP's
  own feature of the caption "a photo of a {name}".
- image: CoOp leaves the image tower alone. SEP appends M learnable visual prompt
  tokens after CLS and patches (the code's `ctx_visual`, VPT-style, appended
  after the positions and before CLIP's `ln_pre`) and, before every layer but
  the first, replaces them with the TFM's fusion of them and the M
  highest-energy pre-trained tokens (`selection.energy_top_k`); CLS pools.
- SEP's features, as its code computes them: each is added to the frozen model's
  own feature and renormalized (text: the hand-written caption's; image: the
  un-prompted tower's), and its loss adds the consistency terms
  `w_t (1 - mean cos(t, t_frozen)) + w_v (1 - mean cos(v, v_frozen))` (weights 8
  and 6 in its `base2new_train.sh`). Not carried over: the code's extra
  prototype classifier (`VPT_fc`, initialized from class means of the whole
  training set before training, which a federated client cannot compute).

The logit scale is CLIP's, frozen (the code detaches it). Every tensor of the
CLIP has `requires_grad=False`; only `text_prompts`, `visual_prompts` and the
TFMs' tensors train.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...vision.clip import LayerwiseClip
from .fusion import TokenFusionModule
from .selection import energy_top_k, gather_tokens, tokens_after_prompts

METHODS = ("sep", "coop")
PLACEHOLDER = "x"  # one word piece per random context token


@dataclass(frozen=True)
class PromptConfig:
    """The prompt learner's shape; every default in one place.

    Parameters
    ----------
    method : str (default: "sep")
        `sep` (prompts + TFMs in both towers) or `coop` (text context alone).
    context_init : str (default: "a photo of a")
        Words whose embeddings start the text context (CoOp's `CTX_INIT`); its
        word pieces set K. Empty: `context_tokens` random vectors (std 0.02).
    context_tokens : int (default: 4)
        K when `context_init` is empty.
    visual_prompts : int (default: 4)
        SEP's visual prompt tokens M (the authors' `N_CTX_V` = 4).
    tfm_hidden : int (default: 256)
        The TFM's MLP width (the authors' 256).
    per_input_selection : bool (default: True)
        Visual tokens chosen per image (the paper's words) or per batch (the
        released code); see `selection.py`.
    ensemble : bool (default: True)
        SEP adds the frozen features to the prompted ones (its code does).
    text_consistency, visual_consistency : float (default: 8.0, 6.0)
        SEP's consistency weights (its `WEIGHT`, `WEIGHT_V`).
    """

    method: str = "sep"
    context_init: str = "a photo of a"
    context_tokens: int = 4
    visual_prompts: int = 4
    tfm_hidden: int = 256
    per_input_selection: bool = True
    ensemble: bool = True
    text_consistency: float = 8.0
    visual_consistency: float = 6.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`method` should be one of {METHODS}, got {self.method}")
        if self.context_tokens < 1 or self.visual_prompts < 1 or self.tfm_hidden < 1:
            raise ValueError(f"token counts and widths should be positive: {self}")

    @property
    def sep(self) -> bool:
        return self.method == "sep"


class PromptedClip(nn.Module):
    """A frozen CLIP, learnable prompts, and (SEP) one TFM per layer.

    Parameters
    ----------
    clip : LayerwiseClip
        The vision-language model (offline or transformers); frozen here.
    captions : Sequence[str]
        Per class: the name the prompts precede.
    frozen_captions : Sequence[str]
        Per class: the hand-written caption whose frozen feature SEP ensembles.
    config : PromptConfig
    train_classes : Sequence[int]
        The class ids training batches are classified among (`prompt_loss`);
        a buffer, so batches hold only per-example tensors.
    """

    def __init__(
        self,
        clip: LayerwiseClip,
        names: Sequence[str],
        frozen_captions: Sequence[str],
        config: PromptConfig,
        train_classes: Sequence[int],
    ) -> None:
        super().__init__()
        if len(names) != len(frozen_captions):
            raise ValueError("one frozen caption per class name")
        if not train_classes or not all(0 <= c < len(names) for c in train_classes):
            raise ValueError(f"train classes should be ids of {len(names)} classes")
        self.config = config
        self.clip = clip.eval().requires_grad_(False)
        self.clip.zero_grad(set_to_none=True)  # a fresh build keeps its last grads
        self.register_buffer(
            "train_classes", torch.tensor(list(train_classes)), persistent=False
        )
        if config.context_init:
            context = clip.context_embeddings(config.context_init)  # (K, D)
            k = len(context)
            prefix = config.context_init
        else:
            k = config.context_tokens
            context = torch.randn(k, clip.text_width) * 0.02
            prefix = " ".join([PLACEHOLDER] * k)
        self.k = k
        self.text_prompts = nn.Parameter(context)  # (K, D)
        # "[SOS] ctx_1..ctx_K name [EOS] [PAD]..", at least 1 + 2K long (the rule)
        ids, attention = clip.tokenize_prompts(
            [f"{prefix} {name}" for name in names], min_length=1 + 2 * k
        )
        self.register_buffer("input_ids", ids, persistent=False)
        self.register_buffer("attention", attention, persistent=False)
        with torch.no_grad():
            frozen_text = clip.text_features(list(frozen_captions))
        self.register_buffer("frozen_text", frozen_text, persistent=False)  # (C, D)
        if config.sep:
            m = config.visual_prompts
            self.visual_prompts = nn.Parameter(torch.randn(m, clip.image_width) * 0.02)
            self.text_fusion = nn.ModuleList(
                TokenFusionModule(clip.text_width, config.tfm_hidden)
                for _ in range(clip.text_depth - 1)
            )
            self.visual_fusion = nn.ModuleList(
                TokenFusionModule(clip.image_width, config.tfm_hidden)
                for _ in range(clip.image_depth - 1)
            )

    # -- the text tower ------------------------------------------------------------

    def text_features(self, classes: Tensor) -> Tensor:
        """`(C,)` class ids -> `(C, D)` unit-norm prompted text features."""
        clip = self.clip
        attention = self.attention[classes]  # (C, T)
        length = max(int(attention.sum(1).max()), 1 + 2 * self.k)
        ids, attention = self.input_ids[classes, :length], attention[:, :length]
        words = clip.word_embeddings(ids)  # (C, T, D)
        context = self.text_prompts.unsqueeze(0).expand(len(ids), -1, -1)
        words = torch.cat([words[:, :1], context, words[:, 1 + self.k :]], dim=1)
        hidden = clip.text_input(words)  # (C, T, D), positions added
        for index in range(clip.text_depth):
            if self.config.sep and index >= 1:
                hidden = self._fuse_text(index, hidden, attention)
            hidden = clip.text_layer(index, hidden, attention)
        return F.normalize(clip.text_pool(hidden, ids, attention), dim=-1)

    def _fuse_text(self, index: int, hidden: Tensor, attention: Tensor) -> Tensor:
        k = self.k
        start, end = tokens_after_prompts(hidden, 1, k)
        prompts, selected = hidden[:, 1 : 1 + k], hidden[:, start:end]
        fused = self.text_fusion[index - 1](
            prompts, selected, attention[:, start:end]
        )  # (C, K, D)
        return torch.cat([hidden[:, :1], fused, hidden[:, 1 + k :]], dim=1)

    # -- the image tower -----------------------------------------------------------

    def image_features(self, images: Tensor) -> Tensor:
        """`(B, 1, 28, 28)` -> `(B, D)` unit-norm (prompted for SEP) features."""
        clip = self.clip
        if not self.config.sep:
            return clip.image_features(images)
        tokens = clip.image_tokens(images)  # (B, 1 + P, W)
        pretrained = tokens.shape[1]
        prompts = self.visual_prompts.unsqueeze(0).expand(len(images), -1, -1)
        tokens = clip.image_input(torch.cat([tokens, prompts], dim=1))  # + M
        for index in range(clip.image_depth):
            if index >= 1:
                tokens = self._fuse_image(index, tokens, pretrained)
            tokens = clip.image_layer(index, tokens)
        return F.normalize(clip.image_pool(tokens), dim=-1)

    def _fuse_image(self, index: int, tokens: Tensor, pretrained: int) -> Tensor:
        """Layer `index`'s input with its prompts (after `pretrained`) fused."""
        before, prompts = tokens[:, :pretrained], tokens[:, pretrained:]
        chosen = energy_top_k(
            before, prompts.shape[1], per_input=self.config.per_input_selection
        )  # (B, M)
        fused = self.visual_fusion[index - 1](prompts, gather_tokens(before, chosen))
        return torch.cat([before, fused], dim=1)

    # -- both ----------------------------------------------------------------------

    def features(self, images: Tensor, classes: Tensor) -> tuple[Tensor, ...]:
        """Image and text features as the method scores them, and the frozen ones.

        Returns `(image, text, image_frozen, text_frozen)`; the frozen pair is
        what SEP ensembles with and keeps its features consistent with.
        """
        image, text = self.image_features(images), self.text_features(classes)
        text_frozen = self.frozen_text[classes]
        if not self.config.sep:
            return image, text, image, text_frozen
        image_frozen = self.clip.image_features(images)
        if self.config.ensemble:
            image = F.normalize(image + image_frozen, dim=-1)
            text = F.normalize(text + text_frozen, dim=-1)
        return image, text, image_frozen, text_frozen

    def forward(self, images: Tensor, classes: Tensor) -> Tensor:
        """`(B, C)` logits of `images` among the classes `classes`."""
        image, text, _, _ = self.features(images, classes)
        return self.clip.logit_scale.detach() * image @ text.T


def prompt_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Cross-entropy among the model's `train_classes`, plus SEP's consistency terms.

    `batch`: `images` `(B, 1, 28, 28)` and `labels` `(B,)`, positions in
    `model.train_classes`. Returns the loss and the logits.
    """
    config: PromptConfig = model.config  # type: ignore[assignment]
    image, text, image_frozen, text_frozen = model.features(  # type: ignore[operator]
        batch["images"], model.train_classes
    )
    logits = model.clip.logit_scale.detach() * image @ text.T  # type: ignore[union-attr]
    loss = F.cross_entropy(logits, batch["labels"])
    if config.sep:
        text_gap = 1.0 - F.cosine_similarity(text, text_frozen, dim=-1).mean()
        image_gap = 1.0 - F.cosine_similarity(image, image_frozen, dim=-1).mean()
        loss = (
            loss
            + config.text_consistency * text_gap
            + config.visual_consistency * image_gap
        )
    return loss, logits


def trainable_names(model: PromptedClip) -> dict[str, str]:
    """Stable name -> parameter name for every tensor that trains."""
    return {n: n for n, p in model.named_parameters() if not n.startswith("clip.")}
