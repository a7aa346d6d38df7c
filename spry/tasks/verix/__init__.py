"""VeriX: an image classifier trained with Spry, explained with verified masks.

Wu, Wu & Barrett, "VeriX: Towards Verified Explainability of Deep Neural
Networks", NeurIPS 2023. Paper: arxiv.org/abs/2212.01051

Everything only VeriX uses lives here: the task (`task`), its offline image sets
(`images`), and the verification code: `explanation.explain(net, x, label,
epsilon, solvers.make_solver("auto"))` returns the features that must stay fixed
for the prediction to survive any epsilon-perturbation of all the others, each step
decided by a complete solver (Marabou, or exact z3), ranked by `sensitivity`, read
off the network by `network`, drawn by `masks`. Its packages are the `verix` extra.
"""

from ..extras import require

# Import names of the `verix` extra (pyproject.toml): Marabou reads the network
# from ONNX; z3 is the exact fallback and checker; scikit-learn ships the digits.
require("verix", ("maraboupy", "onnx", "onnxruntime", "z3", "sklearn"))

from .task import VerixTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["VerixTask"]
