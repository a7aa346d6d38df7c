"""A value and its tangent, side by side, inside torch.func.jvp.

torch.func.jvp is built on PyTorch's forward AD: the function it differentiates sees
dual tensors, whose tangents `torch.autograd.forward_ad.unpack_dual` reads and
`make_dual` sets, when the jvp is the innermost transform. A fused rule that reads
both can compute the primal and the tangent of a block in one pass, sharing what they
have in common (the scores' softmax, an activation's input), where a
`torch.autograd.Function` computes its jvp after its forward and must keep or
recompute it. Inside another transform (torch.func.grad nested in the jvp) the
tangent is not visible from here: `split` then says so, and a rule takes its
`torch.autograd.Function` route, which every transform supports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch._C._functorch import TransformType, peek_interpreter_stack

_FUSED: ContextVar[bool] = ContextVar("fused_rules", default=False)

# Bytes one block of a fused rule's work may take (a rule's module docstring says
# which tensor it sizes by). Larger blocks: fewer, larger kernels and more memory.
DEFAULT_BLOCK_MIB = 2.0
_BLOCK_BYTES: ContextVar[int] = ContextVar(
    "fused_block_bytes", default=int(DEFAULT_BLOCK_MIB * 2**20)
)


@contextmanager
def fused_active() -> Iterator[None]:
    """Mark a forward-mode pass whose code outside the model (a loss) may fuse too."""
    token = _FUSED.set(True)
    try:
        yield
    finally:
        _FUSED.reset(token)


@contextmanager
def block_budget(mib: float) -> Iterator[None]:
    """Size the fused rules' blocks to `mib` MiB within the block: speed for memory."""
    if not mib > 0:
        raise ValueError(f"the block budget should be > 0 MiB, got {mib}")
    token = _BLOCK_BYTES.set(max(1, int(mib * 2**20)))
    try:
        yield
    finally:
        _BLOCK_BYTES.reset(token)


def block_bytes() -> int:
    """The fused rules' block budget in bytes (`block_budget`; 2 MiB by default)."""
    return _BLOCK_BYTES.get()


def fusing() -> bool:
    """Whether the current pass asked for fused rules (`fused_active`)."""
    return _FUSED.get()


def in_jvp() -> bool:
    """Whether the innermost active transform is a torch.func.jvp."""
    interpreter = peek_interpreter_stack()
    return interpreter is not None and interpreter.key() == TransformType.Jvp


def split(x: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """(primal, tangent or None) of a tensor of the innermost jvp."""
    if x is None:
        return None, None
    primal, tangent = fwAD.unpack_dual(x)
    return primal, tangent


def join(primal: Tensor, tangent: Tensor | None) -> Tensor:
    """The dual tensor with this primal and tangent (the primal alone if None)."""
    return primal if tangent is None else fwAD.make_dual(primal, tangent)
