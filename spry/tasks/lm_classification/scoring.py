"""Label-word scores: the next-token logits of the label words, and nothing else.

The full next-token logits at a position are the last hidden state times the whole
output embedding (49,152 rows for SmolLM2). Classification needs only the label
words' rows, so the scores are taken as `hidden @ W[label_ids].T`: C numbers per
example instead of 49,152, and under forward mode the tangent is carried for those
C only. The cross-entropy over them is MeZO's prompt-based loss; its softmax runs
over the label words, not the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...engines.base import Batch
from ...language_modeling import _transformers_model


def last_positions(attention_mask: Tensor) -> Tensor:
    """(B,) index of each right-padded row's last token: it predicts the answer."""
    return attention_mask.sum(dim=1) - 1


def label_word_logits(model: nn.Module, batch: Batch, label_ids: Tensor) -> Tensor:
    """(B, C) float32 next-token logits of the label words at the last prompt token.

    The same numbers as the model's own logits there, restricted to `label_ids`
    (the output layer's bias and Gemma-style soft-capping included when present).
    """
    lm = _transformers_model(model)
    mask = batch["attention_mask"]
    hidden = lm.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=mask, use_cache=False
    ).last_hidden_state  # (B, T, H): no KV cache kept for every layer
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last = hidden[rows, last_positions(mask)].float()  # (B, H)
    head = lm.get_output_embeddings()
    ids = label_ids.to(hidden.device)
    # a quantized output layer (`frozen-dtype` int8, nf4) dequantizes these rows only
    words = head.weight[ids] if hasattr(head, "weight") else head.weight_rows(ids)
    logits = last @ words.float().T  # (B, C)
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[ids].float()
    softcap = getattr(lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def label_word_loss(
    model: nn.Module, batch: Batch, label_ids: Tensor
) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy over the label words; the side output is their logits."""
    logits = label_word_logits(model, batch, label_ids)
    return F.cross_entropy(logits, batch["labels"]), logits


def as_ids(label_ids: Sequence[int]) -> Tensor:
    return torch.as_tensor(list(label_ids), dtype=torch.long)
