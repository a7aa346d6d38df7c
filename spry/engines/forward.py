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

Dropout (a model in train mode) makes the loss random; the masks must then be part
of the function, the same in every pass of one estimate. The caller seeds them per
step (`spry.training.with_seeded_masks`), and a vmapped pass draws them once for all
its tangents (`randomness="same"`), so K tangents, one pass each or batched, see
one mask, the one a backprop pass under the same seed sees.

With a guess (`tangent-guess`: the previous round's global update) the tangents
lean toward it and E[v v^T] is no longer I: the estimate is then biased toward the
guess (`directions.guessed_directions` states by how much).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_map  # torch.func's own pytree helpers

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
    guessed_directions,
    sample_directions,
    unflatten,
)
from .duals import DEFAULT_BLOCK_MIB, block_budget
from .frozen import frozen_linears
from .fused import fused_rules


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


@contextmanager
def forward_mode(model: nn.Module, *, fused: bool = True) -> Iterator[None]:
    """Run a forward-mode pass: no graph, math SDPA, lean frozen linears, fused rules.

    No autograd graph is recorded, attention takes the math SDPA kernel, frozen
    linear layers skip their materialized zero tangents (`frozen.py`), and with
    `fused` attention, norms and frozen feed-forward blocks compute their tangents
    by their own rules, a block at a time (`fused.py`); without it, by PyTorch's
    per-operator rules.
    """
    with ExitStack() as stack:
        for context in (torch.no_grad(), forward_ad_kernels(), frozen_linears(model)):
            stack.enter_context(context)
        if fused:
            stack.enter_context(fused_rules(model))
        yield


def directional_derivative(
    model: nn.Module,
    loss: TaskLoss,
    batch: Batch,
    params: Params,
    tangents: Params,
    *,
    fused: bool = True,
) -> tuple[Tensor, Tensor, Any]:
    """`(loss, <grad loss, tangents>, aux)` in one forward pass with dual numbers."""
    f = functional_loss(model, loss, batch)
    primals = {name: value.detach() for name, value in params.items()}
    with forward_mode(model, fused=fused):
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
    stacked: Params,
    *,
    chunk: int = 0,
    fused: bool = True,
) -> tuple[Tensor, Tensor, Any]:
    """`(loss, [<grad loss, v_k>]_k, aux)` for K tangents, batched by `torch.func.vmap`.

    `stacked` holds the K tangents as name -> (K, *shape) (`stack`). `chunk`
    tangents go through one pass (0: all K at once); memory above the primal pass
    grows with it, time per tangent falls. Random operations in the loss (dropout
    in train mode) draw once for all K (`randomness="same"`): the K tangents
    differentiate one function, as K separate passes under one seed would.
    """
    f = functional_loss(model, loss, batch)
    primals = {name: value.detach() for name, value in params.items()}

    def one(tangent: Params) -> tuple[Tensor, Tensor, Any]:
        return torch.func.jvp(f, (primals,), (dict(tangent),), has_aux=True)

    with forward_mode(model, fused=fused):
        try:
            values, derivatives, aux = torch.func.vmap(
                one, chunk_size=chunk or None, randomness="same"
            )(stacked)
        except NotImplementedError as error:
            raise ForwardADUnsupportedError(
                f"batched forward-mode AD failed inside {type(model).__name__}: "
                f"{error}. Set `tangent-batch` to 1 to run one tangent per pass."
            ) from error
    # The loss and the side output do not depend on the tangent: vmap broadcast them.
    aux = tree_map(lambda x: x[0].detach(), aux)
    return values[0].detach(), derivatives.detach(), aux


def basis_tangents(params: Params) -> dict[str, Tensor]:
    """The standard basis of `params`, stacked: name -> (d, *shape), d weights in all.

    Forward mode over the whole basis is the exact gradient (what `jacfwd` does);
    worth it for a small block near the output, whose tangents stop at the loss.
    """
    return unflatten(torch.eye(sum(v.numel() for v in params.values())), params)


def stack(tangents: Sequence[Params]) -> dict[str, Tensor]:
    """K tangents as one batch: name -> (K, *shape)."""
    return {name: torch.stack([t[name] for t in tangents]) for name in tangents[0]}


