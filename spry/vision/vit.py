"""A small Vision Transformer image tower, written with torch.nn.

Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image
Recognition at Scale", 2020. Paper: arxiv.org/abs/2010.11929

Why our own and not torchvision's or transformers' `ViTModel`: torchvision cannot
be imported beside the CPU torch here, and prompt methods (SEP, later) insert
learnable tokens and fusion modules between *every* pair of layers, so the tower
exposes its parts: `embed` (patch tokens after a CLS token, with position
embeddings), `blocks` (pre-norm transformer layers, each `(B, T, W) -> (B, T, W)`
for any token count T) and `pool` (the CLS token, normalized and projected).
`forward` runs them and keeps every layer's token sequence (`hidden_states`).
Attention is written out (matmul, softmax) rather than with
`scaled_dot_product_attention`, whose CPU kernels have no forward-mode AD rule,
so forward gradients go through the tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class ViTConfig:
    """The tower's shape; every default in one place.

    Parameters
    ----------
    image_size : int (default: 28)
        Square input side, pixels.
    channels : int (default: 1)
        Input channels (grey images).
    patch_size : int (default: 4)
        Square patch side; `image_size` must be a multiple (28 / 4 = 7x7 patches).
    width : int (default: 128)
        Token width.
    depth : int (default: 4)
        Transformer layers.
    heads : int (default: 4)
        Attention heads; must divide `width`.
    mlp_ratio : int (default: 4)
        MLP hidden width over token width.
    embed_dim : int (default: 384)
        Output embedding width (the text tower's: all-MiniLM-L6-v2 is 384).
    """

    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 384

    def __post_init__(self) -> None:
        for name in ("image_size", "channels", "patch_size", "width", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` should be at least 1, got {self}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"`patch_size` {self.patch_size} should divide `image_size` "
                f"{self.image_size}"
            )
        if self.heads < 1 or self.width % self.heads:
            raise ValueError(f"`heads` {self.heads} should divide `width` {self.width}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Attention(nn.Module):
    """Multi-head self-attention over all tokens, written out (forward-AD safe)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = (
            self.qkv(x)
            .view(b, t, 3, self.heads, w // self.heads)
            .permute(2, 0, 3, 1, 4)
        )  # each (B, heads, T, head_width)
        scores = q @ k.transpose(-2, -1) / (w // self.heads) ** 0.5  # (B, h, T, T)
        mixed = scores.softmax(dim=-1) @ v  # (B, h, T, head_width)
        return self.out(mixed.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    """One pre-norm transformer layer: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionOutput(NamedTuple):
    """What the tower returns: the embedding and every layer's tokens."""

    embeds: Tensor  # (B, embed_dim), not normalized
    hidden_states: tuple[Tensor, ...]  # depth + 1 tensors (B, T, width): input first


class VisionTransformer(nn.Module):
    """Patch tokens after a CLS token, `depth` layers, the CLS token projected."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.patch = nn.Conv2d(
            config.channels, w, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls = nn.Parameter(torch.zeros(1, 1, w))
        self.position = nn.Parameter(torch.zeros(1, config.num_patches + 1, w))
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(
            Block(w, config.heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(w)
        self.projection = nn.Linear(w, config.embed_dim, bias=False)

    def embed(self, images: Tensor) -> Tensor:
        """`(B, C, H, W)` images -> `(B, 1 + patches, width)` tokens, CLS first."""
        patches = self.patch(images).flatten(2).transpose(1, 2)  # (B, P, W)
        cls = self.cls.expand(len(images), -1, -1)  # (B, 1, W)
        return torch.cat([cls, patches], dim=1) + self.position

    def pool(self, tokens: Tensor) -> Tensor:
        """The last layer's tokens -> `(B, embed_dim)`: the CLS token, projected."""
        return self.projection(self.norm(tokens[:, 0]))

    def forward(self, images: Tensor) -> VisionOutput:
        tokens = self.embed(images)
        hidden = [tokens]
        for block in self.blocks:
            tokens = block(tokens)
            hidden.append(tokens)
        return VisionOutput(self.pool(tokens), tuple(hidden))
