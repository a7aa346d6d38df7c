"""VeriX: the smallest-by-traversal set of features that fixes a prediction.

Wu, Wu & Barrett, "VeriX: Towards Verified Explainability of Deep Neural
Networks", NeurIPS 2023. Paper: arxiv.org/abs/2212.01051

An explanation E of a prediction at x is a set of features such that, with the
features in E held at their values and every other feature free to move within
epsilon, the prediction cannot change (soundness), and no feature of E can be
freed as well (local minimality: for each i in E, freeing it breaks invariance).

VeriX builds one with a single pass: features are tried in a traversal order
(least sensitive first, `sensitivity.sensitivity_ranking`); a feature joins the
freed set if the prediction stays invariant with it and all previously freed
features free, else it joins the explanation. One solver call per feature; the
result is sound by construction and locally minimal because the freed set only
grows (a feature rejected against a smaller freed set is rejected against the
final, larger one too).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from .network import check_verifiable, flat_input
from .sensitivity import sensitivity_ranking
from .solvers import InvarianceSolver


@dataclass
class Explanation:
    """A VeriX explanation of one prediction.

    Parameters
    ----------
    label : int
        The explained prediction.
    epsilon : float
        How far each freed feature may move.
    features : list[int]
        The explanation: flat indices of the features that must stay fixed, sorted.
    freed : list[int]
        The other flat indices (irrelevant: free together, they cannot flip the
        label), sorted.
    seconds : float
        Wall time of the traversal (ranking and solver calls; not the re-check).
    solver_calls : int
        Invariance questions asked during the traversal (one per feature).
    verified : bool
        Whether an independent re-check, freeing every feature in `freed` at once,
        found the prediction invariant (`verify`).
    lower : float (default: 0.0)
        Lowest value a feature may take.
    upper : float (default: 1.0)
        Highest value a feature may take.
    solver : str (default: "")
        Name of the solver that built it.
    traversal : list[int] (default: [])
        The order in which the features were tried.
    """

    label: int
    epsilon: float
    features: list[int]
    freed: list[int]
    seconds: float
    solver_calls: int
    verified: bool
    lower: float = 0.0
    upper: float = 1.0
    solver: str = ""
    traversal: list[int] = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        """Number of features in the explanation."""
        return len(self.features)

    def mask(self, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Boolean mask of the explanation's features, flat or in `shape`."""
        flat = np.zeros(len(self.features) + len(self.freed), dtype=bool)
        flat[self.features] = True
        return flat if shape is None else flat.reshape(shape)


def _check_ranking(ranking: Sequence[int] | np.ndarray, n: int) -> list[int]:
    order = [int(i) for i in ranking]
    if sorted(order) != list(range(n)):
        raise ValueError(
            f"ranking must be a permutation of the {n} flat feature indices; "
            f"got {len(order)} entries"
        )
    return order


def explain(
    net: nn.Module,
    x: Tensor | np.ndarray,
    label: int,
    epsilon: float,
    solver: InvarianceSolver,
    ranking: Sequence[int] | np.ndarray | None = None,
    *,
    lower: float = 0.0,
    upper: float = 1.0,
    checker: InvarianceSolver | None = None,
) -> Explanation:
    """Compute a VeriX explanation of `net`'s prediction `label` at `x`.

    Parameters
    ----------
    net : nn.Module
        A verifiable network (Flatten/Linear/ReLU `nn.Sequential`).
    x : Tensor | np.ndarray
        One example without the batch dimension; features are `x.reshape(-1)`.
    label : int
        The prediction to explain; it must be the network's argmax at `x`.
    epsilon : float
        Perturbation radius of each freed feature.
    solver : InvarianceSolver
        Answers the invariance questions (`solvers.make_solver`).
    ranking : Sequence[int] | None (default: None)
        Traversal order of the flat features; default: least sensitive first.
    lower, upper : float (default: 0.0, 1.0)
        The valid range of every feature (the box is clipped to it).
    checker : InvarianceSolver | None (default: None)
        Solver of the soundness re-check; default `solver`. Pass the other backend
        to have the explanation confirmed by an independent implementation.
    """
    check_verifiable(net)
    x_tensor = torch.as_tensor(x).detach()
    with torch.no_grad():
        prediction = int(net(x_tensor.unsqueeze(0).to(_dtype(net))).argmax())
    if prediction != label:
        raise ValueError(
            f"explain: the network predicts {prediction} at x, not {label}; VeriX "
            "explains the network's own prediction"
        )
    n = x_tensor.numel()

    start = time.perf_counter()
    if ranking is None:
        ranking = sensitivity_ranking(net, x_tensor.to(_dtype(net)), label, epsilon)
    order = _check_ranking(ranking, n)
    freed: list[int] = []
    features: list[int] = []
    for feature in order:
        if solver.is_invariant(net, x, label, [*freed, feature], epsilon, lower, upper):
            freed.append(feature)
        else:
            features.append(feature)
    seconds = time.perf_counter() - start

    explanation = Explanation(
        label=label,
        epsilon=epsilon,
        features=sorted(features),
        freed=sorted(freed),
        seconds=seconds,
        solver_calls=len(order),
        verified=False,
        lower=lower,
        upper=upper,
        solver=solver.name,
        traversal=order,
    )
    explanation.verified = verify(net, x, explanation, checker or solver)
    return explanation


def verify(
    net: nn.Module,
    x: Tensor | np.ndarray,
    explanation: Explanation,
    solver: InvarianceSolver,
    *,
    minimality: bool = False,
) -> bool:
    """Re-check an explanation: sound, and (with `minimality`) locally minimal.

    Soundness is one question: with every feature outside the explanation free at
    once, is the prediction invariant? Local minimality asks, for each explanation
    feature, whether freeing it as well breaks invariance (one call per feature).
    """
    n = flat_input(x).size
    if sorted(explanation.features + explanation.freed) != list(range(n)):
        return False

    def invariant(free: list[int]) -> bool:
        return solver.is_invariant(
            net,
            x,
            explanation.label,
            free,
            explanation.epsilon,
            explanation.lower,
            explanation.upper,
        )

    if not invariant(explanation.freed):
        return False
    if minimality:
        return not any(
            invariant([*explanation.freed, feature]) for feature in explanation.features
        )
    return True


def _dtype(net: nn.Module) -> torch.dtype:
    parameter = next(net.parameters(), None)
    return parameter.dtype if parameter is not None else torch.float32
