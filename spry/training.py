"""A client's local training: the same loop for every engine.

The loop sees only a loss, batches, the names of the tensors it may change, and an
engine. Each step's randomness comes from a generator seeded by (seed, round,
client, step), so a client's work is a pure function of its inputs, whatever order
Flower runs clients in.

Dropout (`client.dropout`, the paper's setting) puts the model in train mode for
local training only. Its masks are part of the step's loss, not noise between the
passes of one estimate: every evaluation of the step's loss (each of K tangents'
passes, one vmapped pass, a zero-order probe's +eps and -eps passes, a backprop
check) draws them from the step's own seed (`STREAM_DROPOUT`), so all of them
differentiate the same function. That stream is apart from the tangents', so the
tangents, and every result with dropout off, are what they were without it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

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
from .memory import StepPeaks
from .models import TrainableModel, is_head
from .seeding import STREAM_DROPOUT, STREAM_TANGENTS, derive_seed, torch_generator


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
    peaks: StepPeaks | None = None,
) -> TrainReport:
    """Train the tensors in `slice_names` (stable names) for `cfg.local_epochs`.

    `batches(epoch)` yields that epoch's batches (already on the model's device).
    Tensors outside the slice keep their values: they are not in the optimizer and
    the engine does not differentiate them. With `cfg.dropout` the model trains in
    train mode, each step's masks drawn from `mask_seed` (`with_seeded_masks`); it
    is back in eval mode on return either way. `peaks`, started by the caller,
    tracks each step (estimate and optimizer update; not building the batch).
    """
    params = slice_params(trainable, slice_names)
    optimizer = make_optimizer(params, cfg, exact=engine.is_exact)
    # Dropout off (eval mode) unless asked: then every engine sees one loss.
    trainable.model.train(cfg.dropout)
    steps, examples, loss_sum, passes = 0, 0, 0.0, 0
    scalars: list[tuple[float, ...]] = []
    try:
        for epoch in range(cfg.local_epochs):
            for batch in batches(epoch):
                generator = step_generator(seed, server_round, partition_id, steps)
                step_loss = (
                    with_seeded_masks(
                        loss, mask_seed(seed, server_round, partition_id, steps)
                    )
                    if cfg.dropout
                    else loss
                )
                with _tracked(peaks, batch):
                    estimate = engine.estimate(
                        trainable.model, step_loss, batch, params, generator=generator
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
    finally:
        trainable.model.eval()  # evaluation always runs without dropout
    return TrainReport(
        num_examples=examples // cfg.local_epochs,
        steps=steps,
        mean_loss=loss_sum / examples if examples else 0.0,
        forward_passes=passes,
        scalars=tuple(scalars),
    )


def warm_up(
    trainable: TrainableModel,
    slice_names: Sequence[str],
    batch: Batch,
    *,
    loss: TaskLoss,
    engine: GradientEngine,
) -> None:
    """One estimate on the first example of `batch` (8 tokens of it); nothing changes.

    A process's first estimate with an engine pages in torch's kernels for it and
    makes lazy allocations (thread pools, autograd and functorch state): start-up
    cost, which then stays resident. The memory benchmark runs one such tiny step
    before it takes its baseline, and so does a client, once per process and
    engine, before its first measured steps; so a step's peak is the step's own.
    The estimate is dropped and the slice's values restored (a zero-order engine
    perturbs them in place), so training is as without it.
    """
    params = slice_params(trainable, slice_names)
    kept = {n: p.detach().clone() for n, p in params.items()}
    tiny = {k: _cut(v, batch_tokens(batch)) for k, v in batch.items()}
    trainable.model.eval()
    try:
        engine.estimate(
            trainable.model, loss, tiny, params, generator=torch.Generator()
        )
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(kept[name])
                param.grad = None


def _cut(value: Any, tokens: int) -> Any:
    """The first example; a token-aligned tensor also cut to its first 8 tokens."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if tokens and value.dim() >= 2 and value.shape[1] == tokens:
        return value[:1, :8]
    return value[:1]


def batch_tokens(batch: Batch) -> int:
    """A token batch's (padded) length; 0 for a batch without `input_ids`."""
    ids = batch.get("input_ids")
    return int(ids.shape[-1]) if isinstance(ids, torch.Tensor) else 0


def _tracked(peaks: StepPeaks | None, batch: Batch) -> AbstractContextManager[Any]:
    return nullcontext() if peaks is None else peaks.step(batch_tokens(batch))


def step_generator(
    seed: int, server_round: int, partition_id: int, step: int
) -> torch.Generator:
    """The CPU generator of a local step's directions.

    On the CPU whatever device trains, so a server holding (seed, round, partition,
    step) redraws exactly the directions a client used (`replay_local_training`).
    """
    return torch_generator(seed, STREAM_TANGENTS, server_round, partition_id, step)


