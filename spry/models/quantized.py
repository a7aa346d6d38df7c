"""Frozen linear layers stored as int8 or 4-bit codes: the base model at its floor.

The Spry paper's headline setting is a 4-bit base model with LoRA on top (QLoRA's
setting: Dettmers et al., "QLoRA", arXiv 2305.14314). A frozen weight is only read,
so it can be stored as small integer codes and a few scales, and turned back into
floats inside each matmul:

- "int8": one signed byte per weight, one float16 scale per output row
  (symmetric absmax: scale = max|w_row| / 127), so |w - w_q| <= scale / 2.
- "int4": two 4-bit codes per byte, one float16 scale per group of 64 weights
  along the input dimension (symmetric absmax over 15 levels, -7..7, so
  |w - w_q| <= scale / 14, half a step).
- "nf4": the same layout with bitsandbytes' NormalFloat4 code table (QLoRA,
  appendix E): 16 levels at quantiles of N(0, 1), denser near zero, where most
  weights of a trained layer are.

`QuantizedLinear` dequantizes in blocks of output rows inside its own autograd
Function, so no float copy of a whole layer (let alone the model) is kept: under
ordinary autograd its backward is grad @ W (the input's gradient only; W is frozen),
and under forward mode its jvp is x_t @ W^T with W outside the Function's tensor
inputs, so no W-sized zero tangent exists (`spry.engines.frozen` explains the
cost). Backprop, checkpointed backprop, MeZO and Spry therefore run on the same
quantized model. Only a block of `BLOCK_ELEMENTS` weights is in float at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engines.duals import fusing, in_jvp, join, split
from ..engines.frozen_maps import maps, with_bias

SCHEMES: tuple[str, ...] = ("int8", "int4", "nf4")
GROUP_SIZE = 64  # 4-bit schemes: weights per scale, along the input dimension
BLOCK_ELEMENTS = 2**21  # weights dequantized at a time (8 MiB in float32)
SCALE_DTYPE = torch.float16  # 11 significant bits: the scale adds ~0.05% error

# bitsandbytes' NF4 table (bitsandbytes/functional.py, `get_4bit_type("nf4")`)
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
    0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip
# Symmetric int4: code k stands for (k - 8) / 7; code 0 (-8/7) is never produced.
INT4_LEVELS = tuple((k - 8) / 7 for k in range(16))


def check_scheme(name: str) -> str:
    """`name` if it is a quantization scheme, else a ValueError naming the options."""
    if name not in SCHEMES:
        raise ValueError(
            f"quantization scheme should be one of {list(SCHEMES)}, got {name!r}"
        )
    return name


def levels(scheme: str) -> Tensor:
    """The 16 values (times the group scale) a 4-bit scheme's codes stand for."""
    return torch.tensor(NF4_LEVELS if scheme == "nf4" else INT4_LEVELS)


def _byte_table(scheme: str) -> Tensor:
    """(256, 2): the two weights one packed byte holds (low nibble first)."""
    table = levels(scheme)
    byte = torch.arange(256)
    return torch.stack([table[byte & 15], table[byte >> 4]], dim=-1)


