"""Verified explanations of small ReLU networks (VeriX).

Wu, Wu & Barrett, "VeriX: Towards Verified Explainability of Deep Neural
Networks", NeurIPS 2023. Paper: arxiv.org/abs/2212.01051

`explain(net, x, label, epsilon, make_solver("auto"))` returns the features that
must stay fixed for the prediction to survive any epsilon-perturbation of all the
others, each step decided by a complete solver (Marabou, or exact z3).
"""

from .explanation import Explanation, explain, verify
from .masks import overlay, save_mask_grid, save_mask_png
from .network import AffineLayer, affine_layers, check_verifiable
from .sensitivity import logit_derivatives, sensitivities, sensitivity_ranking
from .solvers import (
    InvarianceSolver,
    MarabouSolver,
    Verdict,
    Z3Solver,
    default_solver,
    input_box,
    make_solver,
    marabou_available,
)

__all__ = [
    "AffineLayer",
    "Explanation",
    "InvarianceSolver",
    "MarabouSolver",
    "Verdict",
    "Z3Solver",
    "affine_layers",
    "check_verifiable",
    "default_solver",
    "explain",
    "input_box",
    "logit_derivatives",
    "make_solver",
    "marabou_available",
    "overlay",
    "save_mask_grid",
    "save_mask_png",
    "sensitivities",
    "sensitivity_ranking",
    "verify",
]
