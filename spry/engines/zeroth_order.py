"""Zero-order gradient estimates: the MeZO, BAFFLE and FwdLLM baselines, one class.

Spry is compared against methods that never differentiate at all: they estimate the
same quantity as the forward gradient, (grad L . v) v averaged over K random
directions, but replace the exact directional derivative grad L . v (one jvp pass)
by a finite difference of two loss values. A client then needs inference passes
only, at the price of a step size eps to choose and the error it brings. For
v ~ N(0, I) over the trainable tensors:

    center:   s = (L(w + eps v) - L(w - eps v)) / (2 eps)   = grad L . v + O(eps^2)
    forward:  s = (L(w + eps v) - L(w)) / eps                = grad L . v
                                                              + (eps/2) v^T H v + ...
    g = (1/K) sum_k s_k v_k

The center difference is exact on a quadratic. The forward one's scalar carries
the O(eps) curvature term (eps/2) v^T H v (BAFFLE's known bias; it matters
wherever the scalars themselves are used). In g that term is multiplied by v and is
odd in v, E[(v^T H v) v] = 0 for Gaussian v, so it adds variance, not bias: both
formats' g is biased only at O(eps^2), through third derivatives. The three
methods differ only in (eps, format):

========  =====================================  ========  ======  ================
registry  method                                 format    eps     forward passes
========  =====================================  ========  ======  ================
mezo      MeZO / SPSA; FedMeZO's local step      center    1e-3    2K
baffle    BAFFLE                                 forward   1e-4    K + 1 (shared
                                                 (center)          clean pass) / 2K
fwdllm    FwdLLM's estimator                     center    1e-2    2K
========  =====================================  ========  ======  ================

Sources (the authors' code, read at the commits in shared/BASELINES.md):
MeZO, Malladi et al., arXiv 2305.17333, princeton-nlp/MeZO
`large_models/trainer.py` (`zo_step`, eps 1e-3); FedMeZO, Ling et al.,
arXiv 2402.05926 (runs MeZO steps locally and uploads weights); BAFFLE, Feng et al.,
arXiv 2301.12195, FengHZ/BAFFLE `model/stein_identity.py` (sigma 1e-4, forward by
default, writes delta = sigma v, so its (dL / sigma)(delta / sigma) is the formula
above); FwdLLM, Xu et al., arXiv 2308.13894, UbiquitousLearning/FwdLLM
`forward_training/utils/fwdgrad_utils.py` (`calculate_jvp`, central, h = 0.01
hard-coded).

Choices, and why:

- The probes substitute perturbed copies through `functional_loss` instead of
  writing w + eps v into the weights in place (MeZO's +eps, -2eps, +eps walk). The
  caller's tensors are never written, so they are bit-exact afterwards by
  construction (the in-place walk is not, in any float format), `params` may be
  tensors other than the model's own (the interface allows it), and the extra memory,
  one perturbed copy of the trainable tensors plus the direction, is what keeping a
  restore copy would cost anyway.
- Probes need fp32 or wider: at eps = 1e-4, w + eps v rounds back to w in bf16/fp16
  and the difference is noise. Half-precision `params` are refused.
- Probes run in the mode the caller set; callers use `model.eval()`, because fresh
  dropout noise in each probe, divided by eps, swamps the signal (BAFFLE and Spry's
  baselines run in train mode; BASELINES.md section 2). With `client.dropout` the
  caller seeds the masks per step (`spry.training.with_seeded_masks`): the +eps and
  -eps probes then see the same masks and their difference is the signal again.
- Directions come from `generator` only, drawn tensor by tensor in the order of
  `params`, the stream `ForwardGradient`'s tangents uses: one seed gives the
  same directions to every engine, and `rebuild_from_scalars` regenerates them from
  the seed and the K scalars in `GradientEstimate.projected` (BAFFLE's paper mode
  and the scalar uploads send just those). They are drawn on the generator's device
  and moved: clients use CPU generators, so server and client agree whatever device
  trains (CPU and CUDA streams differ).
- Reported loss: the forward format has L(w) from its clean pass and reports it with
  that pass's aux. The center format makes no clean pass (it would cost a (2K+1)th
  pass for a number only logged) and reports the mean over k of
  (L(w + eps v_k) + L(w - eps v_k)) / 2, which is L(w) + O(eps^2), with the aux of
  the last w + eps v probe.

Strategy-level parts live with the strategies: FwdLLM's choice of directions by
cosine to the previous gradient (`spry.engines.selection`, set as `directions`) and
its variance pacing (`strategies/fwdllm.py`); BAFFLE's shared seeds and inf-norm clip
(`strategies/baffle.py`); BAFFLE's EMA of the global weights is not implemented.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from .base import (
    Batch,
    GradientEngine,
    GradientEstimate,
    Params,
    TaskLoss,
    check_params,
    functional_loss,
)
from .directions import (
    DirectionSpec,
    accumulate,
    direction_specs,
    sample_direction,
)

FDFormat = Literal["forward", "center"]
LossOfParams = Callable[[Params], tuple[Tensor, Any]]
DirectionSource = Callable[
    [Mapping[str, DirectionSpec], torch.Generator], dict[str, Tensor]
]
FD_FORMATS: tuple[FDFormat, ...] = ("forward", "center")

MEZO_EPS = 1e-3  # MeZO zo_eps default (RoBERTa-large full and LoRA)
BAFFLE_EPS = 1e-4  # BAFFLE main.py sigma
FWDLLM_EPS = 1e-2  # FwdLLM calculate_jvp, hard-coded


def _require_full_precision(params: Params) -> None:
    for name, value in params.items():
        if torch.finfo(value.dtype).bits < 32:
            raise ValueError(
                f"{name!r} is {value.dtype}: finite-difference probes need fp32 or "
                "wider (a step of 1e-4 rounds away in half precision)"
            )


def _as_format(fd_format: str) -> FDFormat:
    if fd_format not in FD_FORMATS:
        raise ValueError(
            f"`fd_format` should be one of {FD_FORMATS}, got {fd_format!r}"
        )
    return cast(FDFormat, fd_format)


def _shifted(
    theta: Params, direction: Mapping[str, Tensor], step: float
) -> dict[str, Tensor]:
    """`theta + step * direction`, as new tensors (theta itself is not written)."""
    return {name: theta[name].add(direction[name], alpha=step) for name in theta}


def _detach(aux: Any) -> Any:
    return aux.detach() if isinstance(aux, Tensor) else aux


class FiniteDifference(GradientEngine):
    r"""Finite-difference (zero-order) gradient over K seeded Gaussian directions.

    .. math::

        \hat g = \frac{1}{K} \sum_k s_k v_k, \quad
        s_k = \frac{L(w + \epsilon v_k) - L(w - \epsilon v_k)}{2\epsilon}
        \ \text{(center)} \quad\text{or}\quad
        \frac{L(w + \epsilon v_k) - L(w)}{\epsilon}\ \text{(forward)}

    The presets `mezo`, `baffle` and `fwdllm` give the published settings. The
    estimate's `loss` is the clean L(w) (forward format) or the mean of the probe
    midpoints (L(w + eps v) + L(w - eps v)) / 2 = L(w) + O(eps^2) (center format);
    `projected` holds the K scalars s_k.

    Parameters
    ----------
    num_tangents : int (default: 1)
        K, the number of directions averaged per batch.
    eps : float (default: 1e-3)
        The finite-difference step (MeZO's epsilon, BAFFLE's sigma, FwdLLM's h).
    fd_format : {"center", "forward"} (default: "center")
        Central difference (2K passes; exact on quadratics) or forward difference
        (K + 1 passes: one probe per direction and one shared clean pass; each
        scalar is off by (eps/2) v^T H v).
    directions : (specs, generator) -> direction (default: `sample_direction`)
        Where each direction comes from. FwdLLM replaces N(0, I) by candidates
        chosen by their cosine to the previous step's gradient.
    """

    name = "finite-difference"

    def __init__(
        self,
        *,
        num_tangents: int = 1,
        eps: float = MEZO_EPS,
        fd_format: FDFormat = "center",
        directions: DirectionSource = sample_direction,
    ) -> None:
        if num_tangents < 1:
            raise ValueError(f"`num_tangents` should be >= 1, got {num_tangents}")
        if not 0 < eps < float("inf"):
            raise ValueError(f"`eps` should be a positive number, got {eps}")
        self.num_tangents = num_tangents
        self.eps = eps
        self.fd_format = _as_format(fd_format)
        self.directions = directions

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_tangents={self.num_tangents}, "
            f"eps={self.eps}, fd_format={self.fd_format!r})"
        )

    @property
    def forward_passes(self) -> int:
        """Forward passes one estimate costs: 2K (center) or K + 1 (forward)."""
        k = self.num_tangents
        return k + 1 if self.fd_format == "forward" else 2 * k

    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        check_params(model, params)
        _require_full_precision(params)
        f = functional_loss(model, loss, batch)
        theta = {name: value.detach() for name, value in params.items()}
        specs = direction_specs(theta)
        grads = {name: torch.zeros_like(value) for name, value in theta.items()}
        scalars: list[float] = []
        midpoints: list[Tensor] = []
        with torch.no_grad():
            clean, aux = f(theta) if self.fd_format == "forward" else (None, None)
            for k in range(self.num_tangents):
                v = self.directions(specs, generator)
                scalar, midpoint, probe_aux = self._difference(f, theta, v, clean)
                accumulate(grads, v, self._weight(k, scalar))
                scalars.append(scalar)
                midpoints.append(midpoint)
                if clean is None:  # center: the aux of the latest + probe
                    aux = probe_aux
        return GradientEstimate(
            loss=clean.detach() if clean is not None else torch.stack(midpoints).mean(),
            grads=grads,
            aux=_detach(aux),
            forward_passes=self.forward_passes,
            projected=tuple(scalars),
        )

    def _weight(self, k: int, scalar: float) -> float:
        """The k-th direction's weight in the estimate: s_k / K."""
        del k
        return scalar / self.num_tangents

    def _difference(
        self, f: LossOfParams, theta: Params, v: Params, clean: Tensor | None
    ) -> tuple[float, Tensor, Any]:
        """`(s, midpoint loss, aux of the + probe)` for one direction `v`.

        Forward format when `clean` (the loss at theta) is given, else center.
        """
        plus, aux = f(_shifted(theta, v, self.eps))
        if clean is not None:
            return (float(plus) - float(clean)) / self.eps, clean, aux
        minus, _ = f(_shifted(theta, v, -self.eps))
        scalar = (float(plus) - float(minus)) / (2 * self.eps)
        return scalar, ((plus + minus) / 2).detach(), aux


def _center_only(method: str, fd_format: str | None) -> FDFormat:
    if fd_format not in (None, "center"):
        raise ValueError(
            f"{method} uses central differences; `fd_format` {fd_format!r} applies "
            "to baffle only"
        )
    return "center"


def mezo(
    *, num_tangents: int = 1, eps: float | None = None, fd_format: str | None = None
) -> FiniteDifference:
    """MeZO's SPSA estimator (FedMeZO's local step): center, eps 1e-3."""
    return FiniteDifference(
        num_tangents=num_tangents,
        eps=MEZO_EPS if eps is None else eps,
        fd_format=_center_only("mezo", fd_format),
    )


def baffle(
    *, num_tangents: int = 1, eps: float | None = None, fd_format: str | None = None
) -> FiniteDifference:
    """BAFFLE's estimator: sigma 1e-4, forward format unless `fd_format="center"`."""
    return FiniteDifference(
        num_tangents=num_tangents,
        eps=BAFFLE_EPS if eps is None else eps,
        fd_format=_as_format("forward" if fd_format is None else fd_format),
    )


def fwdllm(
    *, num_tangents: int = 1, eps: float | None = None, fd_format: str | None = None
) -> FiniteDifference:
    """FwdLLM's estimator: center, h 1e-2, directions N(0, I).

    FwdLLM itself picks each direction by cosine to the previous step's gradient
    and adds directions until a variance probe falls below a threshold; both are
    strategy-level (they need the server's state) and are not part of this engine.
    """
    return FiniteDifference(
        num_tangents=num_tangents,
        eps=FWDLLM_EPS if eps is None else eps,
        fd_format=_center_only("fwdllm", fd_format),
    )
