"""A client's local training: the same loop for every engine.

The loop sees only a loss, batches, the names of the tensors it may change, and an
engine. Each step's randomness comes from a generator seeded by (seed, round,
client, step), so a client's work is a pure function of its inputs, whatever order
Flower runs clients in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .config import ClientConfig
from .engines import GradientEngine, TaskLoss
from .engines.base import Batch
from .models import TrainableModel
from .seeding import STREAM_TANGENTS, torch_generator


@dataclass(frozen=True)
class TrainReport:
    """What local training did: examples seen, steps, mean loss, forward passes."""

    num_examples: int
    steps: int
    mean_loss: float
    forward_passes: int = 0


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
    live = trainable.parameters()
    unknown = sorted(set(slice_names) - set(live))
    if unknown:
        raise KeyError(f"slice names not in the model: {unknown}")
    params = {trainable.own_name(n): live[n] for n in slice_names}
    optimizer = torch.optim.AdamW(
        list(params.values()), lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    trainable.model.eval()  # dropout off for every engine: one loss, one function
    steps, examples, loss_sum, passes = 0, 0, 0.0, 0
    for epoch in range(cfg.local_epochs):
        for batch in batches(epoch):
            generator = torch_generator(
                seed,
                STREAM_TANGENTS,
                server_round,
                partition_id,
                steps,
                device=next(iter(params.values())).device,
            )
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
    return TrainReport(
        num_examples=examples // cfg.local_epochs,
        steps=steps,
        mean_loss=loss_sum / examples if examples else 0.0,
        forward_passes=passes,
    )
