"""What a network must look like for VeriX to verify it, and its affine layers.

VeriX (Wu, Wu & Barrett, "VeriX: Towards Verified Explainability of Deep Neural
Networks", NeurIPS 2023, arXiv 2212.01051) asks a complete solver whether the
prediction survives a box of inputs. Both of our solvers reason about
piecewise-linear networks only, so a verifiable network is an `nn.Sequential` of
`nn.Flatten`, `nn.Linear` and `nn.ReLU`: anything else is refused here, by name,
before a solver sees it, instead of failing deep inside an ONNX parser.

The solvers read the network as float64 numpy affine layers. A float32 weight is
exactly a float64 one, so the exact (z3) and the floating-point (Marabou) solver
decide the same network.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

_ALLOWED = (nn.Flatten, nn.Linear, nn.ReLU)

# Unit roundoff of float64: a bound on the relative error of one rounding.
_UNIT_ROUNDOFF = 2.0**-53


@dataclass(frozen=True)
class AffineLayer:
    """One `y = W x + b`, optionally followed by a ReLU.

    Parameters
    ----------
    weight : np.ndarray
        (out, in) float64.
    bias : np.ndarray
        (out,) float64.
    relu : bool
        Whether a ReLU follows the affine map.
    """

    weight: np.ndarray
    bias: np.ndarray
    relu: bool

    def __call__(self, h: np.ndarray) -> np.ndarray:
        z = self.weight @ h + self.bias  # (out,)
        return np.maximum(z, 0.0) if self.relu else z


def check_verifiable(net: nn.Module) -> nn.Sequential:
    """Return `net` if it is a Flatten/Linear/ReLU `nn.Sequential`, else raise.

    Raises
    ------
    ValueError
        Naming the offending module (its index and type) or the reason.
    """
    if not isinstance(net, nn.Sequential):
        raise ValueError(
            "VeriX needs an nn.Sequential of Flatten, Linear and ReLU; "
            f"got {type(net).__name__}"
        )
    seen_linear = False
    for index, layer in enumerate(net):
        if not isinstance(layer, _ALLOWED):
            raise ValueError(
                f"layer {index} ({type(layer).__name__}) is not verifiable: "
                "only nn.Flatten, nn.Linear and nn.ReLU are supported"
            )
        if isinstance(layer, nn.Flatten) and (layer.start_dim, layer.end_dim) != (
            1,
            -1,
        ):
            # Another Flatten would fold the batch dimension or keep a feature
            # axis; the solvers assume one flat feature vector per example.
            raise ValueError(
                f"layer {index} (Flatten) must flatten dims 1..-1, got "
                f"start_dim={layer.start_dim}, end_dim={layer.end_dim}"
            )
        if isinstance(layer, nn.ReLU) and not seen_linear:
            raise ValueError(
                f"layer {index} (ReLU) comes before any Linear; a ReLU on the "
                "input itself is not supported"
            )
        seen_linear = seen_linear or isinstance(layer, nn.Linear)
    if not seen_linear:
        raise ValueError("VeriX needs at least one nn.Linear layer")
    return net


def affine_layers(net: nn.Module) -> list[AffineLayer]:
    """The network as float64 affine layers, each with its trailing ReLU flag.

    Flatten is the identity on one example's flat features; a repeated ReLU is
    idempotent, so it only sets the flag.
    """
    layers: list[AffineLayer] = []
    for layer in check_verifiable(net):
        if isinstance(layer, nn.Linear):
            weight = layer.weight.detach().cpu().to(torch.float64).numpy().copy()
            bias = (
                layer.bias.detach().cpu().to(torch.float64).numpy().copy()
                if layer.bias is not None
                else np.zeros(layer.out_features)
            )
            layers.append(AffineLayer(weight, bias, relu=False))
        elif isinstance(layer, nn.ReLU):
            last = layers[-1]
            layers[-1] = AffineLayer(last.weight, last.bias, relu=True)
    return layers


def flat_input(x: Tensor | np.ndarray) -> np.ndarray:
    """One example's features as a flat float64 vector (the indices VeriX uses)."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def forward(layers: list[AffineLayer], x: np.ndarray) -> np.ndarray:
    """float64 logits of one flat example: a reference to check solvers against."""
    h = np.asarray(x, dtype=np.float64).reshape(-1)
    for layer in layers:
        h = layer(h)
    return h


