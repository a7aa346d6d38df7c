"""Backpropagation: the reference every other engine is measured against.

With activation checkpointing (Chen et al., arXiv 1604.06174) the forward pass keeps
only each transformer layer's input and recomputes the layer during the backward
pass: activation memory drops from one set per layer to about one layer's worth, for
roughly one more forward pass. A later study (arXiv 2506.21833) finds this the
strong baseline for forward/zero-order methods, so it is an engine here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from .base import (
    Batch,
    GradientEngine,
    GradientEstimate,
    Params,
    TaskLoss,
    functional_loss,
)


@contextmanager
def activation_checkpointing(model: nn.Module) -> Iterator[None]:
    """Checkpoint every Hugging Face transformer layer of `model` inside the block.

    transformers checkpoints a layer only while that layer's own `training` flag is
    set; we set the flag on those layer modules alone (not their children), so
    dropout stays as the model's mode sets it (off in eval mode) and the loss is
    the one every other engine differentiates. With dropout on, the recomputed
    layer redraws its masks from the generator state the forward pass saved
    (`torch.utils.checkpoint` preserves RNG state by default), so they match.
    """
    from transformers import PreTrainedModel
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    pretrained = [m for m in model.modules() if isinstance(m, PreTrainedModel)]
    if not layers or not pretrained:
        raise ValueError(
            f"{type(model).__name__} has no transformers layers to checkpoint"
        )
    # The outermost transformers model: the classifier itself, or the encoder
    # inside a pooled head (`PooledClassifier` is a plain nn.Module).
    base = pretrained[0]
    # Non-reentrant: with LoRA the layer inputs do not require grad themselves.
    base.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}
    )
    flags = [layer.training for layer in layers]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, flags, strict=True):
            layer.training = flag
        base.activation_checkpointing_disable()


class Backprop(GradientEngine):
    """Exact gradient by reverse-mode AD.

    Parameters
    ----------
    checkpointing : bool (default: False)
        Recompute each transformer layer in the backward pass instead of storing
        its activations.
    """

    name = "backprop"

    def __init__(self, *, checkpointing: bool = False) -> None:
        self.checkpointing = checkpointing

    def is_exact(self, name: str) -> bool:
        del name
        return True

    def estimate(
        self,
        model: nn.Module,
        loss: TaskLoss,
        batch: Batch,
        params: Params,
        *,
        generator: torch.Generator,
    ) -> GradientEstimate:
        del generator  # exact: nothing is random
        f = functional_loss(model, loss, batch)
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        recompute = (
            activation_checkpointing(model) if self.checkpointing else nullcontext()
        )
        with torch.enable_grad(), recompute:
            value, aux = f(leaves)
            grads = torch.autograd.grad(value, list(leaves.values()))
        if isinstance(aux, torch.Tensor):
            aux = aux.detach()
        return GradientEstimate(
            loss=value.detach(),
            grads=dict(zip(leaves, grads, strict=True)),
            aux=aux,
            forward_passes=2 if self.checkpointing else 1,
        )
