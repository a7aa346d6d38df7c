"""CLIPScope's comparison on ID/OOD pairs of the offline image sets.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737

The pairs (`ood_pairs`), both from sets that ship offline:
- `fashion-vs-digits` (far OOD): Fashion-MNIST's 10 classes are ID, the
  held-out digits are OOD;
- `fashion-near` (near OOD): Fashion-MNIST's classes minus `near_ood_classes`
  are ID, held-out images of those classes are OOD (shirts beside t-shirts,
  ankle boots beside sandals).

Each pair is scored by the baselines and CLIPScope's variants on the same
logits (`compare`): MSP, energy; CLIPScope without mined labels; with mined
labels and a uniform prior; with mined labels and the prior from clients'
prediction counts (the federated prior); and as the authors' code runs it, the
prior learning over the test stream (`online`). The ID images whose
predictions are counted for the federated prior are the ID classes' *train*
images, split among clients; the scored images are the held-out ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ...vision.clip import VisionLanguageModel
from ...vision.images import load_image_set
from .detector import LabelSpace, image_logits, label_space
from .mining import MinedLabels
from .prior import class_prior, merge_counts, prediction_counts, uniform_prior
from .score import (
    clipscope_score,
    energy_score,
    msp_score,
    online_clipscope_scores,
    ood_metrics,
)

NEAR_OOD_CLASSES = (6, 7, 8, 9)  # shirt, sneaker, bag, ankle boot
METHODS = (
    "msp",
    "energy",
    "clipscope-no-labels",
    "clipscope-uniform-prior",
    "clipscope",
    "clipscope-online",
)


@dataclass(frozen=True)
class OODPair:
    """ID class names and images, OOD images, and the ID images clients count."""

    name: str
    id_names: tuple[str, ...]
    id_images: Tensor  # held out, scored
    ood_images: Tensor  # held out, scored
    prior_images: Tensor  # ID train images, whose predictions clients count


def _sample(images: Tensor, limit: int, seed: int) -> Tensor:
    if limit <= 0 or limit >= len(images):
        return images
    generator = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=generator)[:limit]]


def ood_pairs(
    max_images: int = 2000,
    near_ood_classes: Sequence[int] = NEAR_OOD_CLASSES,
    seed: int = 0,
) -> list[OODPair]:
    """The two pairs, each side a seeded sample of at most `max_images` images."""
    fashion, digits = load_image_set("fashion-mnist"), load_image_set("digits")
    far = OODPair(
        "fashion-vs-digits",
        fashion.class_names,
        _sample(fashion.test_images, max_images, seed),
        _sample(digits.test_images, max_images, seed),
        _sample(fashion.train_images, max_images, seed),
    )
    near_set = set(near_ood_classes)
    id_classes = [c for c in range(len(fashion.class_names)) if c not in near_set]
    if not id_classes or not near_set:
        raise ValueError(f"a near-OOD split needs both sides, got {near_ood_classes}")
    # Labels are remapped so ID class i is the i-th remaining name
    is_ood_test = torch.isin(fashion.test_labels, torch.tensor(sorted(near_set)))
    is_ood_train = torch.isin(fashion.train_labels, torch.tensor(sorted(near_set)))
    near = OODPair(
        "fashion-near",
        tuple(fashion.class_names[c] for c in id_classes),
        _sample(fashion.test_images[~is_ood_test], max_images, seed),
        _sample(fashion.test_images[is_ood_test], max_images, seed),
        _sample(fashion.train_images[~is_ood_train], max_images, seed),
    )
    return [far, near]


def federated_counts(
    model: VisionLanguageModel, space: LabelSpace, images: Tensor, num_clients: int
) -> np.ndarray:
    """Each client counts the predictions on its share of `images`; summed."""
    shares = torch.tensor_split(images, num_clients)
    counts = []
    for share in shares:
        id_logits, _ = image_logits(model, share, space)
        counts.append(prediction_counts(id_logits, space.num_classes))
    return merge_counts(counts)


@dataclass(frozen=True)
class PairResult:
    """Per method: AUROC and FPR95, and the ID and OOD scores behind them."""

    pair: str
    metrics: dict[str, dict[str, float]]
    id_scores: dict[str, np.ndarray]
    ood_scores: dict[str, np.ndarray]
    prior: np.ndarray  # the federated prior used


def compare(
    model: VisionLanguageModel,
    pair: OODPair,
    mined: MinedLabels,
    *,
    num_clients: int = 10,
    counts: np.ndarray | None = None,
    seed: int = 0,
) -> PairResult:
    """Every method of `METHODS` on one pair, on the same logits.

    `counts` are the merged prediction counts the clients shared (a federated
    run's); without them `num_clients` shares of `pair.prior_images` are
    counted here, each share apart, and merged the same way.
    """
    plain = label_space(model, pair.id_names)
    mined_space = label_space(model, pair.id_names, mined)
    if counts is None:
        counts = federated_counts(model, mined_space, pair.prior_images, num_clients)
    elif len(counts) != len(pair.id_names):
        raise ValueError(
            f"{len(counts)} counts for the {len(pair.id_names)} ID classes"
        )
    prior = class_prior(counts)
    uniform = uniform_prior(len(pair.id_names))
    scores: dict[str, tuple[Tensor, Tensor]] = {}
    sides = {"id": pair.id_images, "ood": pair.ood_images}
    logits = {side: image_logits(model, x, mined_space) for side, x in sides.items()}
    plain_logits = {side: image_logits(model, x, plain) for side, x in sides.items()}

    def both(fn) -> tuple[Tensor, Tensor]:
        return fn(*logits["id"]), fn(*logits["ood"])

    scores["msp"] = both(lambda id_, _: msp_score(id_))
    scores["energy"] = both(lambda id_, _: energy_score(id_))
    scores["clipscope-no-labels"] = (
        clipscope_score(*plain_logits["id"], prior),
        clipscope_score(*plain_logits["ood"], prior),
    )
    scores["clipscope-uniform-prior"] = both(
        lambda id_, ood: clipscope_score(id_, ood, uniform)
    )
    scores["clipscope"] = both(lambda id_, ood: clipscope_score(id_, ood, prior))
    # the authors' stream: ID and OOD images interleaved in a seeded order
    id_n = len(pair.id_images)
    stream = torch.randperm(
        id_n + len(pair.ood_images), generator=torch.Generator().manual_seed(seed)
    )
    all_id = torch.cat([logits["id"][0], logits["ood"][0]])[stream]
    all_ood = torch.cat([logits["id"][1], logits["ood"][1]])[stream]
    online = torch.empty(len(stream), dtype=torch.float64)
    online[stream] = online_clipscope_scores(all_id, all_ood)
    scores["clipscope-online"] = (online[:id_n], online[id_n:])

    id_scores = {k: v[0].double().numpy() for k, v in scores.items()}
    ood_scores = {k: v[1].double().numpy() for k, v in scores.items()}
    metrics = {k: ood_metrics(id_scores[k], ood_scores[k]) for k in METHODS}
    return PairResult(pair.name, metrics, id_scores, ood_scores, prior.numpy())


def plot_score_distributions(results: Sequence[PairResult], path: Path) -> None:
    """One row per pair, one panel per method: ID vs OOD score histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results),
        len(METHODS),
        figsize=(3.2 * len(METHODS), 2.6 * len(results)),
        squeeze=False,
    )
    for row, result in zip(axes, results, strict=True):
        for ax, method in zip(row, METHODS, strict=True):
            id_s, ood_s = result.id_scores[method], result.ood_scores[method]
            bins = np.histogram_bin_edges(np.concatenate([id_s, ood_s]), bins=40)
            ax.hist(id_s, bins=bins, alpha=0.6, label="ID", density=True)
            ax.hist(ood_s, bins=bins, alpha=0.6, label="OOD", density=True)
            m = result.metrics[method]
            ax.set_title(
                f"{result.pair}\n{method}: AUROC {m['auroc']:.3f}, "
                f"FPR95 {m['fpr95']:.3f}",
                fontsize=8,
            )
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
