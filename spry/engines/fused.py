"""Route a model's attention, norms and frozen feed-forward blocks to fused rules.

Inside `fused_rules(model)` (part of every forward-mode pass, `forward.forward_mode`):
eager attention runs `attention_rule.fused_attention`; a frozen nn.LayerNorm, and an
RMSNorm whose forward is Llama's, run `norm_rules`; a feed-forward block whose
linears are all frozen, with BERT's or Llama's forward, runs `mlp_rules`. A module
qualifies by its code, not its name: transformers copies these classes into many
model files ("Copied from"), and a copy with the same bytecode computes the same
function, while a class that changed anything (Gemma's (1 + w) RMSNorm) does not
match and keeps its own forward. The rules equal PyTorch's forward-AD result to
float32 rounding (tests/spry/test_fused_rules.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial
from types import CodeType
from typing import Any

from torch import Tensor, nn

from .attention_rule import eager_routed_to_fused
from .duals import fused_active
from .frozen_maps import is_frozen_map
from .mlp_rules import (
    BertFeedForward,
    GatedFeedForward,
    activation_rule,
    feed_forward,
)
from .norm_rules import FrozenNorm, NormConstants


def _code(fn: Any) -> tuple | None:
    code: CodeType | None = getattr(fn, "__code__", None)
    return None if code is None else (code.co_code, code.co_names, code.co_consts)


def _same_code(fn: Any, reference: Any) -> bool:
    return _code(fn) is not None and _code(fn) == _code(reference)


def _frozen(*modules: nn.Module) -> bool:
    return all(not p.requires_grad for m in modules for p in m.parameters())


def _layer_norm(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    if type(module) is not nn.LayerNorm or len(module.normalized_shape) != 1:
        return None
    if not _frozen(module):
        return None
    const = NormConstants(module.weight, module.bias, module.eps, rms=False)
    return lambda x: FrozenNorm.apply(x, const)


def _rms_norm(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    if not _same_code(type(module).forward, LlamaRMSNorm.forward):
        return None
    if not _frozen(module):
        return None
    const = NormConstants(module.weight, None, module.variance_epsilon, rms=True)
    return lambda x: FrozenNorm.apply(x, const)


def _gated_mlp(module: nn.Module) -> Callable[[Tensor], Tensor] | None:
    from transformers.models.llama.modeling_llama import LlamaMLP

    if not _same_code(type(module).forward, LlamaMLP.forward):
        return None
    linears = (module.gate_proj, module.up_proj, module.down_proj)
    act = activation_rule(module.act_fn)
    if act is None or not is_frozen_map(*linears):
        return None
    block = GatedFeedForward(module.gate_proj, module.up_proj, act, module.down_proj)
    return partial(feed_forward, block)


def _bert_feed_forward(layer: nn.Module) -> Callable[[Tensor], Tensor] | None:
    from transformers.models.bert.modeling_bert import (
        BertIntermediate,
        BertLayer,
        BertOutput,
    )

    chunk = getattr(type(layer), "feed_forward_chunk", None)
    if not _same_code(chunk, BertLayer.feed_forward_chunk):
        return None
    inter, out = layer.intermediate, layer.output
    if not (
        _same_code(type(inter).forward, BertIntermediate.forward)
        and _same_code(type(out).forward, BertOutput.forward)
    ):
        return None
    act = activation_rule(inter.intermediate_act_fn)
    dropout_on = out.dropout.training and out.dropout.p > 0
    if act is None or dropout_on or not is_frozen_map(inter.dense, out.dense):
        return None
    norm = out.LayerNorm
    if type(norm) is not nn.LayerNorm or not _frozen(norm):
        return None
    return partial(feed_forward, BertFeedForward(inter.dense, act, out.dense, norm))


# (module -> replacement or None, the method it replaces)
_ROUTES: tuple[tuple[Callable[[nn.Module], Callable | None], str], ...] = (
    (_layer_norm, "forward"),
    (_rms_norm, "forward"),
    (_gated_mlp, "forward"),
    (_bert_feed_forward, "feed_forward_chunk"),
)


def routed(model: nn.Module) -> list[tuple[nn.Module, str, Callable]]:
    """Every (module, method, fused replacement) that `fused_rules` installs."""
    found = []
    for module in model.modules():
        for route, method in _ROUTES:
            fused = route(module)
            if fused is not None:
                found.append((module, method, fused))
                break
    return found


@contextmanager
def fused_rules(model: nn.Module) -> Iterator[None]:
    """Inside the block, `model` computes its tangents with the fused rules."""
    patched = routed(model)
    with ExitStack() as stack:
        stack.enter_context(eager_routed_to_fused())
        stack.enter_context(fused_active())
        for module, method, fused in patched:
            setattr(module, method, fused)  # an instance attribute shadows it
        try:
            yield
        finally:
            for module, method, _ in patched:
                delattr(module, method)