def _affine_bounds(
    layer: AffineLayer, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sound bounds on `W h + b` for h in [lo, hi], float64 rounding included.

    A dot product of n terms computed in floating point is within
    gamma_n * sum |terms| of the exact one, gamma_n = n u / (1 - n u) (Higham,
    "Accuracy and Stability of Numerical Algorithms", Sec. 3.1), whatever the
    summation order; 2 (n + 1) u covers it with the bias and the final additions.
    """
    w_pos = np.maximum(layer.weight, 0.0)
    w_neg = np.minimum(layer.weight, 0.0)
    z_lo = w_pos @ lo + w_neg @ hi + layer.bias  # (out,)
    z_hi = w_pos @ hi + w_neg @ lo + layer.bias  # (out,)
    magnitude = np.abs(layer.weight) @ np.maximum(np.abs(lo), np.abs(hi))
    n = layer.weight.shape[1] + 1
    slack = 2.0 * n * _UNIT_ROUNDOFF * (magnitude + np.abs(layer.bias)) + 1e-300
    return z_lo - slack, z_hi + slack


def _activate(
    layer: AffineLayer, z_lo: np.ndarray, z_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    if layer.relu:
        return np.maximum(z_lo, 0.0), np.maximum(z_hi, 0.0)
    return z_lo, z_hi


def interval_bounds(
    layers: list[AffineLayer], lower: np.ndarray, upper: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sound bounds on every layer's pre-activation over the box [lower, upper].

    Interval arithmetic: exact for the first layer (a box maps to the tightest
    interval of each output), loose after it. Each interval is widened by a
    rigorous bound on the float64 rounding, so it contains the exact real one.

    Returns
    -------
    list[tuple[np.ndarray, np.ndarray]]
        Per layer, (lower, upper) of `W h + b` before the ReLU.
    """
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    for layer in layers:
        z_lo, z_hi = _affine_bounds(layer, lo, hi)
        bounds.append((z_lo, z_hi))
        lo, hi = _activate(layer, z_lo, z_hi)
    return bounds


def margin_lower_bounds(
    layers: list[AffineLayer], lower: np.ndarray, upper: np.ndarray, label: int
) -> np.ndarray:
    """Sound lower bounds on `y_label - y_j` over the box, for every class j.

    The last affine layer is folded into one row per class, `W_label - W_j`, which
    is tighter than subtracting the two classes' intervals. A positive entry proves
    that class j never catches up with the label in the box, with no solver call.

    Returns
    -------
    np.ndarray
        (classes,) float64; +inf at `label`.
    """
    *hidden, last = layers
    lo = np.asarray(lower, dtype=np.float64)
    hi = np.asarray(upper, dtype=np.float64)
    for layer in hidden:
        lo, hi = _activate(layer, *_affine_bounds(layer, lo, hi))
    if last.relu:
        y_lo, y_hi = _activate(last, *_affine_bounds(last, lo, hi))
        margin = y_lo[label] - y_hi
        margin -= 2.0 * _UNIT_ROUNDOFF * (abs(y_lo[label]) + np.abs(y_hi))
    else:
        # Each float64 entry of W_label - W_j is within 2u of the exact
        # difference (relative), which the extra slack below accounts for.
        difference = AffineLayer(
            last.weight[label] - last.weight, last.bias[label] - last.bias, False
        )
        margin, _ = _affine_bounds(difference, lo, hi)
        magnitude = np.abs(difference.weight) @ np.maximum(np.abs(lo), np.abs(hi))
        margin -= 2.0 * _UNIT_ROUNDOFF * (magnitude + np.abs(difference.bias))
    margin[label] = np.inf
    return margin


def fingerprint(net: nn.Module, input_shape: tuple[int, ...]) -> str:
    """A digest of the architecture, the weights and the input shape.

    Solvers cache a parsed network under it: a network trained further (same
    object, new weights) gets a new digest and is parsed again.
    """
    digest = hashlib.sha1(repr(tuple(input_shape)).encode())
    for layer in affine_layers(net):
        digest.update(repr((layer.weight.shape, layer.relu)).encode())
        digest.update(layer.weight.tobytes())
        digest.update(layer.bias.tobytes())
    return digest.hexdigest()
