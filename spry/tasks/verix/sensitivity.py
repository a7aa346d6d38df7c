"""The order in which VeriX tries to free features: least sensitive first.

VeriX (Wu, Wu & Barrett, NeurIPS 2023, arXiv 2212.01051, Sec. 3.2) traverses the
features by sensitivity so that those least able to move the prediction are freed
first; the explanation then tends to be small. Sensitivity of feature i is

    s_i = epsilon * |d logit_label / d x_i|,

the first-order change of the label's logit when x_i moves by epsilon.

The derivatives come from forward-mode AD: one `torch.func.jvp` per one-hot tangent
e_i gives d logit / d x_i, and `torch.func.vmap` over the n tangents runs them as one
batched pass. (Backprop would give all n in one reverse pass too; forward mode keeps
to the project's engine, and a test holds both equal.) This is the one `jvp` outside
`spry/engines/forward.py`: it differentiates with respect to the input, not the
trainable parameters that engine is built around.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .network import check_verifiable


def logit_derivatives(net: nn.Module, x: Tensor, label: int) -> np.ndarray:
    """The derivatives d logit_label / d x_i, by batched forward-mode AD.

    Parameters
    ----------
    net : nn.Module
        A verifiable network (`network.check_verifiable`).
    x : Tensor
        One example, without the batch dimension (any shape).
    label : int
        The logit to differentiate.

    Returns
    -------
    np.ndarray
        (n,) float64, n = x.numel(), in the order of `x.reshape(-1)`.
    """
    check_verifiable(net)
    x = x.detach()
    n = x.numel()

    def logit(inputs: Tensor) -> Tensor:
        return net(inputs.unsqueeze(0))[0, label]  # scalar

    def derivative(tangent: Tensor) -> Tensor:
        _, jvp_out = torch.func.jvp(logit, (x,), (tangent,))
        return jvp_out

    tangents = torch.eye(n, dtype=x.dtype, device=x.device).reshape(n, *x.shape)
    with torch.no_grad():
        derivatives = torch.func.vmap(derivative)(tangents)  # (n,)
    return derivatives.cpu().to(torch.float64).numpy()


def sensitivities(net: nn.Module, x: Tensor, label: int, epsilon: float) -> np.ndarray:
    """Sensitivity of every flat feature, epsilon * |d logit_label / d x_i|: (n,)."""
    return epsilon * np.abs(logit_derivatives(net, x, label))


def sensitivity_ranking(
    net: nn.Module, x: Tensor, label: int, epsilon: float
) -> np.ndarray:
    """Flat feature indices from least to most sensitive (VeriX's traversal order).

    Ties keep index order (a stable sort), so the order is deterministic.
    """
    return np.argsort(sensitivities(net, x, label, epsilon), kind="stable")
