"""SEP's Token Fusion Module (TFM): prompts fused with representative tokens.

Yao et al., "SEP: Self-Enhanced Prompt Tuning for Visual-Language Model", 2024.
Paper: arxiv.org/abs/2405.15549; code: github.com/htyao89/SEP

As the released code defines it (`PromptAttention` in `SEP_main/trainers/sep.py`),
with `p` the K learnable tokens entering a layer and `s` the K representative
pre-trained tokens selected there (`selection.py`):

    f = a * s + (1 - a) * CrossAttn(query=LN1(p), key=LN1(s), value=LN1(s))
    f = b * f + (1 - b) * MLP(LN2(f))

with `a`, `b` learnable scalars starting at 0.75, one LayerNorm `LN1` shared by
query and key/value (the code's unused `ln_pa_1_token` is left out), width/64
heads, and an MLP `width -> 256 -> width` without biases and with QuickGELU. The
K fused ("self-enhanced") tokens take the prompts' place: they are concatenated
with all the pre-trained tokens as the next layer's input. One TFM per layer
(the code clones one per layer, `_get_clones`), each with its own weights.

The attention is written out (matmul, softmax) rather than with
`nn.MultiheadAttention`, whose CPU path calls fused kernels without a
forward-mode AD rule; the function is the same.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

INITIAL_MIX = 0.75  # the code's scale1 / scale2 start
HEAD_WIDTH = 64  # the code: n_head = d_model // 64


class QuickGELU(nn.Module):
    """CLIP's GELU approximation, x * sigmoid(1.702 x), as the TFM's MLP uses."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class TokenFusionModule(nn.Module):
    """Cross-attention of the prompts over the selected tokens, then an MLP.

    Parameters
    ----------
    width : int
        Token width of the tower it serves.
    hidden : int (default: 256)
        The MLP's hidden width (the code's 256).
    heads : int (default: 0)
        Attention heads; 0 takes `max(1, width // 64)` as the code does.
    """

    def __init__(self, width: int, hidden: int = 256, heads: int = 0) -> None:
        super().__init__()
        heads = heads or max(1, width // HEAD_WIDTH)
        if width % heads:
            raise ValueError(f"{heads} heads should divide the width {width}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden, bias=False),
            QuickGELU(),
            nn.Linear(hidden, width, bias=False),
        )
        self.mix_attention = nn.Parameter(torch.full((1,), INITIAL_MIX))
        self.mix_mlp = nn.Parameter(torch.full((1,), INITIAL_MIX))

    def attend(self, prompts: Tensor, selected: Tensor, mask: Tensor | None) -> Tensor:
        """`(B, K, W)` queries over `(B, S, W)` keys; `mask` `(B, S)`, 1 = keep."""
        b, k, w = prompts.shape
        h = self.heads

        def split(x: Tensor) -> Tensor:  # (B, T, W) -> (B, h, T, W/h)
            return x.view(b, x.shape[1], h, w // h).transpose(1, 2)

        q = split(self.query(prompts))
        keys, values = split(self.key(selected)), split(self.value(selected))
        scores = q @ keys.transpose(-2, -1) / (w // h) ** 0.5  # (B, h, K, S)
        if mask is not None:
            blocked = (mask[:, None, None, :] == 0).to(scores.dtype)  # (B,1,1,S)
            scores = scores + blocked * torch.finfo(scores.dtype).min
        mixed = scores.softmax(dim=-1) @ values  # (B, h, K, W/h)
        return self.out(mixed.transpose(1, 2).reshape(b, k, w))

    def forward(
        self, prompts: Tensor, selected: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        """`(B, K, W)` prompts and `(B, K, W)` selected tokens -> `(B, K, W)` fused.

        `mask` `(B, K)` marks selected tokens that are padding (0): they are not
        attended to (the text tower's short class names; images have none).
        """
        if prompts.shape != selected.shape:
            raise ValueError(
                f"the TFM fuses as many selected tokens as prompts: prompts "
                f"{tuple(prompts.shape)}, selected {tuple(selected.shape)}"
            )
        a, b = self.mix_attention, self.mix_mlp
        normed_p, normed_s = self.norm1(prompts), self.norm1(selected)
        fused = a * selected + (1 - a) * self.attend(normed_p, normed_s, mask)
        return b * fused + (1 - b) * self.mlp(self.norm2(fused))
