"""Fused tangent rules: each equals PyTorch's own forward-AD result and backprop's.

Every rule is checked against the computation it replaces, run under PyTorch's
per-operator rules: the value, the tangent (also for K tangents under vmap), and the
backward. Blocks are made small so that the blockwise paths really split.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.func import jvp, vmap
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaMLP, LlamaRMSNorm
from transformers.models.llama.modeling_llama import eager_attention_forward as eager

from spry.engines import attention_rule
from spry.engines.attention_rule import fused_attention
from spry.engines.duals import block_budget
from spry.engines.forward import directional_derivative
from spry.engines.fused import fused_rules, routed
from spry.engines.norm_rules import FrozenNorm, NormConstants

MIN = torch.finfo(torch.float32).min


def _mib(nbytes: int) -> float:
    return nbytes / 2**20


@pytest.fixture(autouse=True)
def small_blocks():
    """Blocks of a few rows, so that every blockwise path runs several blocks:
    3 query rows of (2, 4, *, 10) scores, 5 tokens of a 48-wide activation."""
    with block_budget(_mib(2 * 4 * 3 * 10 * 4)):
        yield


@pytest.fixture
def logit_blocks(small_blocks):
    """Output-layer blocks of 5 positions of a 50-word vocabulary."""
    from spry.engines.loss_rules import LOGIT_BUDGETS

    with block_budget(_mib(5 * 50 * 4 // LOGIT_BUDGETS)):
        yield


def test_the_block_budget_sizes_the_blocks():
    """Twice the budget, twice the rows; no budget at all is refused."""
    q = torch.zeros(2, 4, 64, 8)
    rows = attention_rule.block_size(q, keys=10)
    with block_budget(_mib(2 * 2 * 4 * 3 * 10 * 4)):
        assert attention_rule.block_size(q, keys=10) == 2 * rows == 6
    with pytest.raises(ValueError, match="> 0 MiB"), block_budget(0):
        pass


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _like(gen, *tensors):
    return tuple(torch.randn(t.shape, generator=gen) for t in tensors)


def _assert_rule(plain, fused, primals):
    """Same value, tangent (one and three under vmap) and gradient as `plain`."""
    gen = _gen()
    tangents = _like(gen, *primals)
    with torch.no_grad():
        expected, got = jvp(plain, primals, tangents), jvp(fused, primals, tangents)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    stacked = [torch.stack([t, -2 * t, t.flip(0)]) for t in tangents]
    with torch.no_grad():
        e = vmap(lambda *t: jvp(plain, primals, t)[1])(*stacked)
        g = vmap(lambda *t: jvp(fused, primals, t)[1])(*stacked)
    torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    leaves = [p.clone().requires_grad_() for p in primals]
    weights = torch.randn(expected[0].shape, generator=gen)
    e = torch.autograd.grad((plain(*leaves) * weights).sum(), leaves)
    g = torch.autograd.grad((fused(*leaves) * weights).sum(), leaves)
    for a, b in zip(e, g, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def _moved_adapters(model, gen):
    """The model's trainable tensors, moved off LoRA B's zero init."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return params


def _assert_jvp_is_backprops(model, loss, batch, params, gen, *, tangents=1):
    """Fused and unfused: the same loss, and jvp = backprop's gradient . tangent."""
    grads = torch.autograd.grad(loss(model, batch)[0], list(params.values()))
    for _ in range(tangents):
        tangent = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
        exact = sum((g * tangent[n]).sum() for g, n in zip(grads, params, strict=True))
        values = []
        for fused in (True, False):
            value, derivative, _ = directional_derivative(
                model, loss, batch, params, tangent, fused=fused
            )
            torch.testing.assert_close(derivative, exact, rtol=1e-4, atol=1e-6)
            values.append(value)
        torch.testing.assert_close(values[0], values[1])


class _Attention(nn.Module):
    num_key_value_groups = 2


