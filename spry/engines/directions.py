"""Random directions a server can redraw: the one stream every directional engine uses.

Forward-mode (jvp) and finite-difference engines both average K random directions
v ~ N(0, I) weighted by a scalar each. Drawing them here, from an explicit generator
and in a fixed order, means one seed gives every engine the same directions, and a
server that knows the seed and the K scalars rebuilds a client's estimate exactly
(`rebuild_from_scalars`): that is what the scalar uploads send instead of tensors.
Tangents tilted toward a guess (`guessed_directions`) depend on the guess as well
as the seed, and are biased toward it (stated there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .distributions import DISTRIBUTIONS

# A tensor's shape, dtype and device: all a direction needs to be redrawn.
DirectionSpec = tuple[torch.Size, torch.dtype, torch.device]


def direction_specs(
    like: Mapping[str, Tensor | Sequence[int]],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict[str, DirectionSpec]:
    """Shape, dtype and device per name; tensors give their own, shapes use the rest."""
    specs: dict[str, DirectionSpec] = {}
    for name, item in like.items():
        if isinstance(item, Tensor):
            specs[name] = (item.shape, item.dtype, item.device)
        else:
            specs[name] = (torch.Size(item), dtype, torch.device(device))
    return specs


def sample_direction(
    specs: Mapping[str, DirectionSpec], generator: torch.Generator
) -> dict[str, Tensor]:
    """One direction v ~ N(0, I), drawn tensor by tensor in `specs`' order.

    Drawn on the generator's device, then moved to each tensor's: with a CPU
    generator a seed names the same directions on every device, so a server can
    rebuild what a CUDA client drew. The same stream as
    `ForwardGradient`'s tangents, so one seed gives the finite-difference and
    the jvp engines the same directions.
    """
    return {
        name: torch.randn(
            shape, generator=generator, dtype=dtype, device=generator.device
        ).to(device)
        for name, (shape, dtype, device) in specs.items()
    }


def sample_directions(
    specs: Mapping[str, DirectionSpec],
    generator: torch.Generator,
    count: int,
    distribution: str = "gaussian",
) -> list[dict[str, Tensor]]:
    """`count` directions from one stream (`sample_direction` drawn `count` times).

    Every distribution is a function of the same Gaussian draws, so a seed names
    the same raw stream whatever the distribution, and the server redraws it.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(
            f"unknown direction distribution {distribution!r}; "
            f"available: {DISTRIBUTIONS}"
        )
    draws = [sample_direction(specs, generator) for _ in range(count)]
    if distribution == "rademacher":
        return [
            {n: torch.where(v >= 0, 1.0, -1.0).to(v.dtype) for n, v in d.items()}
            for d in draws
        ]
    if distribution == "orthogonal":
        return _orthogonalised(draws)
    return draws


