"""Forward-mode gradient estimates: the engine Spry's clients use.

Baydin et al., "Gradients without Backpropagation" (arXiv 2202.08587); Spry
(Panchal et al., arXiv 2405.15551) applies it to a slice of the trainable weights.

For a tangent v ~ N(0, I) over the trainable tensors, one forward pass with dual
numbers gives f(w) and the directional derivative <grad f(w), v> together; the
forward gradient g = <grad f(w), v> v is an unbiased estimate of grad f(w) because
E[v v^T] = I. With K tangents, g = (1/K) sum_k <grad f, v_k> v_k. No activation is
stored for a backward pass, which is where the memory saving comes from: the pass
runs under `torch.no_grad()`, and only tensors in the slice carry tangents.

K tangents need not cost K passes: `torch.func.vmap` over the jvp carries a batch of
tangents through one pass, in which the primal computation runs once and only the
tangent computation is batched, and only from the first perturbed layer upwards
(below it nothing carries a tangent). A slice near the output, such as the task
head, gets many tangents for little more than the price of one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import (
    Batch,
    GradientEngine,
    GradientEstimate,
    Params,
    TaskLoss,
    functional_loss,
)
from .directions import (
    DISTRIBUTIONS,
    accumulate,
    direction_specs,
    sample_directions,
)


class ForwardADUnsupportedError(RuntimeError):
    """An operator in the model has no forward-mode AD rule."""


@contextmanager
def forward_ad_kernels() -> Iterator[None]:
    """Route scaled-dot-product attention to the math kernel inside a jvp.

    The fused SDPA kernels (flash, memory-efficient) have no forward-AD rule on CPU
    (pytorch #98164, #117629); the math kernel does. Models built with
    `attn_implementation="eager"` are unaffected.
    """
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def directional_derivative(
    model: nn.Module,
    loss: TaskLoss,
    batch: Batch,
    params: Params,
    tangents: Params,
) -> tuple[Tensor, Tensor, Any]:
    """`(loss, <grad loss, tangents>, aux)` in one forward pass with dual numbers."""
    f = functional_loss(model, loss, batch)
    primals = {name: value.detach() for name, value in params.items()}
    with torch.no_grad(), forward_ad_kernels():
        try:
            value, derivative, aux = torch.func.jvp(
                f, (primals,), (dict(tangents),), has_aux=True
            )
        except NotImplementedError as error:
            raise ForwardADUnsupportedError(
                f"forward-mode AD failed inside {type(model).__name__}: {error}. "
                "Build the model with attn_implementation='eager' or replace the "
                "operator named above."
            ) from error
    return value.detach(), derivative.detach(), aux


def directional_derivatives(
    model: nn.Module,
    loss: TaskLoss,
    batch: Batch,
    params: Params,
    tangents: Sequence[Params],
    *,
    chunk: int = 0,
) -> tuple[Tensor, Tensor, Any]:
    """`(loss, [<grad loss, v_k>]_k, aux)` for K tangents, batched by `torch.func.vmap`.

    `chunk` tangents go through one pass (0: all K at once); memory above the
    primal pass grows with it, time per tangent falls.
    """
    f = functional_loss(model, loss, batch)
    primals = {name: value.detach() for name, value in params.items()}
    stacked = {name: torch.stack([t[name] for t in tangents]) for name in primals}

    def one(tangent: Params) -> tuple[Tensor, Tensor, Any]:
        return torch.func.jvp(f, (primals,), (dict(tangent),), has_aux=True)

    with torch.no_grad(), forward_ad_kernels():
        try:
            values, derivatives, aux = torch.func.vmap(one, chunk_size=chunk or None)(
                stacked
            )
        except NotImplementedError as error:
            raise ForwardADUnsupportedError(
                f"batched forward-mode AD failed inside {type(model).__name__}: "
                f"{error}. Set `tangent-batch` to 1 to run one tangent per pass."
            ) from error
    # The loss and the side output do not depend on the tangent: vmap broadcast them.
    aux = torch.utils._pytree.tree_map(lambda x: x[0].detach(), aux)
    return values[0].detach(), derivatives.detach(), aux


def basis_tangents(params: Params) -> list[dict[str, Tensor]]:
    """One tangent per weight: the standard basis of `params`, in their order.

    Forward mode over the whole basis is the exact gradient (what `jacfwd` does);
    worth it for a small block near the output, whose tangents stop at the loss.
    """
    flat = torch.eye(sum(v.numel() for v in params.values()))
    tangents, offset = [], 0
    pieces = {}
    for name, value in params.items():
        pieces[name] = flat[:, offset : offset + value.numel()]
        offset += value.numel()
    for row in range(flat.shape[0]):
        tangents.append(
            {
                name: piece[row].reshape(value.shape).to(value.device, value.dtype)
                for (name, piece), value in zip(
                    pieces.items(), params.values(), strict=True
                )
            }
        )
    return tangents


class ForwardGradient(GradientEngine):
    """Forward gradient over the given tensors with K seeded tangents.

    Parameters
    ----------
    num_tangents : int (default: 1)
        K, the number of tangents averaged per batch (the paper's default is 1).
    distribution : str (default: "gaussian")
        How tangents are drawn (`directions.DISTRIBUTIONS`).
    tangent_batch : int (default: 1)
        Tangents carried by one vmapped pass (1: one jvp per tangent, as in the
        paper; 0: all of a block's tangents in one pass).
    exact : (parameter name) -> bool, optional
        Tensors whose gradient is computed exactly, by forward mode over their
        standard basis, in a pass of their own after the others' (meant for the
        task head: it sits on top, so its tangents run through the head alone and
        its exact gradient costs about one forward pass). Their scalars, the
        gradient's entries, follow the K scalars in `projected`.
    """

    name = "forward"

    def __init__(
        self,
        *,
        num_tangents: int = 1,
        distribution: str = "gaussian",
        tangent_batch: int = 1,
        exact: Callable[[str], bool] | None = None,
    ) -> None:
        if num_tangents < 1:
            raise ValueError(f"`num_tangents` should be >= 1, got {num_tangents}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"`distribution` should be one of {DISTRIBUTIONS}, got {distribution!r}"
            )
        if tangent_batch < 0:
            raise ValueError(f"`tangent_batch` should be >= 0, got {tangent_batch}")
        self.num_tangents = num_tangents
        self.distribution = distribution
        self.tangent_batch = tangent_batch
        self.exact = exact

    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        is_exact = self.exact or (lambda _: False)
        sampled = {n: v for n, v in params.items() if not is_exact(n)}
        exact = {n: v for n, v in params.items() if is_exact(n)}
        grads = {name: torch.zeros_like(value) for name, value in params.items()}
        projected: list[float] = []
        passes, value, aux = 0, None, None
        blocks = [
            (sampled, lambda: sample_directions(
                direction_specs(sampled), generator, self.num_tangents,
                self.distribution,
            ), True),
            (exact, lambda: basis_tangents(exact), False),
        ]  # fmt: skip
        for block, draw, average in blocks:
            if not block:
                continue
            tangents = draw()
            block_value, scalars, block_aux, block_passes = self._derivatives(
                model, loss, batch, block, tangents
            )
            if value is None:
                value, aux = block_value, block_aux
            weight = 1 / len(tangents) if average else 1.0
            for scalar, tangent in zip(scalars, tangents, strict=True):
                accumulate(grads, tangent, scalar * weight)
            projected.extend(scalars)
            passes += block_passes
        assert value is not None, "no tensors to differentiate"
        return GradientEstimate(
            loss=value,
            grads=grads,
            aux=aux,
            forward_passes=passes,
            projected=tuple(projected),
        )

    def _derivatives(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        block: Params,
        tangents: list[dict[str, Tensor]],
    ) -> tuple[Tensor, list[float], Any, int]:
        """(loss, one scalar per tangent, aux, passes), one jvp each or vmapped."""
        if self.tangent_batch == 1 or len(tangents) == 1:
            results = [
                directional_derivative(model, loss, batch, block, t) for t in tangents
            ]
            value, _, aux = results[-1]
            return value, [float(d) for _, d, _ in results], aux, len(results)
        value, derivatives, aux = directional_derivatives(
            model, loss, batch, block, tangents, chunk=self.tangent_batch
        )
        per_pass = self.tangent_batch or len(tangents)
        return value, derivatives.tolist(), aux, -(-len(tangents) // per_pass)