def derivatives_with_exact(
    model: nn.Module,
    loss: TaskLoss,
    batch: Batch,
    params: Params,
    tangents: Sequence[Params],
    exact: Params,
    *,
    chunk: int = 0,
    fused: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Any]:
    """`(loss, [<grad, v_k>]_k, the exact gradient of `exact`, aux)` in one pass.

    Nested transforms: reverse mode (`torch.func.grad`) differentiates the loss
    with respect to `exact`, and inside it a jvp carries each tangent v_k of
    `params`. The jvp is the inner one so that the fused rules see their inputs'
    tangents (`duals.py`). Only what depends on `exact` is recorded for the
    reverse pass (for the head: the head and the loss), so the exact block costs no
    second forward pass of the network and memory linear in its size (forward mode
    over its standard basis would hold a d x d identity: 16 MiB for RoBERTa-large's
    head, GiBs for wider ones). `chunk` is as in `directional_derivatives` (1: one
    pass per tangent).
    """
    f = functional_loss(model, loss, batch)
    primals = {name: value.detach() for name, value in params.items()}
    fixed = {name: value.detach() for name, value in exact.items()}

    def per_tangent(tangent: Params) -> tuple[Tensor, Tensor, Tensor, Any]:
        def value_of(e: Params) -> tuple[Tensor, tuple[Tensor, Tensor, Any]]:
            def at(current: Params) -> tuple[Tensor, Any]:
                return f({**current, **e})

            value, derivative, aux = torch.func.jvp(
                at, (primals,), (dict(tangent),), has_aux=True
            )
            return value, (value, derivative, aux)

        grads, (value, derivative, aux) = torch.func.grad(value_of, has_aux=True)(fixed)
        exact_grad = torch.cat([g.reshape(-1) for g in grads.values()])
        return value, derivative, exact_grad, aux

    with forward_mode(model, fused=fused):
        try:
            if chunk == 1 or len(tangents) == 1:
                results = [per_tangent(t) for t in tangents]
                value, _, exact_grad, aux = results[-1]
                derivatives = torch.stack([r[1] for r in results])
            else:
                values, derivatives, grads, aux = torch.func.vmap(
                    per_tangent, chunk_size=chunk or None, randomness="same"
                )(stack(tangents))
                value, exact_grad = values[0], grads[0]
                aux = tree_map(lambda x: x[0], aux)
        except NotImplementedError as error:
            raise ForwardADUnsupportedError(
                f"forward-mode AD failed inside {type(model).__name__}: {error}"
            ) from error
    return (
        value.detach(),
        derivatives.detach(),
        exact_grad.detach(),
        tree_map(lambda x: x.detach(), aux),
    )


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
        Tensors whose gradient is computed exactly (meant for the task head: it
        sits on top). With other tensors in the slice, by reverse mode
        (`torch.func.grad`) over them alone, nested inside the slice's jvp
        (`derivatives_with_exact`): no extra forward pass, only the head and the
        loss recorded. Alone in the slice, by forward mode over their standard
        basis in one vmapped pass. The gradient's entries follow the K scalars
        in `projected`.
    guess : Mapping[str, Tensor] | None (default: None)
        A guess of the gradient's direction (the previous round's global update)
        over the sampled tensors, keyed as `params`: with `guess_weight` b > 0
        each tangent is tilted toward it (`directions.guessed_directions`), which
        biases the estimate toward the guess: its mean is
        (1-b) grad + b d <grad, u> u, u the unit guess, d the sampled weights.
        The exact tensors are not touched. None, or a zero guess: plain tangents.
    guess_weight : float (default: 0.0)
        b in [0, 1), the share of each tangent's expected squared norm along the
        guess (0: plain tangents, bit for bit).
    fused : bool (default: True)
        Attention, norms and frozen feed-forward blocks take their fused tangent
        rules (`fused.py`); False: PyTorch's per-operator forward-AD rules.
    block_mib : float (default: 2.0)
        MiB one block of a fused rule's work may take (`duals.block_budget`):
        larger blocks run fewer, larger kernels and hold more memory at the peak.
    """

    name = "forward"

    def __init__(
        self,
        *,
        num_tangents: int = 1,
        distribution: str = "gaussian",
        tangent_batch: int = 1,
        exact: Callable[[str], bool] | None = None,
        guess: Mapping[str, Tensor] | None = None,
        guess_weight: float = 0.0,
        fused: bool = True,
        block_mib: float = DEFAULT_BLOCK_MIB,
    ) -> None:
        if num_tangents < 1:
            raise ValueError(f"`num_tangents` should be >= 1, got {num_tangents}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"`distribution` should be one of {DISTRIBUTIONS}, got {distribution!r}"
            )
        if tangent_batch < 0:
            raise ValueError(f"`tangent_batch` should be >= 0, got {tangent_batch}")
        if not 0.0 <= guess_weight < 1.0:
            raise ValueError(f"`guess_weight` should be in [0, 1), got {guess_weight}")
        if not block_mib > 0:
            raise ValueError(f"`block_mib` should be > 0, got {block_mib}")
        self.num_tangents = num_tangents
        self.distribution = distribution
        self.tangent_batch = tangent_batch
        self.exact = exact
        self.guess = dict(guess or {})
        self.guess_weight = guess_weight
        self.fused = fused
        self.block_mib = block_mib

    def is_exact(self, name: str) -> bool:
        return self.exact is not None and self.exact(name)

    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        with block_budget(self.block_mib):
            return self._estimate(model, loss, batch, params, generator)

    def _estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        generator: torch.Generator,
    ) -> GradientEstimate:
        is_exact = self.exact or (lambda _: False)
        sampled = {n: v for n, v in params.items() if not is_exact(n)}
        exact = {n: v for n, v in params.items() if is_exact(n)}
        if not params:
            raise ValueError("no tensors to differentiate")
        tangents = (
            sample_directions(
                direction_specs(sampled), generator, self.num_tangents,
                self.distribution,
            )
            if sampled
            else []
        )  # fmt: skip
        if self.guess_weight and self.guess:  # after the plain draws: b=0 is as was
            tangents = guessed_directions(
                tangents, self.guess, self.guess_weight, generator
            )
        chunk = self.tangent_batch
        if sampled and exact:
            value, scalars, exact_grad, aux = derivatives_with_exact(
                model,
                loss,
                batch,
                sampled,
                tangents,
                exact,
                chunk=chunk,
                fused=self.fused,
            )
        elif sampled:
            value, scalars, aux = self._derivatives(
                model, loss, batch, sampled, tangents
            )
            exact_grad = None
        else:
            value, exact_grad, aux = directional_derivatives(  # basis: one batch
                model, loss, batch, exact, basis_tangents(exact), fused=self.fused
            )
            scalars = torch.empty(0)
        grads = {name: torch.zeros_like(value) for name, value in params.items()}
        projected = scalars.tolist()
        for scalar, tangent in zip(projected, tangents, strict=True):
            accumulate(grads, tangent, scalar / len(tangents))
        if exact_grad is not None:
            grads.update(unflatten(exact_grad, exact))
            projected += exact_grad.tolist()
        per_pass = 1 if chunk == 1 else (chunk or len(tangents) or 1)
        return GradientEstimate(
            loss=value,
            grads=grads,
            aux=aux,
            forward_passes=-(-max(len(tangents), 1) // per_pass),
            projected=tuple(projected),
        )

    def _derivatives(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        block: Params,
        tangents: list[dict[str, Tensor]],
    ) -> tuple[Tensor, Tensor, Any]:
        """(loss, one scalar per tangent, aux), one jvp each or vmapped."""
        if self.tangent_batch == 1 or len(tangents) == 1:
            results = [
                directional_derivative(model, loss, batch, block, t, fused=self.fused)
                for t in tangents
            ]
            value, _, aux = results[-1]
            return value, torch.stack([d for _, d, _ in results]), aux
        return directional_derivatives(
            model,
            loss,
            batch,
            block,
            stack(tangents),
            chunk=self.tangent_batch,
            fused=self.fused,
        )
