"""Gradient engines behind one interface; pick one by name with `make_engine`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .as_in_spry import BafflePlus, FwdLLMPlus
from .backprop import Backprop
from .base import Batch, GradientEngine, GradientEstimate, TaskLoss, functional_loss
from .directions import direction_specs, rebuild_from_scalars, sample_direction
from .forward import (
    ForwardADUnsupportedError,
    ForwardGradient,
    directional_derivative,
)
from .zeroth_order import FiniteDifference, baffle, fwdllm, mezo

# Every factory takes (num_tangents, eps, fd_format) as keywords; each ignores or
# rejects what does not apply to it (eps and fd_format are finite-difference only).
ENGINES: dict[str, Callable[..., GradientEngine]] = {
    "forward": lambda *, num_tangents=1, eps=None, fd_format=None, **options: (
        ForwardGradient(num_tangents=num_tangents, **options)
    ),
    "backprop": lambda **_: Backprop(),
    "backprop-checkpoint": lambda **_: Backprop(checkpointing=True),
    "mezo": mezo,
    "baffle": baffle,
    "fwdllm": fwdllm,
    # As in Spry's comparison code (spry/engines/as_in_spry.py): bugs kept.
    "baffle-plus": lambda *, num_tangents=1, eps=None, fd_format=None: BafflePlus(
        num_tangents=num_tangents, **({} if eps is None else {"eps": eps})
    ),
    "fwdllm-plus": lambda *, num_tangents=1, eps=None, fd_format=None: FwdLLMPlus(
        num_tangents=num_tangents, **({} if eps is None else {"eps": eps})
    ),
}
# Engines whose estimate is K scalars along seeded directions: a server holding
# the seed can rebuild it from the scalars, so they can upload scalars only.
DIRECTIONAL = ("forward", "mezo", "baffle", "fwdllm")


def make_engine(
    name: str,
    *,
    num_tangents: int = 1,
    eps: float | None = None,
    fd_format: str | None = None,
    **forward_options: Any,
) -> GradientEngine:
    """The engine called `name` (one of `ENGINES`).

    `eps` and `fd_format` set the finite-difference step and format of the
    zero-order engines (None: the method's published value); others ignore them.
    `forward_options` (distribution, tangent_batch, exact) are
    `ForwardGradient`'s own and an error for any other engine.
    """
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; available: {sorted(ENGINES)}"
        ) from None
    if forward_options and name != "forward":
        raise ValueError(f"{sorted(forward_options)} apply to the forward engine only")
    return factory(
        num_tangents=num_tangents, eps=eps, fd_format=fd_format, **forward_options
    )


__all__ = [
    "ENGINES",
    "DIRECTIONAL",
    "Backprop",
    "BafflePlus",
    "FwdLLMPlus",
    "Batch",
    "FiniteDifference",
    "ForwardADUnsupportedError",
    "ForwardGradient",
    "GradientEngine",
    "GradientEstimate",
    "TaskLoss",
    "baffle",
    "direction_specs",
    "directional_derivative",
    "functional_loss",
    "fwdllm",
    "make_engine",
    "mezo",
    "rebuild_from_scalars",
    "sample_direction",
]
