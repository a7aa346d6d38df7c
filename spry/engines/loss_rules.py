"""A frozen output layer and cross-entropy with one tangent rule, a block at a time.

A causal LM's loss runs the last hidden states through a vocabulary-wide output
layer (SmolLM2's: 49,152 columns). Under forward mode each chunk of positions holds
its logits, their tangent, the log-softmax and its tangent's temporaries, each
positions x vocabulary: the pass's peak for SmolLM2 at batch 8. The tangent of the
summed cross-entropy needs none of them whole:

    z = h W^T,  loss = sum_i logsumexp(z_i) - z_i[y_i]
    loss_t = sum_i softmax(z_i) . z_t,i - z_t,i[y_i],   z_t = h_t W^T

so a block of positions computes z, softmax(z) and z_t, reduces them to two
scalars, and frees them before the next block. Inside a jvp (`duals.py`) the primal
and the tangent come from one pass; elsewhere the caller keeps its own loss.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .duals import block_bytes, fusing, in_jvp, join, split
from .frozen_maps import affine, is_frozen_map, maps, with_bias

# One block's float32 logits may take this many block budgets (`duals.block_bytes`):
# a block holds about three such, and vocabularies are wide.
LOGIT_BUDGETS = 4


def applies(head: nn.Module) -> bool:
    """In a fused forward-mode pass's jvp, with a frozen linear output layer."""
    return is_frozen_map(head) and fusing() and in_jvp()


def linear_cross_entropy_sum(
    head: nn.Module, hidden: Tensor, labels: Tensor, ignore_index: int
) -> Tensor:
    """sum_i CE(head(hidden_i), labels_i) over non-ignored positions, as a dual."""
    h, h_t = split(hidden)
    rows = max(1, LOGIT_BUDGETS * block_bytes() // (head.out_features * 4))
    total = h.new_zeros((), dtype=torch.float32)
    total_t = None
    for start in range(0, h.shape[0], rows):
        block, y = slice(start, start + rows), labels[start : start + rows]
        keep = y != ignore_index
        target = y.clamp_min(0)[:, None]
        if h_t is None:
            z, z_t = affine(head, h[block]).float(), None
        else:
            z, z_t = maps(head, h[block], h_t[block])
            z, z_t = with_bias(head, z).float(), z_t.float()
        lse = torch.logsumexp(z, dim=-1)
        total = total + ((lse - z.gather(-1, target)[:, 0]) * keep).sum()
        if h_t is None:
            continue
        p = torch.exp(z - lse[:, None])
        del z
        part = ((p * z_t).sum(-1) - z_t.gather(-1, target)[:, 0]) * keep
        total_t = part.sum() if total_t is None else total_t + part.sum()
    return join(total, total_t)
