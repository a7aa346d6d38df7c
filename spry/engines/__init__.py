"""Gradient engines behind one interface; pick one by name with `make_engine`."""

from __future__ import annotations

from collections.abc import Callable

from .backprop import Backprop
from .base import Batch, GradientEngine, GradientEstimate, TaskLoss, functional_loss
from .forward import (
    ForwardADUnsupportedError,
    ForwardGradient,
    directional_derivative,
)

ENGINES: dict[str, Callable[..., GradientEngine]] = {
    "forward": lambda *, num_tangents=1: ForwardGradient(num_tangents=num_tangents),
    "backprop": lambda **_: Backprop(),
}


def make_engine(name: str, *, num_tangents: int = 1) -> GradientEngine:
    """The engine called `name` (one of `ENGINES`)."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(
            f"unknown engine {name!r}; available: {sorted(ENGINES)}"
        ) from None
    return factory(num_tangents=num_tangents)


__all__ = [
    "ENGINES",
    "Backprop",
    "Batch",
    "ForwardADUnsupportedError",
    "ForwardGradient",
    "GradientEngine",
    "GradientEstimate",
    "TaskLoss",
    "directional_derivative",
    "functional_loss",
    "make_engine",
]
