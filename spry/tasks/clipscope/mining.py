"""CLIPScope's OOD label mining: the nouns nearest to and farthest from the ID classes.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737; code: github.com/fu1001hao/CLIPScope
(`mining.py`).

Each candidate noun's distance to the ID classes is a low percentile of its
negative cosine similarities to the ID class embeddings (all unit-norm, in the
model's text space):

    d_i = percentile_q( { -cos(e_i, t_c) : c = 1..C } )

A low q makes d_i a soft minimum: a noun is near when it is near *some* ID
class. The authors' `mining.py` takes `torch.kthvalue(-sim, 50)` over ImageNet's
1,000 classes, the 50th smallest, i.e. q = 5% (`DEFAULT_PERCENTILE`); with ten ID
classes that is close to the nearest class. Nouns sorted by d_i: the k with the
largest d_i are the farthest labels, the k with the smallest the nearest; the
authors' `CLIPScope.py` uses both halves (k = 5,000 each,
`nouns[:k] + nouns[-k:]`). The far labels catch OOD images unlike anything ID;
the near ones catch the look-alikes.

The embedding prompts follow the code: a candidate is embedded as "the {noun}"
when mining, ID classes as "a photo of a {name}"; the caller embeds (`embed_fn`),
so any `VisionLanguageModel` (the offline CLIP, a real one) mines in its own
text space. Candidates arrive deduplicated with the ID names and their synonyms
left out (`wordnet.noun_candidates`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

DEFAULT_PERCENTILE = 5.0  # the authors' k-th value: 50 of 1,000 ID classes


@dataclass(frozen=True)
class MinedLabels:
    """The mined OOD labels and every candidate's distance to the ID classes."""

    nearest: tuple[str, ...]  # nearest first
    farthest: tuple[str, ...]  # farthest first
    distances: Tensor  # (M,) d_i of every candidate, in the candidates' order

    @property
    def labels(self) -> tuple[str, ...]:
        """Both halves: what the score's OOD side reads."""
        return self.farthest + self.nearest


def id_distances(
    candidate_features: Tensor,
    id_features: Tensor,
    percentile: float = DEFAULT_PERCENTILE,
) -> Tensor:
    """`d_i`: the `percentile`-th percentile of -cos(candidate i, each ID class).

    Parameters
    ----------
    candidate_features : Tensor
        `(M, D)` unit-norm text features of the candidate nouns.
    id_features : Tensor
        `(C, D)` unit-norm text features of the ID classes.
    percentile : float (default: 5.0)
        In [0, 100]; linear interpolation between order statistics
        (`torch.quantile`), 0 = the nearest class.
    """
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"`percentile` should be in [0, 100], got {percentile}")
    negative_cos = -(candidate_features @ id_features.T)  # (M, C)
    return torch.quantile(negative_cos, percentile / 100.0, dim=1)


def mine_ood_labels(
    candidates: Sequence[str],
    candidate_features: Tensor,
    id_features: Tensor,
    *,
    num_nearest: int,
    num_farthest: int,
    percentile: float = DEFAULT_PERCENTILE,
) -> MinedLabels:
    """The `num_nearest` nearest and `num_farthest` farthest candidates.

    Ties are broken by the candidates' order (a stable sort), so the result is
    a function of the inputs alone. The two halves never share a noun.
    """
    if len(candidates) != len(candidate_features):
        raise ValueError(
            f"{len(candidates)} candidates but {len(candidate_features)} features"
        )
    if min(num_nearest, num_farthest) < 0:
        raise ValueError(
            f"label counts should be at least 0, got {num_nearest}, {num_farthest}"
        )
    if num_nearest + num_farthest > len(candidates):
        raise ValueError(
            f"{num_nearest} nearest + {num_farthest} farthest labels need that many "
            f"candidates, got {len(candidates)}"
        )
    distances = id_distances(candidate_features, id_features, percentile)
    order = torch.sort(distances, stable=True).indices.tolist()  # nearest first
    nearest = tuple(candidates[i] for i in order[:num_nearest])
    farthest_order = order[len(order) - num_farthest :][::-1] if num_farthest else []
    farthest = tuple(candidates[i] for i in farthest_order)
    return MinedLabels(nearest, farthest, distances)
