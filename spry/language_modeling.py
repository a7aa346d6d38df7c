"""Next-token loss for causal LMs, computed in chunks so full logits never exist.

A causal LM's logits are (batch x tokens x vocabulary): for SmolLM2-135M (vocabulary
49,152) at batch 8 and 64 tokens, 96 MiB, more than all of the network's other
activations. Forward mode also carries their tangent, and backprop keeps them (and
their softmax) for the backward pass. Cross-entropy is a sum over positions, so the
loss can be taken `chunk_tokens` positions at a time from the last hidden states:
only one chunk's logits (and tangent) exist at once. Under backprop each chunk is
checkpointed, so its logits are recomputed, one chunk at a time, in the backward pass
instead of being kept. The value and gradient are those of the unchunked loss.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .engines import loss_rules
from .engines.base import Batch, TaskLoss

IGNORE = -100  # label of positions that are not predicted (padding)


def _transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or `model` itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def next_token_labels(batch: Batch) -> Tensor:
    """Labels aligned with positions 0..T-2: the next token, IGNORE at padding."""
    labels = batch.get("labels", batch["input_ids"])[:, 1:]
    mask = batch.get("attention_mask")
    if mask is not None:
        labels = labels.masked_fill(mask[:, 1:] == 0, IGNORE)
    return labels


def _chunk_loss(
    head: nn.Module, softcap: float | None, hidden: Tensor, labels: Tensor
) -> Tensor:
    if not softcap and loss_rules.applies(head):  # forward mode: fused blocks
        return loss_rules.linear_cross_entropy_sum(head, hidden, labels, IGNORE)
    logits = head(hidden).float()
    if softcap:  # Gemma-style logit soft-capping, as the model's own forward does
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum")


def causal_lm_loss(
    model: nn.Module, batch: Batch, *, chunk_tokens: int = 0
) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy; the side output is the number of predictions.

    `chunk_tokens` positions go through the output layer at a time (0: the model's
    own forward computes all logits at once, the reference).
    """
    # No KV cache: a training loss never reuses it, and it would keep every layer's
    # keys and values (and their tangents, in forward mode) until the pass ends.
    inputs = {k: v for k, v in batch.items() if k != "labels"} | {"use_cache": False}
    labels = next_token_labels(batch).reshape(-1)
    count = (labels != IGNORE).sum()
    if chunk_tokens <= 0:
        logits = model(**inputs).logits[:, :-1].float()
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels,
            ignore_index=IGNORE, reduction="sum",
        )  # fmt: skip
        return total / count.clamp_min(1), count
    lm = _transformers_model(model)
    hidden = lm.get_decoder()(**inputs).last_hidden_state[:, :-1]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    one_chunk = partial(
        _chunk_loss,
        lm.get_output_embeddings(),
        getattr(lm.config, "final_logit_softcapping", None),
    )
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_tokens):
        end = start + chunk_tokens
        part = (hidden[start:end], labels[start:end])
        if torch.is_grad_enabled():  # backprop: recompute this chunk's logits later
            total = total + checkpoint(one_chunk, *part, use_reentrant=False)
        else:  # forward mode, zero-order, inference: nothing is kept anyway
            total = total + one_chunk(*part)
    return total / count.clamp_min(1), count


def make_causal_lm_loss(chunk_tokens: int = 0) -> TaskLoss:
    """`causal_lm_loss` with `chunk_tokens` fixed, as a task loss for any engine."""
    loss: Callable[[nn.Module, Batch], tuple[Tensor, Tensor]] = partial(
        causal_lm_loss, chunk_tokens=chunk_tokens
    )
    return loss