def mask_seed(seed: int, server_round: int, partition_id: int, step: int) -> int:
    """The seed of a local step's dropout masks (its own stream, not the tangents')."""
    return derive_seed(seed, STREAM_DROPOUT, server_round, partition_id, step)


def with_seeded_masks(loss: TaskLoss, seed: int) -> TaskLoss:
    """`loss` whose random draws (dropout masks) come from `seed` at every call.

    Each call runs under `torch.random.fork_rng`, seeded with `seed`, so two calls
    on one batch draw the same masks, whichever engine makes them and however it
    batches them (vmapped tangents draw once for all, `randomness="same"`), and the
    global generators are left as they were.
    """

    def masked(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Any]:
        accelerators = {
            t.device
            for t in batch.values()
            if isinstance(t, torch.Tensor) and t.device.type != "cpu"
        }
        kind = next(iter(accelerators)).type if accelerators else "cuda"
        with torch.random.fork_rng(
            devices=[d.index or 0 for d in accelerators], device_type=kind
        ):
            torch.manual_seed(seed)
            return loss(model, batch)

    return masked


def make_client_engine(
    cfg: ClientConfig, guess: Mapping[str, torch.Tensor] | None = None
) -> GradientEngine:
    """The gradient engine a client trains with, as `cfg` sets it.

    `guess` (the previous global update over the slice, keyed by the model's own
    names, as `slice_params`) tilts the forward engine's tangents toward it when
    `cfg.tangent_guess` > 0 (`ForwardGradient`'s `guess`); otherwise it is unused.
    """
    options = cfg.engine_options()
    if cfg.engine == "forward" and cfg.head_gradient == "exact":
        options["exact"] = is_head
    if cfg.engine == "forward" and cfg.tangent_guess and guess:
        options.update(guess=guess, guess_weight=cfg.tangent_guess)
    return make_engine(cfg.engine, **options)


def make_optimizer(
    params: Mapping[str, torch.Tensor],
    cfg: ClientConfig,
    *,
    exact: Callable[[str], bool] = lambda _: False,
) -> Optimizer | PairedOptimizer:
    """The client's local optimizer, shared with the server's replay.

    AdamW (the paper's) divides each coordinate by its own running scale, so a
    forward or zero-order estimate whose every coordinate is mostly noise moves
    every weight by about `lr` in a near-random direction. Plain SGD keeps the
    estimate's own geometry: its mean is the gradient, and its noise costs only
    through the curvature it meets (MeZO's argument). So the tensors whose
    gradient is an estimate (`exact(name)` false) may step with their own
    optimizer and rate (`estimated-optimizer`, `estimated-lr`) while a head
    differentiated exactly keeps `client-optimizer` and `lr`.
    """
    kind = cfg.estimated_optimizer or cfg.client_optimizer
    rate = cfg.estimated_lr or cfg.lr
    exact_params = [p for n, p in params.items() if exact(n)]
    estimated = [p for n, p in params.items() if not exact(n)]
    if not exact_params:
        return _optimizer(estimated, kind, rate, cfg.weight_decay)
    if not estimated or (kind, rate) == (cfg.client_optimizer, cfg.lr):
        return _optimizer(
            list(params.values()), cfg.client_optimizer, cfg.lr, cfg.weight_decay
        )
    return PairedOptimizer(
        _optimizer(exact_params, cfg.client_optimizer, cfg.lr, cfg.weight_decay),
        _optimizer(estimated, kind, rate, cfg.weight_decay),
    )


def _optimizer(
    params: list[torch.Tensor], kind: str, lr: float, weight_decay: float
) -> Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class PairedOptimizer:
    """Two optimizers stepped as one: the exact tensors' and the estimated ones'."""

    def __init__(self, exact: Optimizer, estimated: Optimizer) -> None:
        self.exact, self.estimated = exact, estimated

    def step(self) -> None:
        self.exact.step()
        self.estimated.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.exact.zero_grad(set_to_none=set_to_none)
        self.estimated.zero_grad(set_to_none=set_to_none)


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
    optimizer = make_optimizer(params, cfg)  # every tensor rebuilt: an estimate
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
    masks: int | None = None,
    peaks: StepPeaks | None = None,
) -> tuple[dict[str, torch.Tensor], GradientEstimate]:
    """One gradient estimate of the slice on one batch (FedSGD-style clients).

    `masks`, a seed, turns dropout on with every pass's masks drawn from it (as a
    local step's with `dropout`, `with_seeded_masks`); None: eval mode. `peaks`,
    started by the caller, tracks the estimate. Returns the estimate's gradients
    keyed by stable name, and the estimate.
    """
    params = slice_params(trainable, slice_names)
    trainable.model.train(masks is not None)
    try:
        with _tracked(peaks, batch):
            estimate = engine.estimate(
                trainable.model,
                loss if masks is None else with_seeded_masks(loss, masks),
                batch,
                params,
                generator=generator,
            )
    finally:
        trainable.model.eval()
    grads = {n: estimate.grads[trainable.own_name(n)] for n in slice_names}
    return grads, estimate
