"""Gradient engines behind one interface; pick one by name with `make_engine`.

This module is the engine registry: `ENGINES` is the one list of engine names, and
`DIRECTIONAL` says which of them a server can rebuild from K scalars. It imports no
torch: each factory imports its engine when called, and the classes and functions
re-exported below load on first use (PEP 562 `__getattr__`). So the resolving step
(`spry.resolve`) and the command line check an engine's name in milliseconds, and a
misspelt engine is reported before torch is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .distributions import DISTRIBUTIONS

if TYPE_CHECKING:
    from .base import GradientEngine


def _forward(
    *,
    num_tangents: int = 1,
    eps: float | None = None,
    fd_format: str | None = None,
    **options: Any,
) -> GradientEngine:
    from .forward import ForwardGradient

    return ForwardGradient(num_tangents=num_tangents, **options)


def _backprop(*, checkpointing: bool) -> Callable[..., GradientEngine]:
    def factory(**_: Any) -> GradientEngine:
        from .backprop import Backprop

        return Backprop(checkpointing=checkpointing)

    return factory


def _finite_difference(method: str) -> Callable[..., GradientEngine]:
    """`zeroth_order.<method>`: MeZO, BAFFLE or FwdLLM's estimator."""

    def factory(**options: Any) -> GradientEngine:
        from . import zeroth_order

        return getattr(zeroth_order, method)(**options)

    return factory


def _as_in_spry(cls: str) -> Callable[..., GradientEngine]:
    """As in Spry's comparison code (spry/engines/as_in_spry.py): bugs kept."""

    def factory(
        *, num_tangents: int = 1, eps: float | None = None, fd_format: str | None = None
    ) -> GradientEngine:
        from . import as_in_spry

        step = {} if eps is None else {"eps": eps}
        return getattr(as_in_spry, cls)(num_tangents=num_tangents, **step)

    return factory


# Every factory takes (num_tangents, eps, fd_format) as keywords; each ignores or
# rejects what does not apply to it (eps and fd_format are finite-difference only).
ENGINES: dict[str, Callable[..., GradientEngine]] = {
    "forward": _forward,
    "backprop": _backprop(checkpointing=False),
    "backprop-checkpoint": _backprop(checkpointing=True),
    "mezo": _finite_difference("mezo"),
    "baffle": _finite_difference("baffle"),
    "fwdllm": _finite_difference("fwdllm"),
    "baffle-plus": _as_in_spry("BafflePlus"),
    "fwdllm-plus": _as_in_spry("FwdLLMPlus"),
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


# What `from spry.engines import X` finds, by the submodule that defines it.
_EXPORTS = {
    "BafflePlus": "as_in_spry",
    "FwdLLMPlus": "as_in_spry",
    "Backprop": "backprop",
    "Batch": "base",
    "GradientEngine": "base",
    "GradientEstimate": "base",
    "TaskLoss": "base",
    "functional_loss": "base",
    "direction_specs": "directions",
    "rebuild_from_scalars": "directions",
    "sample_direction": "directions",
    "ForwardADUnsupportedError": "forward",
    "ForwardGradient": "forward",
    "directional_derivative": "forward",
    "FiniteDifference": "zeroth_order",
    "baffle": "zeroth_order",
    "fwdllm": "zeroth_order",
    "mezo": "zeroth_order",
}


def __getattr__(name: str) -> Any:
    """Load an engine's class or function on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = ["DIRECTIONAL", "DISTRIBUTIONS", "ENGINES", "make_engine", *_EXPORTS]
