"""A client's local training: the same loop for every engine.

The loop sees only a loss, batches, the names of the tensors it may change, and an
engine. Each step's randomness comes from a generator seeded by (seed, round,
client, step), so a client's work is a pure function of its inputs, whatever order
Flower runs clients in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim import Optimizer

from .config import ClientConfig
from .engines import (
    GradientEngine,
    GradientEstimate,
    TaskLoss,
    make_engine,
    rebuild_from_scalars,
)
from .engines.base import Batch
from .models import TrainableModel, is_head
from .seeding import STREAM_TANGENTS, torch_generator


@dataclass(frozen=True)
class TrainReport:
    """What local training did: examples seen, steps, mean loss, forward passes."""

    num_examples: int
    steps: int
    mean_loss: float
    forward_passes: int = 0
    scalars: tuple[tuple[float, ...], ...] = ()  # each step's K projected scalars


def slice_params(
    trainable: TrainableModel, slice_names: Sequence[str]
) -> dict[str, torch.Tensor]:
    """The live tensors of a slice, keyed by the model's own names, in slice order.

    The order is the directions' draw order, which a server replays.
    """
    live = trainable.parameters()
    unknown = sorted(set(slice_names) - set(live))
    if unknown:
        raise KeyError(f"slice names not in the model: {unknown}")
    return {trainable.own_name(n): live[n] for n in slice_names}


def train_slice(
    trainable: TrainableModel,
    slice_names: Sequence[str],
    batches: Callable[[int], Iterable[Batch]],
    *,
    loss: TaskLoss,
    engine: GradientEngine,
    cfg: ClientConfig,
    seed: int,
    server_round: int,
    partition_id: int,
) -> TrainReport:
    """Train the tensors in `slice_names` (stable names) for `cfg.local_epochs`.

    `batches(epoch)` yields that epoch's batches (already on the model's device).
    Tensors outside the slice keep their values: they are not in the optimizer and
    the engine does not differentiate them.
    """
    params = slice_params(trainable, slice_names)
    optimizer = make_optimizer(params.values(), cfg)
    trainable.model.eval()  # dropout off for every engine: one loss, one function
    steps, examples, loss_sum, passes = 0, 0, 0.0, 0
    scalars: list[tuple[float, ...]] = []
    for epoch in range(cfg.local_epochs):
        for batch in batches(epoch):
            generator = step_generator(seed, server_round, partition_id, steps)
            estimate = engine.estimate(
                trainable.model, loss, batch, params, generator=generator
            )
            for name, param in params.items():
                param.grad = estimate.grads[name]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            n = len(next(iter(batch.values())))  # examples in this batch
            steps += 1
            passes += estimate.forward_passes
            examples += n
            loss_sum += float(estimate.loss) * n
            scalars.append(estimate.projected)
    return TrainReport(
        num_examples=examples // cfg.local_epochs,
        steps=steps,
        mean_loss=loss_sum / examples if examples else 0.0,
        forward_passes=passes,
        scalars=tuple(scalars),
    )


def step_generator(
    seed: int, server_round: int, partition_id: int, step: int
) -> torch.Generator:
    """The CPU generator of a local step's directions.

    On the CPU whatever device trains, so a server holding (seed, round, partition,
    step) redraws exactly the directions a client used (`replay_local_training`).
    """
    return torch_generator(seed, STREAM_TANGENTS, server_round, partition_id, step)


def make_client_engine(cfg: ClientConfig) -> GradientEngine:
    """The gradient engine a client trains with, as `cfg` sets it."""
    options = cfg.engine_options()
    if cfg.engine == "forward" and cfg.head_gradient == "exact":
        options["exact"] = is_head
    return make_engine(cfg.engine, **options)


def make_optimizer(params: Iterable[torch.Tensor], cfg: ClientConfig) -> Optimizer:
    """The client's local optimizer (AdamW), shared with the server's replay."""
    return torch.optim.AdamW(list(params), lr=cfg.lr, weight_decay=cfg.weight_decay)


def replay_local_training(
    start: Mapping[str, np.ndarray],
    step_scalars: Sequence[Sequence[float]],
    generators: Iterable[torch.Generator],
    cfg: ClientConfig,
) -> dict[str, np.ndarray]:
    """A client's trained slice, rebuilt from its per-step scalars alone.

    With a directional engine a local step's gradient is (1/K) sum_k s_k v_k, and
    the v_k are a function of the step's seed: so the K scalars of each step, the
    starting values and the optimizer settings fix the client's final weights. The
    server replays the same optimizer on the rebuilt gradients (`start` must list
    the tensors in the order the client was sent them; `generators` gives each
    step's generator, seeded as the client's).
    """
    params = {
        name: torch.tensor(np.asarray(value, dtype=np.float32))
        for name, value in start.items()
    }
    optimizer = make_optimizer(params.values(), cfg)
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    for scalars, generator in zip(step_scalars, generators, strict=False):
        grads = rebuild_from_scalars(
            shapes, list(scalars), generator, distribution=cfg.tangent_distribution
        )
        for name, param in params.items():
            param.grad = grads[name]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {name: p.detach().numpy() for name, p in params.items()}


def estimate_one_batch(
    trainable: TrainableModel,
    slice_names: Sequence[str],
    batch: Batch,
    *,
    loss: TaskLoss,
    engine: GradientEngine,
    generator: torch.Generator,
) -> tuple[dict[str, torch.Tensor], GradientEstimate]:
    """One gradient estimate of the slice on one batch (FedSGD-style clients).

    Returns the estimate's gradients keyed by stable name, and the estimate.
    """
    params = slice_params(trainable, slice_names)
    trainable.model.eval()
    estimate = engine.estimate(
        trainable.model, loss, batch, params, generator=generator
    )
    grads = {n: estimate.grads[trainable.own_name(n)] for n in slice_names}
    return grads, estimate
