"""Random directions a server can redraw: the one stream every directional engine uses.

Forward-mode (jvp) and finite-difference engines both average K random directions
v ~ N(0, I) weighted by a scalar each. Drawing them here, from an explicit generator
and in a fixed order, means one seed gives every engine the same directions, and a
server that knows the seed and the K scalars rebuilds a client's estimate exactly
(`rebuild_from_scalars`): that is what the scalar uploads send instead of tensors.
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