@pytest.mark.parametrize("mask", ["none", "padded", "causal", "bool"])
def test_attention_equals_eager_attention_under_forward_ad(mask):
    gen, module = _gen(), _Attention().eval()
    b, h, t, d = 2, 4, 10, 8
    q = torch.randn(b, h, t, d, generator=gen)
    k, v = (torch.randn(b, h // 2, t, d, generator=gen) for _ in range(2))
    padded = torch.zeros(b, 1, t, t)
    padded[0, ..., 6:] = MIN  # the first example's last four keys are padding
    causal = torch.triu(torch.full((t, t), MIN), 1).expand(b, 1, t, t)
    additive = {"none": None, "padded": padded, "causal": causal, "bool": causal}[mask]
    given = causal == 0 if mask == "bool" else additive

    def plain(q, k, v):
        return eager(module, q, k, v, additive, scaling=0.3)[0]

    def fused(q, k, v):
        out, weights = fused_attention(module, q, k, v, given, scaling=0.3)
        assert weights is None
        return out

    _assert_rule(plain, fused, (q, k, v))


def test_attention_with_a_tangent_on_the_queries_only():
    gen, module = _gen(), _Attention().eval()
    q, k, v = (torch.randn(2, 4, 10, 8, generator=gen) for _ in range(3))
    module.num_key_value_groups = 1
    q_t = torch.randn(q.shape, generator=gen)
    with torch.no_grad():
        expected = jvp(
            lambda q: eager(module, q, k, v, None, scaling=0.5)[0], (q,), (q_t,)
        )
        got = jvp(
            lambda q: fused_attention(module, q, k, v, None, scaling=0.5)[0],
            (q,),
            (q_t,),
        )
    torch.testing.assert_close(got[1], expected[1], rtol=1e-5, atol=1e-5)


def test_attention_dropout_in_train_mode_falls_back_to_eager():
    gen = _gen()
    module = _tiny_llama().model.layers[0].self_attn.train()
    q = torch.randn(1, 4, 5, 8, generator=gen)
    k, v = (torch.randn(1, 2, 5, 8, generator=gen) for _ in range(2))
    _, weights = fused_attention(module, q, k, v, None, scaling=0.5, dropout=0.1)
    assert weights is not None  # eager's probabilities: the eager path ran


def test_layer_norm_and_rms_norm_equal_their_modules_under_forward_ad():
    gen = _gen()
    x = torch.randn(3, 5, 16, generator=gen)
    norm = nn.LayerNorm(16).requires_grad_(False)
    nn.init.normal_(norm.weight, generator=gen)
    nn.init.normal_(norm.bias, generator=gen)
    const = NormConstants(norm.weight, norm.bias, norm.eps, rms=False)
    _assert_rule(norm, lambda x: FrozenNorm.apply(x, const), (x,))
    rms = LlamaRMSNorm(16, eps=1e-6).requires_grad_(False)
    nn.init.normal_(rms.weight, generator=gen)
    const = NormConstants(rms.weight, None, rms.variance_epsilon, rms=True)
    _assert_rule(rms, lambda x: FrozenNorm.apply(x, const), (x,))


def _tiny_bert() -> BertModel:
    cfg = BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=32, attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    return BertModel(cfg).eval()


def _tiny_llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=48, max_position_embeddings=32,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_feed_forward_blocks_equal_their_modules_under_forward_ad():
    x = torch.randn(2, 9, 32, generator=_gen())
    bert = _tiny_bert().requires_grad_(False)
    layer = bert.encoder.layer[0]
    feed_forward = type(layer).feed_forward_chunk.__get__(layer)
    fused = {m: f for m, _, f in routed(bert)}[layer]
    _assert_rule(feed_forward, fused, (x,))
    llama = _tiny_llama().requires_grad_(False)
    mlp = llama.model.layers[0].mlp
    fused = {m: f for m, _, f in routed(llama)}[mlp]
    _assert_rule(mlp, fused, (x,))


def test_routing_takes_frozen_modules_with_the_known_code_only():
    model = get_peft_model(
        _tiny_llama().requires_grad_(False),
        LoraConfig(r=1, target_modules=["q_proj", "v_proj", "up_proj"]),
    )
    found = {type(m).__name__ for m, _, _ in routed(model)}
    assert found == {"LlamaRMSNorm"}  # the MLPs carry an adapter on up_proj

    class ShiftedRMSNorm(LlamaRMSNorm):  # Gemma's kind: (1 + w), other code
        def forward(self, x):
            return super().forward(x) * 2

    plain = nn.Sequential(LlamaMLP(_tiny_llama().config), ShiftedRMSNorm(32))
    plain.requires_grad_(False)
    assert [type(m).__name__ for m, _, _ in routed(plain)] == ["LlamaMLP"]
    with fused_rules(plain):
        assert "forward" in vars(plain[0])
    assert "forward" not in vars(plain[0])


@pytest.mark.parametrize("build", [_tiny_bert, _tiny_llama])
def test_a_lora_model_gets_backprops_directional_derivative(build):
    """The fused jvp of a LoRA model = backprop's gradient . tangent (padded batch)."""
    targets = ["query", "value"] if build is _tiny_bert else ["q_proj", "v_proj"]
    model = get_peft_model(build(), LoraConfig(r=2, target_modules=targets))
    gen = _gen()
    params = _moved_adapters(model, gen)
    ids = torch.randint(3, 50, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}

    def loss(net, batch):
        out = net(**batch)
        hidden = out.logits if build is _tiny_llama else out.last_hidden_state
        return (hidden.tanh() * batch["attention_mask"][..., None]).square().mean(), {}

    assert routed(model)  # the fused path is really taken
    _assert_jvp_is_backprops(model, loss, batch, params, gen)
    assert not any("forward" in vars(m) for m in model.modules())  # restored


def test_feed_forward_with_active_dropout_keeps_its_own_forward():
    bert = _tiny_bert().requires_grad_(False)
    bert.train()
    assert not any(method == "feed_forward_chunk" for _, method, _ in routed(bert))


def test_rules_under_grad_nested_in_a_jvp_take_the_function_route():
    """Where a jvp's tangent is hidden by an inner grad, the Function rules apply."""
    from spry.engines.duals import in_jvp

    x = torch.randn(2, 9, 32, generator=_gen())
    llama = _tiny_llama().requires_grad_(False)
    mlp = llama.model.layers[0].mlp
    fused = {m: f for m, _, f in routed(llama)}[mlp]
    w0 = torch.randn(32, generator=_gen())
    seen = []

    def nested(rule):
        def outer(x):
            def inner(w):
                seen.append(in_jvp())
                return (rule(x) * w).sum()

            return torch.func.grad(inner)(w0)

        return outer

    v = torch.randn(x.shape, generator=_gen())
    with torch.no_grad():
        expected = jvp(nested(mlp), (x,), (v,))
        got = jvp(nested(fused), (x,), (v,))
    assert seen == [False, False]
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_chunked_causal_lm_loss_gets_backprops_directional_derivative(
    monkeypatch, logit_blocks
):
    """The fused output-layer cross-entropy (blocks of 5 positions) = backprop's."""
    from spry.engines import loss_rules
    from spry.language_modeling import make_causal_lm_loss

    calls = []
    rule = loss_rules.linear_cross_entropy_sum
    monkeypatch.setattr(
        loss_rules, "linear_cross_entropy_sum", lambda *a: calls.append(1) or rule(*a)
    )
    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["v_proj"]))
    gen = _gen()
    params = _moved_adapters(model, gen)
    ids = torch.randint(3, 50, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding: ignored positions
    batch = {"input_ids": ids, "attention_mask": mask}
    loss = make_causal_lm_loss(16)
    _assert_jvp_is_backprops(model, loss, batch, params, gen, tangents=2)
    assert len(calls) == 6  # 33 positions: 3 chunks in each of 2 fused passes


def test_quantized_frozen_layers_take_the_fused_rules(logit_blocks):
    """A 4-bit LoRA Llama: the MLPs and the output layer fuse, with the same jvp."""
    from spry.language_modeling import make_causal_lm_loss
    from spry.models.quantized import quantize_frozen

    model = get_peft_model(_tiny_llama(), LoraConfig(r=2, target_modules=["v_proj"]))
    quantize_frozen(model, "nf4")
    assert {type(m).__name__ for m, _, _ in routed(model)} >= {"LlamaMLP"}
    gen = _gen()
    params = _moved_adapters(model, gen)
    batch = {"input_ids": torch.randint(3, 50, (2, 10), generator=gen)}
    loss = make_causal_lm_loss(8)
    _assert_jvp_is_backprops(model, loss, batch, params, gen)