def quantize(weight: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """`(codes, scales)` of a float (out, in) weight; see the module docstring.

    int8: codes (out, in) int8, scales (out, 1). 4-bit: codes (out, in_padded / 2)
    uint8 with the input padded with zeros to a multiple of `GROUP_SIZE`, scales
    (out, in_padded / GROUP_SIZE).
    """
    check_scheme(scheme)
    w = weight.detach().float()
    if scheme == "int8":
        absmax = w.abs().amax(dim=1, keepdim=True)  # (out, 1)
        scales = (absmax / 127).to(SCALE_DTYPE)
        step = scales.float().clamp_min(torch.finfo(torch.float32).tiny)
        codes = torch.round(w / step).clamp_(-127, 127).to(torch.int8)
        return codes, scales
    out, cols = w.shape
    pad = -cols % GROUP_SIZE
    groups = F.pad(w, (0, pad)).view(out, -1, GROUP_SIZE)  # (out, G, 64)
    scales = groups.abs().amax(dim=-1).to(SCALE_DTYPE)  # (out, G)
    unit = groups / scales.float().clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    table = levels(scheme)
    midpoints = (table[1:] + table[:-1]) / 2
    idx = torch.bucketize(unit.clamp(-1, 1), midpoints).to(torch.uint8)  # nearest
    idx = idx.view(out, -1, 2)  # two codes per byte: low nibble first
    codes = idx[..., 0] | (idx[..., 1] << 4)
    return codes.contiguous(), scales


def dequantize_rows(
    codes: Tensor, scales: Tensor, scheme: str, cols: int, dtype: torch.dtype
) -> Tensor:
    """The float weight rows that `codes`/`scales` (some rows of them) stand for."""
    rows = codes.shape[0]
    if scheme == "int8":
        return (codes.float() * scales.float()).to(dtype)  # (rows, in)
    table = _byte_table(scheme).to(codes.device)
    unit = F.embedding(codes.int(), table)  # (rows, in_padded / 2, 2)
    w = unit.view(rows, -1, GROUP_SIZE) * scales.float()[..., None]  # (rows, G, 64)
    return w.view(rows, -1)[:, :cols].to(dtype)


class QuantizedLinear(nn.Module):
    """A frozen y = x W^T + b with W stored as int8 or 4-bit codes.

    Parameters
    ----------
    codes : Tensor
        The packed codes from `quantize`.
    scales : Tensor
        Their float16 scales.
    scheme : str
        "int8", "int4" or "nf4".
    in_features : int
        The input dimension (4-bit codes are padded to a multiple of 64).
    bias : Tensor | None (default: None)
        Kept as it is (float32 in practice: it is tiny).

    The computation runs in the input's dtype; codes, scales and bias are buffers,
    so they move with the model and count as its weights, and nothing here trains.
    """

    def __init__(
        self,
        *,
        codes: Tensor,
        scales: Tensor,
        scheme: str,
        in_features: int,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.scheme = check_scheme(scheme)
        self.in_features, self.out_features = in_features, codes.shape[0]
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.register_buffer("bias", None if bias is None else bias.detach())

    @classmethod
    def from_linear(cls, layer: nn.Linear, scheme: str) -> QuantizedLinear:
        """`layer`'s weight quantized with `scheme`; its bias kept as it is."""
        codes, scales = quantize(layer.weight, scheme)
        return cls(codes=codes, scales=scales, scheme=scheme,
                   in_features=layer.in_features, bias=layer.bias)  # fmt: skip

    @classmethod
    def random(
        cls,
        out_features: int,
        in_features: int,
        scheme: str,
        *,
        std: float = 0.02,
        generator: torch.Generator | None = None,
    ) -> QuantizedLinear:
        """Random codes and scales of a N(0, std^2)-like weight, built directly.

        A 7B-parameter model is never held in float: the codes are drawn
        uniformly and the scales set to a N(0, std^2) group's typical absmax
        (about 2.5 std over 64 weights, 4.5 std over a 4096-wide row).
        """
        check_scheme(scheme)
        if scheme == "int8":
            width, absmax = 1, 4.5 * std / 127  # a step: codes run -127..127
            codes = torch.randint(-127, 128, (out_features, in_features),
                                  generator=generator).to(torch.int8)  # fmt: skip
        else:
            padded = in_features + (-in_features % GROUP_SIZE)
            width, absmax = padded // GROUP_SIZE, 2.5 * std
            codes = torch.randint(0, 256, (out_features, padded // 2),
                                  generator=generator, dtype=torch.uint8)  # fmt: skip
        spread = 0.5 + torch.rand((out_features, width), generator=generator)
        scales = (spread * absmax).to(SCALE_DTYPE)
        return cls(codes=codes, scales=scales, scheme=scheme, in_features=in_features)

    def blocks(self, dtype: torch.dtype) -> Iterator[tuple[slice, Tensor]]:
        """(rows, W[rows] in `dtype`) for blocks of about `BLOCK_ELEMENTS` weights."""
        step = max(1, BLOCK_ELEMENTS // self.in_features)
        for start in range(0, self.out_features, step):
            rows = slice(start, start + step)
            codes, scales = self.codes[rows], self.scales[rows]
            yield (
                rows,
                dequantize_rows(codes, scales, self.scheme, self.in_features, dtype),
            )

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The whole (out, in) weight in `dtype`: for tests and checks, not the step."""
        return torch.cat([w for _, w in self.blocks(dtype)])

    def weight_rows(self, ids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """Rows `ids` of W in `dtype` (a label word's output row), no other row."""
        codes, scales = self.codes[ids], self.scales[ids]
        return dequantize_rows(codes, scales, self.scheme, self.in_features, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if fusing() and in_jvp():  # primal and tangent from one dequantization
            primal, tangent = split(x)
            if tangent is not None:
                y, y_t = maps(self, primal, tangent)
                return join(with_bias(self, y), y_t)
        return QuantizedMatmul.apply(x, self)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"scheme={self.scheme}, bias={self.bias is not None}"
        )


def _matmul(x: Tensor, layer: QuantizedLinear) -> Tensor:
    """Compute x W^T a block of output rows at a time (one block when it is small)."""
    outs = [F.linear(x, w) for _, w in layer.blocks(x.dtype)]  # (..., rows) each
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)


class QuantizedMatmul(torch.autograd.Function):
    """y = x W^T + b for a `QuantizedLinear`: W and b are constants.

    W is dequantized inside each rule (forward, jvp, backward), never an input, so
    neither autograd nor forward mode sees a tensor that could carry a gradient or a
    tangent of W.
    """

    generate_vmap_rule = True  # K tangents batched by torch.func.vmap

    @staticmethod
    def forward(x: Tensor, layer: QuantizedLinear) -> Tensor:
        y = _matmul(x, layer)
        return y if layer.bias is None else y + layer.bias.to(y.dtype)

    @staticmethod
    def setup_context(
        ctx: Any, inputs: tuple[Tensor, QuantizedLinear], output: Tensor
    ) -> None:
        ctx.layer = inputs[1]

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor, _: None) -> Tensor:
        return _matmul(x_t, ctx.layer)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        layer: QuantizedLinear = ctx.layer
        total: Tensor | None = None
        for rows, w in layer.blocks(grad.dtype):
            part = grad[..., rows] @ w  # (..., in)
            total = part if total is None else total + part
        assert total is not None
        return total, None


def _tied_pointers(model: nn.Module) -> set[int]:
    return {m.weight.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding)}


def quantize_frozen(model: nn.Module, scheme: str) -> nn.Module:
    """Replace `model`'s frozen nn.Linear layers by `QuantizedLinear`, in place.

    Frozen means neither weight nor bias requires grad: PEFT's base layers, an
    untied output layer. LoRA adapters, heads and other trainable linears stay
    as they are, and so does an output layer tied to the input embedding (its
    weight is the embedding's; quantizing it would not free the float copy).
    """
    check_scheme(scheme)
    tied = _tied_pointers(model)
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            frozen = (
                type(child) is nn.Linear
                and not child.weight.requires_grad
                and (child.bias is None or not child.bias.requires_grad)
            )
            in_adapter = any(
                s.startswith("lora_") for s in f"{parent_name}.{name}".split(".")
            )
            if frozen and not in_adapter and child.weight.data_ptr() not in tied:
                setattr(parent, name, QuantizedLinear.from_linear(child, scheme))
    return model


def weight_count(model: nn.Module) -> int:
    """Parameters plus the weights `QuantizedLinear` layers hold as codes."""
    quantized = sum(
        m.out_features * m.in_features
        for m in model.modules()
        if isinstance(m, QuantizedLinear)
    )
    return quantized + sum(p.numel() for p in model.parameters())
