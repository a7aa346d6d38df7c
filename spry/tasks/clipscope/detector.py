"""CLIPScope on a vision-language model: prompts, label features, image logits.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737; code: github.com/fu1001hao/CLIPScope

This module joins the pure parts (`wordnet`, `mining`, `score`, `prior`) to any
`spry.vision.clip.VisionLanguageModel`, with the prompts of the authors' code:
- mining embeds a candidate noun as "the {noun}" and an ID class as
  "a photo of a {name}" (`mining.py`);
- scoring embeds ID classes and the farthest mined labels as "a photo of a
  {label}" and the nearest mined labels as "a photo of {label}" (`CLIPScope.py`,
  `run`: `OODclass[:k]` are the farthest, `OODclass[k:]` the nearest).

Embedding WordNet's ~118k nouns is the slow step (minutes on a CPU), so the noun
features are cached under `$SPRY_CACHE/clipscope-nouns/`, keyed by the caller's
name for the text space (`text_key`) and a digest of the nouns and template.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ...cache import cache_root
from ...vision.clip import VisionLanguageModel
from .mining import DEFAULT_PERCENTILE, MinedLabels, mine_ood_labels
from .wordnet import (
    WORDNET_DIR,
    noun_candidates,
    read_exceptions,
    read_synsets,
    synonyms,
)

MINING_TEMPLATE = "the {}"
ID_TEMPLATE = "a photo of a {}"
FAR_TEMPLATE = "a photo of a {}"
NEAR_TEMPLATE = "a photo of {}"


@torch.no_grad()
def embed_texts(
    model: VisionLanguageModel, texts: Sequence[str], batch_size: int = 256
) -> Tensor:
    """`(N, D)` unit-norm text features, in batches (no gradient)."""
    if not texts:
        raise ValueError("no texts to embed")
    return torch.cat(
        [
            model.text_features(texts[i : i + batch_size]).float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
    )


def cached_text_features(
    model: VisionLanguageModel,
    texts: Sequence[str],
    text_key: str | None,
    batch_size: int = 256,
) -> Tensor:
    """`embed_texts`, stored under $SPRY_CACHE when `text_key` names the space."""
    if text_key is None:
        return embed_texts(model, texts, batch_size)
    digest = hashlib.sha256("\n".join([text_key, *texts]).encode()).hexdigest()[:20]
    path = cache_root() / "clipscope-nouns" / f"{digest}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    features = embed_texts(model, texts, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(features, partial)
    partial.replace(path)
    return features


@dataclass(frozen=True)
class LabelSpace:
    """The texts an image is scored against: ID classes, then mined OOD labels."""

    id_names: tuple[str, ...]
    mined: MinedLabels | None
    id_features: Tensor  # (C, D)
    ood_features: Tensor  # (M, D); M = 0 without mined labels

    @property
    def num_classes(self) -> int:
        return len(self.id_names)


def mine_from_wordnet(
    model: VisionLanguageModel,
    id_names: Sequence[str],
    *,
    num_nearest: int,
    num_farthest: int,
    percentile: float = DEFAULT_PERCENTILE,
    wordnet_dir: Path | str = WORDNET_DIR,
    max_candidates: int = 0,
    seed: int = 0,
    text_key: str | None = None,
) -> MinedLabels:
    """WordNet's nouns (ID names and synonyms left out) mined in `model`'s space.

    `max_candidates` > 0 draws that many nouns (seeded) instead of all ~118k:
    for tests and quick runs; the paper mines all of WordNet.
    """
    synsets = list(read_synsets(wordnet_dir))
    excluded = synonyms(id_names, synsets, read_exceptions(wordnet_dir))
    candidates = noun_candidates(synsets, excluded)
    if 0 < max_candidates < len(candidates):
        generator = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(candidates), generator=generator)[:max_candidates]
        candidates = [candidates[i] for i in sorted(keep.tolist())]
    noun_features = cached_text_features(
        model, [MINING_TEMPLATE.format(n) for n in candidates], text_key
    )
    id_features = embed_texts(model, [ID_TEMPLATE.format(n) for n in id_names])
    return mine_ood_labels(
        candidates,
        noun_features,
        id_features,
        num_nearest=num_nearest,
        num_farthest=num_farthest,
        percentile=percentile,
    )


def label_space(
    model: VisionLanguageModel,
    id_names: Sequence[str],
    mined: MinedLabels | None = None,
) -> LabelSpace:
    """The scoring prompts' features for the ID classes and the mined labels."""
    id_features = embed_texts(model, [ID_TEMPLATE.format(n) for n in id_names])
    if mined is None or not mined.labels:
        ood = torch.zeros(0, id_features.shape[1])
    else:
        ood = embed_texts(
            model,
            [FAR_TEMPLATE.format(n) for n in mined.farthest]
            + [NEAR_TEMPLATE.format(n) for n in mined.nearest],
        )
    return LabelSpace(tuple(id_names), mined, id_features, ood)


@torch.no_grad()
def image_logits(
    model: VisionLanguageModel,
    images: Tensor,
    space: LabelSpace,
    batch_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """`(N, C)` ID logits and `(N, M)` OOD logits: scale * cos(image, label)."""
    features = torch.cat([space.id_features, space.ood_features])
    logits = torch.cat(
        [
            model.logit_scale.float().cpu()
            * model.image_features(images[i : i + batch_size]).float().cpu()
            @ features.T
            for i in range(0, len(images), batch_size)
        ]
    )
    return logits[:, : space.num_classes], logits[:, space.num_classes :]
