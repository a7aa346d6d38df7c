"""OOD scores on a vision-language model's logits: CLIPScope's, MSP and energy.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737; code: github.com/fu1001hao/CLIPScope
(`CLIPScope.py`, `run`).

CLIPScope's score of an image x, with C ID classes, M mined OOD labels, logits
s_j = scale * cos(x, t_j) over the ID captions and l_m over the OOD ones:

    p(c | x)   = softmax(s)_c                    over the ID classes only
    y_hat      = argmax_c p(c | x)
    p(ID | x)  = sum_c softmax([s, l])_c         the ID share over ID + OOD labels
    S(x)       = p(y_hat | x) / p(y_hat) * p(ID | x)

p(y_hat) is the class likelihood: how often the model predicts class y_hat,
counted over the data it has scored (`prior`). Dividing by it is the Bayesian
update of the paper: a confident prediction of a rarely predicted class is
evidence of ID, one of a class the model predicts for everything is not. The
authors' code uses scale 100 (CLIP's learned one) and counts that start at one
per class and grow with each scored image (`online_clipscope_scores`).

Baselines on the same ID logits (larger = more ID, as CLIPScope):
- MSP, maximum softmax probability (Hendrycks & Gimpel, arxiv.org/abs/1610.02136);
  on CLIP's logits this is MCM (Ming et al., arxiv.org/abs/2211.13445);
- energy, T * logsumexp(s / T), the negative free energy (Liu et al.,
  arxiv.org/abs/2010.03759).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def msp_score(id_logits: Tensor) -> Tensor:
    """Maximum softmax probability over the ID classes, `(B,)`."""
    return id_logits.softmax(dim=-1).amax(dim=-1)


def energy_score(id_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Negative free energy, T * logsumexp(logits / T), `(B,)`."""
    return temperature * torch.logsumexp(id_logits / temperature, dim=-1)


def id_probability(id_logits: Tensor, ood_logits: Tensor) -> Tensor:
    """p(ID | x): the ID classes' share of the softmax over ID + OOD labels, `(B,)`.

    With no OOD labels (`ood_logits` of width 0) it is 1.
    """
    joint = torch.cat([id_logits, ood_logits], dim=-1).softmax(dim=-1)
    return joint[:, : id_logits.shape[-1]].sum(dim=-1)


def clipscope_score(id_logits: Tensor, ood_logits: Tensor, prior: Tensor) -> Tensor:
    """S(x) = p(y_hat | x) / p(y_hat) * p(ID | x), `(B,)` (module docstring).

    Parameters
    ----------
    id_logits : Tensor
        `(B, C)` logits over the ID class captions.
    ood_logits : Tensor
        `(B, M)` logits over the mined OOD labels (M may be 0: no mined labels).
    prior : Tensor
        `(C,)` class likelihood p(c), positive (`class_prior`); uniform = the
        score without the Bayesian normalization, up to a constant factor C.
    """
    if prior.shape != id_logits.shape[-1:]:
        raise ValueError(
            f"prior has shape {tuple(prior.shape)}, the ID logits "
            f"{id_logits.shape[-1]} classes"
        )
    if bool((prior <= 0).any()):
        raise ValueError("the class prior should be positive (smooth the counts)")
    probs = id_logits.softmax(dim=-1)
    top, predicted = probs.max(dim=-1)
    return top / prior[predicted] * id_probability(id_logits, ood_logits)


def online_clipscope_scores(
    id_logits: Tensor, ood_logits: Tensor, initial_counts: Tensor | None = None
) -> Tensor:
    """CLIPScope as the authors' code runs it: the prior learns as images arrive.

    Image i is scored with p(c) = counts / counts.sum() from the images before it
    (in the given order), then its predicted class is counted. Counts start at
    `initial_counts` (default: one per class, as in the code).
    """
    counts = (
        torch.ones(id_logits.shape[-1], dtype=torch.float64)
        if initial_counts is None
        else initial_counts.to(torch.float64).clone()
    )
    scores = torch.empty(len(id_logits), dtype=torch.float64)
    predicted = id_logits.argmax(dim=-1)
    for i in range(len(id_logits)):
        prior = (counts / counts.sum()).to(id_logits.dtype)
        scores[i] = clipscope_score(id_logits[i : i + 1], ood_logits[i : i + 1], prior)[
            0
        ]
        counts[predicted[i]] += 1
    return scores


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC and FPR at 95% TPR, ID the positive class (larger score = more ID).

    `fpr95`: the share of OOD images scored at or above the threshold that keeps
    95% of ID images (the first ROC point with TPR >= 0.95; sklearn's
    `roc_curve`, which keeps every threshold with `drop_intermediate=False`).
    The authors' code takes the first point with TPR > 0.95 (strictly), which
    differs only when some threshold gives exactly 95%.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    id_scores, ood_scores = np.asarray(id_scores), np.asarray(ood_scores)
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("AUROC needs both ID and OOD scores")
    labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])
    scores = np.concatenate([id_scores, ood_scores])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    at = int(np.searchsorted(tpr, 0.95, side="left"))
    return {"auroc": float(roc_auc_score(labels, scores)), "fpr95": float(fpr[at])}
