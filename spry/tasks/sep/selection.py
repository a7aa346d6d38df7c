"""SEP's choice of the K representative pre-trained tokens at a layer.

Yao et al., "SEP: Self-Enhanced Prompt Tuning for Visual-Language Model", 2024.
Paper: arxiv.org/abs/2405.15549; code: github.com/htyao89/SEP

The paper says SEP "selects several representative tokens from all pre-trained
tokens for each input data at every layer". Its code
(`SEP_main/trainers/clip_text/model.py`, the two `ResidualAttentionBlock_SEP_*`
classes) makes that concrete differently for the two towers, with K equal to the
number of learnable prompt tokens of the tower (the TFM's residual runs through
the selected tokens, so the counts must match):

- image tower (`ResidualAttentionBlock_SEP_Visual.forward`): the layer's input
  `x` (tokens, batch, width) is scored per token position by its mean squared
  activation, `x.pow(2).mean(dim=2).mean(dim=1)`, over the pre-trained tokens only
  (CLS and patches; the appended prompt tokens are left out), and the K
  highest-scoring positions are taken (`torch.topk(..., largest=True)`). Note the
  `.mean(dim=1)`: the released code averages the score over the *batch*, so one
  set of positions serves every image of a batch. `energy_top_k(per_input=True)`
  scores each image on its own, as the paper's text says ("for each input"), and
  is our default because an image's features then do not depend on the batch it
  is scored in; `per_input=False` is the released code's rule.
- text tower (`ResidualAttentionBlock_SEP_Text.forward`): positional, the K
  tokens right after the K learnable context tokens, `x[1+n_ctx : 1+2*n_ctx]`:
  with CoOp's layout ("[SOS] ctx_1..ctx_K name ." ) these are the class name's
  tokens and what follows them, the class-aware tokens (`tokens_after_prompts`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def energy_scores(tokens: Tensor) -> Tensor:
    """`(B, T, W)` -> `(B, T)`: each token's mean squared activation."""
    return tokens.pow(2).mean(dim=-1)


def energy_top_k(tokens: Tensor, k: int, *, per_input: bool = True) -> Tensor:
    """Indices `(B, k)` of the `k` highest-energy tokens of `(B, T, W)` `tokens`.

    `per_input=False` averages the scores over the batch first (the released
    code's `.mean(dim=1)`), so every row gets the same indices.

    >>> x = torch.zeros(1, 4, 2); x[0, 2] = 3.0; x[0, 0] = 1.0
    >>> energy_top_k(x, 2).tolist()
    [[2, 0]]
    """
    if not 1 <= k <= tokens.shape[1]:
        raise ValueError(f"k should be in [1, {tokens.shape[1]}] tokens, got {k}")
    scores = energy_scores(tokens)  # (B, T)
    if not per_input:
        scores = scores.mean(dim=0, keepdim=True).expand_as(scores)
    return scores.topk(k, dim=1, largest=True).indices  # (B, k)


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """`(B, T, W)` tokens at `(B, k)` positions -> `(B, k, W)`."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def tokens_after_prompts(tokens: Tensor, start: int, k: int) -> tuple[int, int]:
    """The text rule's span `[start + k, start + 2k)`, checked against `T`.

    `start` is the first prompt token's position (1: after BERT's [CLS], as after
    CLIP's SOS), `k` the number of prompt tokens.
    """
    end = start + 2 * k
    if end > tokens.shape[1]:
        raise ValueError(
            f"the text rule needs {end} tokens ({k} prompts and {k} after them), "
            f"the sequence has {tokens.shape[1]}: pad it"
        )
    return start + k, end