def _orthogonalised(draws: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Orthonormalise blocks of at most d flattened draws, scaled to norm sqrt(d)."""
    names = list(draws[0])
    flat = torch.stack(
        [torch.cat([d[n].reshape(-1).double().cpu() for n in names]) for d in draws]
    )  # (K, d), float64 so the QR is the same on every machine's BLAS to 1e-12
    dim = flat.shape[1]
    rows = []
    for start in range(0, len(draws), dim):
        q, r = torch.linalg.qr(flat[start : start + dim].T)  # (d, k)
        q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, 1.0)
        rows.append(q.T * dim**0.5)
    batched = unflatten(torch.cat(rows), draws[0])
    return [{n: batched[n][k] for n in names} for k in range(len(draws))]


def unflatten(flat: Tensor, like: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Cut the last axis of `flat` into `like`'s tensors, in `like`'s order.

    `flat` is (..., d) with d the total size of `like`; each piece is reshaped to
    (..., *shape) and given its tensor's device and dtype.
    """
    pieces, offset = {}, 0
    lead = flat.shape[:-1]
    for name, tensor in like.items():
        piece = flat[..., offset : offset + tensor.numel()]
        pieces[name] = piece.reshape(*lead, *tensor.shape).to(
            tensor.device, tensor.dtype
        )
        offset += tensor.numel()
    if offset != flat.shape[-1]:
        raise ValueError(f"{flat.shape[-1]} values for tensors of {offset} in all")
    return pieces


def accumulate(
    grads: dict[str, Tensor], direction: Mapping[str, Tensor], weight: float
) -> None:
    """`grads += weight * direction`, in place (one code path for client and server)."""
    for name, v in direction.items():
        grads[name].add_(v, alpha=weight)


def rebuild_from_scalars(
    like: Mapping[str, Tensor | Sequence[int]],
    scalars: Sequence[float],
    generator: torch.Generator,
    *,
    dtype: torch.dtype = torch.float32,
    distribution: str = "gaussian",
) -> dict[str, Tensor]:
    """The estimate (1/K) sum_k s_k v_k, redrawing the v_k from `generator`.

    `generator` must be seeded as the client's was (same device type), and `like`
    holds the client's `params` (their shapes, dtypes and devices are used) or just
    their shapes (then `dtype` and the generator's device are used). The result
    equals the client's `grads` when `scalars` is its `projected`.

    >>> seeded = lambda: torch.Generator().manual_seed(0)
    >>> g = rebuild_from_scalars({"w": (3,)}, [2.0], seeded())
    >>> torch.equal(g["w"], 2.0 * torch.randn(3, generator=seeded()))
    True
    """
    if not scalars:
        raise ValueError("`scalars` is empty: nothing to rebuild")
    specs = direction_specs(like, dtype=dtype, device=generator.device)
    grads = {
        name: torch.zeros(shape, dtype=kind, device=device)
        for name, (shape, kind, device) in specs.items()
    }
    directions = sample_directions(specs, generator, len(scalars), distribution)
    for scalar, direction in zip(scalars, directions, strict=True):
        accumulate(grads, direction, scalar / len(scalars))
    return grads


def guessed_directions(
    directions: Sequence[Mapping[str, Tensor]],
    guess: Mapping[str, Tensor],
    weight: float,
    generator: torch.Generator,
) -> list[dict[str, Tensor]]:
    """Tangents tilted toward a guess: v_k = sqrt(1-b) z_k + sqrt(b d) s_k u.

    A guess direction (Fournier et al., "Can Forward Gradient Match
    Backpropagation?", ICML 2023, arxiv.org/abs/2306.06968; FwdLLM's selection by
    cosine to the previous gradient is the same idea) spends part of each tangent
    where the gradient probably is. Here the z_k are `directions` (drawn as
    without a guess, so the stream before the signs is the plain one), u is
    `guess` over the same tensors scaled to unit norm (a tensor `guess` lacks
    counts as zero), d is their number of weights, b is `weight` and the s_k are
    random signs, drawn from `generator` after the z_k. The sqrt(d) keeps
    E|v|^2 = d, as for a plain tangent, and a sign (not a Gaussian scalar) keeps
    the guess's share of every tangent at exactly b: of the choices with
    E[s^2] = 1 it adds the least variance along u (E[s^4] = 1, a Gaussian's 3).

    The bias, stated: z and s are independent and E[z z^T] = I, so
    E[v v^T] = (1-b) I + b d u u^T, and the forward gradient's mean is
    E[<g, v> v] = (1-b) g + b d <g, u> u: not the gradient g. Its component
    along u is the gradient's times (1 - b + b d), an over-weighting by about
    b d (d is hundreds to thousands of weights in a slice); orthogonally to u it
    is the gradient's times (1 - b). It still descends in expectation
    (<E, g> = (1-b)|g|^2 + b d <g, u>^2 >= 0), and it helps only as far as the
    guess is aligned with the gradient.

    `weight` 0, no directions or a zero guess (round 1: no previous update)
    return `directions` unchanged, drawing nothing.

    >>> z = [{"w": torch.tensor([1.0, 0.0])}]
    >>> v = guessed_directions(z, {"w": torch.tensor([0.0, 3.0])}, 0.5,
    ...                        torch.Generator().manual_seed(0))
    >>> [round(abs(x), 4) for x in v[0]["w"].tolist()]
    [0.7071, 1.0]
    """
    if not weight or not directions:
        return [dict(d) for d in directions]
    names = list(directions[0])
    dim = sum(directions[0][n].numel() for n in names)
    norm_sq = sum(
        float(guess[n].double().pow(2).sum()) for n in names if n in guess
    )  # float64: a sum of many small squares
    if norm_sq == 0.0:
        return [dict(d) for d in directions]
    signs = torch.randint(
        0, 2, (len(directions),), generator=generator, device=generator.device
    ).tolist()  # (K,): 0 -> -1, 1 -> +1
    along = (weight * dim / norm_sq) ** 0.5  # sqrt(b d) / |guess|
    keep = (1.0 - weight) ** 0.5
    tilted = []
    for direction, sign in zip(directions, signs, strict=True):
        scale = along if sign else -along
        tilted.append(
            {
                n: keep * z + scale * guess[n].to(z.device, z.dtype)
                if n in guess
                else keep * z
                for n, z in direction.items()
            }
        )
    return tilted
