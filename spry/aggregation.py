"""Aggregation and server optimizers, shared by every strategy.

Per-tensor aggregation: the new value of a tensor is the example-weighted mean over
the clients that trained it this round; a tensor nobody trained keeps its value.
When every client trains every tensor this is exactly FedAvg's weighted mean.

Server optimizers follow Reddi et al., "Adaptive Federated Optimization"
(arXiv 2003.00295), with Flower's conventions (moments start at zero): on the
pseudo-gradient delta = aggregate - current,

    m <- b1 m + (1 - b1) delta
    v <- v - (1 - b2) delta^2 sign(v - delta^2)          (Yogi)
    v <- b2 v + (1 - b2) delta^2                          (Adam)
    w <- w + eta m / (sqrt(v) + tau)

"avg" takes the aggregate as is, and "sgd" steps w <- w + eta delta (with uploaded
gradients, delta = -G, so this is FedSGD's w <- w - eta G). They are optax-style: a
pure `init` and `update` over explicit state, so the state can be checkpointed and
tested by hand.

Yogi and Adam divide each coordinate by its own scale, so a delta that is mostly
noise (a slice trained on forward-gradient estimates) still moves every weight by
about eta a round. `estimated_kind` gives the tensors whose client gradient is an
estimate their own step (say "avg") while the exactly trained ones (a head) keep
`kind`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, NamedTuple

import numpy as np

Arrays = dict[str, np.ndarray]


def weighted_mean_per_tensor(
    contributions: Iterable[tuple[Mapping[str, np.ndarray], float]],
) -> Arrays:
    """Example-weighted mean of each tensor over the contributions that carry it.

    `contributions` holds (tensors, weight) per client; weights must be positive.
    """
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for tensors, weight in contributions:
        if weight <= 0:
            raise ValueError(f"contribution weight must be positive, got {weight}")
        for name, value in tensors.items():
            value64 = np.asarray(value, dtype=np.float64)
            if name in sums:
                sums[name] += weight * value64
                weights[name] += weight
            else:
                sums[name] = weight * value64
                weights[name] = weight
    return {
        name: (total / weights[name]).astype(np.float32) for name, total in sums.items()
    }


def merge_into(
    current: Mapping[str, np.ndarray], updates: Mapping[str, np.ndarray]
) -> Arrays:
    """`current` with the tensors in `updates` replaced (untrained tensors stay)."""
    return {
        name: np.asarray(updates.get(name, value)) for name, value in current.items()
    }


class OptimizerState(NamedTuple):
    """First and second moments per tensor (empty before the first step)."""

    m: Arrays
    v: Arrays


@dataclass(frozen=True)
class ServerOptimizer:
    """A server step on the pseudo-gradient (aggregate - current).

    Parameters
    ----------
    kind : str (default: "yogi")
        "yogi", "adam", "avg" or "sgd".
    eta : float (default: 1e-2)
        Server learning rate.
    beta_1 : float (default: 0.9)
        First-moment decay.
    beta_2 : float (default: 0.99)
        Second-moment decay.
    tau : float (default: 1e-3)
        Adaptivity (added to sqrt(v)).
    estimated_kind : str (default: "": as `kind`)
        The step for tensors whose clients' gradient is an estimate.
    is_exact : (tensor name) -> bool, optional
        Which tensors the clients differentiate exactly (None: every one);
        the others step with `estimated_kind`.
    """

    kind: str = "yogi"
    eta: float = 1e-2
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3
    estimated_kind: str = ""
    is_exact: Callable[[str], bool] | None = None
    KINDS: ClassVar[tuple[str, ...]] = ("yogi", "adam", "avg", "sgd")

    def __post_init__(self) -> None:
        for kind in (self.kind, self.estimated_kind or self.kind):
            if kind not in self.KINDS:
                raise ValueError(f"unknown server optimizer {kind!r}; use {self.KINDS}")

    @property
    def split_kinds(self) -> bool:
        """Whether estimated tensors step differently from exact ones."""
        return (
            self.is_exact is not None
            and bool(self.estimated_kind)
            and self.estimated_kind != self.kind
        )

    def init(self, current: Mapping[str, np.ndarray]) -> OptimizerState:
        zeros = {k: np.zeros_like(v, dtype=np.float32) for k, v in current.items()}
        return OptimizerState(m=dict(zeros), v={k: z.copy() for k, z in zeros.items()})

    def update(
        self,
        current: Mapping[str, np.ndarray],
        aggregate: Mapping[str, np.ndarray],
        state: OptimizerState,
    ) -> tuple[Arrays, OptimizerState]:
        """New weights and state; `aggregate` must carry every tensor of `current`."""
        if set(aggregate) != set(current):
            raise KeyError(
                f"aggregate and current differ in tensors: "
                f"{sorted(set(aggregate) ^ set(current))}"
            )
        if self.split_kinds:
            return self._update_by_kind(current, aggregate, state)
        if self.kind == "avg":
            return {k: np.asarray(aggregate[k]) for k in current}, state
        if self.kind == "sgd":
            return {
                k: (w + self.eta * (np.asarray(aggregate[k]) - w)).astype(np.float32)
                for k, w in current.items()
            }, state
        m, v, new = {}, {}, {}
        for name, w in current.items():
            delta = np.asarray(aggregate[name]) - w
            m[name] = self.beta_1 * state.m[name] + (1 - self.beta_1) * delta
            d2 = delta**2
            if self.kind == "yogi":
                v[name] = state.v[name] - (1 - self.beta_2) * d2 * np.sign(
                    state.v[name] - d2
                )
            else:
                v[name] = self.beta_2 * state.v[name] + (1 - self.beta_2) * d2
            new[name] = (w + self.eta * m[name] / (np.sqrt(v[name]) + self.tau)).astype(
                np.float32
            )
        return new, OptimizerState(m=m, v=v)

    def _update_by_kind(
        self,
        current: Mapping[str, np.ndarray],
        aggregate: Mapping[str, np.ndarray],
        state: OptimizerState,
    ) -> tuple[Arrays, OptimizerState]:
        """Exact tensors step with `kind`, estimated ones with `estimated_kind`."""
        assert self.is_exact is not None
        exact, estimated = [], []
        for name in current:
            (exact if self.is_exact(name) else estimated).append(name)
        plain = replace(self, estimated_kind="", is_exact=None)
        new, m, v = {}, dict(state.m), dict(state.v)
        for names, step in (
            (exact, plain),
            (estimated, replace(plain, kind=self.estimated_kind)),
        ):
            part, moved = step.update(
                {n: current[n] for n in names},
                {n: aggregate[n] for n in names},
                state,
            )
            new.update(part)
            m.update({n: moved.m[n] for n in names})
            v.update({n: moved.v[n] for n in names})
        # In `current`'s order: the next round's groups are cut in this order, so a
        # set's (hash-seeded) order would deal different slices in every process.
        return {n: new[n] for n in current}, OptimizerState(m=m, v=v)
