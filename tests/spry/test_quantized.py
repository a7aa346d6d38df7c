"""Quantized frozen linears: bounded error, the same tangent, the same gradients.

Each engine differentiates the quantized model itself: its value, jvp and input
gradient must equal those of a float32 linear holding the dequantized weight.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spry.engines import directional_derivative, make_engine
from spry.engines.duals import fused_active
from spry.engines.frozen import frozen_linears
from spry.language_modeling import make_causal_lm_loss
from spry.models import quantized
from spry.models.causal_lm import build_causal_lm
from spry.models.precision import store_frozen
from spry.models.quantized import (
    GROUP_SIZE,
    NF4_LEVELS,
    QuantizedLinear,
    quantize,
    quantize_frozen,
)

SCHEMES = ("int8", "int4", "nf4")


def weight(out: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(out, cols, generator=gen) * torch.rand(out, 1, generator=gen)


def test_int8_error_is_at_most_half_a_step_of_its_row():
    w = weight(37, 100)
    layer = QuantizedLinear.from_linear(_linear(w), "int8")
    error = (layer.dequantize() - w).abs()
    step = layer.scales.float()  # (out, 1): row absmax / 127
    assert torch.all(error <= step / 2 * (1 + 1e-5))
    rowmax = w.abs().amax(dim=1, keepdim=True)
    assert torch.all(error <= rowmax / 254 * (1 + 2e-3))  # float16 scale rounding


@pytest.mark.parametrize("scheme", ["int4", "nf4"])
def test_4bit_error_is_at_most_half_a_step_of_its_group(scheme):
    cols = 3 * GROUP_SIZE + 5  # not a multiple of the group: padded
    w = weight(9, cols)
    layer = QuantizedLinear.from_linear(_linear(w), scheme)
    assert layer.codes.shape == (9, 4 * GROUP_SIZE // 2)  # two codes per byte
    deq = layer.dequantize()
    assert deq.shape == w.shape
    scale = layer.scales.float().repeat_interleave(GROUP_SIZE, dim=1)[:, :cols]
    # int4: levels 1/7 apart; nf4: the widest gap of its table
    gap = 1 / 7 if scheme == "int4" else max(
        b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:], strict=False)
    )  # fmt: skip
    assert torch.all((deq - w).abs() <= scale * gap / 2 * (1 + 1e-5))
    # and the codes are no worse than the nearest level: exact values come back
    again = QuantizedLinear.from_linear(_linear(deq), scheme).dequantize()
    torch.testing.assert_close(again, deq, rtol=2e-3, atol=0)


def test_bad_scheme_names_are_refused_clearly():
    with pytest.raises(
        ValueError, match=r"one of \['int8', 'int4', 'nf4'\], got 'int3'"
    ):
        quantize(torch.ones(2, 2), "int3")
    with pytest.raises(ValueError, match="frozen dtype should be one of.*'nf4'.*fp8"):
        store_frozen(nn.Linear(2, 2), "fp8")


def _linear(w: torch.Tensor, bias: bool = False) -> nn.Linear:
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias).requires_grad_(False)
    layer.weight.copy_(w)
    return layer


@pytest.mark.parametrize("scheme", SCHEMES)
def test_value_jvp_and_input_gradient_are_those_of_the_dequantized_weight(
    scheme, monkeypatch
):
    monkeypatch.setattr(quantized, "BLOCK_ELEMENTS", 3 * 130)  # several row blocks
    gen = torch.Generator().manual_seed(1)
    layer = QuantizedLinear.from_linear(_linear(weight(11, 130), bias=True), scheme)
    w = layer.dequantize()  # float32
    x, v = torch.randn(4, 130, generator=gen), torch.randn(4, 130, generator=gen)
    torch.testing.assert_close(layer(x), F.linear(x, w, layer.bias))
    # forward mode, as the engine runs it: inside frozen_linears, under no_grad
    with torch.no_grad(), frozen_linears(layer):
        _, tangent = torch.func.jvp(layer, (x,), (v,))
    torch.testing.assert_close(tangent, v @ w.T)
    # with the fused rules on, primal and tangent come from one dequantization
    walks, blocks = [], layer.blocks
    layer.blocks = lambda dtype: walks.append(dtype) or blocks(dtype)
    with torch.no_grad(), frozen_linears(layer):
        torch.func.jvp(layer, (x,), (v,))
        assert len(walks) == 2  # the Function: forward, then jvp
        with fused_active():
            value, fused = torch.func.jvp(layer, (x,), (v,))
    assert len(walks) == 3
    del layer.blocks
    torch.testing.assert_close(value, F.linear(x, w, layer.bias))
    torch.testing.assert_close(fused, v @ w.T)
    # ...and batched over tangents by vmap (K tangents in one pass)
    vs = torch.randn(3, 4, 130, generator=gen)
    with torch.no_grad():
        _, tangents = torch.func.vmap(lambda t: torch.func.jvp(layer, (x,), (t,)))(vs)
    torch.testing.assert_close(tangents, vs @ w.T)
    # backprop: the gradient of the input only
    xg = x.clone().requires_grad_(True)
    (layer(xg) ** 2).sum().backward()
    expected = x.clone().requires_grad_(True)
    (F.linear(expected, w, layer.bias) ** 2).sum().backward()
    # (summed over row blocks: another order of float32 additions)
    torch.testing.assert_close(xg.grad, expected.grad, rtol=1e-4, atol=1e-4)
    assert not any(t.requires_grad for t in layer.buffers())


def test_only_frozen_untied_linears_outside_adapters_are_quantized():
    model = nn.ModuleDict({
        "emb": nn.Embedding(10, 4),
        "base": nn.Linear(4, 4).requires_grad_(False),
        "head": nn.Linear(4, 2),  # trainable
        "tied": nn.Linear(4, 10, bias=False).requires_grad_(False),
        "lora_A": nn.ModuleDict({"default": nn.Linear(4, 1).requires_grad_(False)}),
    })  # fmt: skip
    model["tied"].weight = model["emb"].weight
    quantize_frozen(model, "nf4")
    kinds = {name: type(m).__name__ for name, m in model.items()}
    assert kinds["base"] == "QuantizedLinear"
    assert kinds["head"] == kinds["tied"] == "Linear"
    assert type(model["lora_A"]["default"]) is nn.Linear


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaConfig

    def build(dtype: str):
        config = LlamaConfig(
            vocab_size=300, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            tie_word_embeddings=False,
        )  # fmt: skip
        return build_causal_lm(dtype=dtype, random_weights=config,
                               with_tokenizer=False)  # fmt: skip

    return build


def _derivative_and_dotted(trainable) -> tuple[float, float]:
    """(jvp, backprop gradient . tangent) at non-zero LoRA weights, same model."""
    net, gen = trainable.model, torch.Generator().manual_seed(3)
    params = {trainable.own_name(n): p for n, p in trainable.parameters().items()}
    assert params and {p.dtype for p in params.values()} == {torch.float32}
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    ids = torch.randint(3, 300, (2, 16), generator=gen)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    loss = make_causal_lm_loss(0)
    tangent = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}
    _, derivative, _ = directional_derivative(net, loss, batch, params, tangent)
    exact = make_engine("backprop").estimate(net, loss, batch, params, generator=gen)
    dotted = sum((exact.grads[n] * tangent[n]).sum() for n in params)
    assert float(dotted) != 0
    return float(derivative), float(dotted)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_spry_step_on_quantized_linears_is_the_backprop_gradient_dotted(
    tiny_lm, scheme
):
    # Prepare: a float32 model whose frozen linears (and only those) are quantized
    trainable = tiny_lm("float32")
    quantize_frozen(trainable.model, scheme)
    layers = [m for m in trainable.model.modules() if isinstance(m, QuantizedLinear)]
    assert len(layers) == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    # Execute
    derivative, dotted = _derivative_and_dotted(trainable)
    # Assert: the same quantized function, differentiated two ways, in float32
    assert derivative == pytest.approx(dotted, rel=1e-4)


def test_frozen_dtype_nf4_builds_codes_and_bfloat16_and_its_jvp_agrees(tiny_lm):
    # Prepare: the configured path, the rest of the frozen weights in bfloat16
    trainable = tiny_lm("nf4")
    net = trainable.model
    assert sum(isinstance(m, QuantizedLinear) for m in net.modules()) == 15
    frozen = {p.dtype for p in net.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}  # embeddings, norms
    assert {m.scales.dtype for m in net.modules() if isinstance(m, QuantizedLinear)} \
        == {torch.float16}  # fmt: skip
    # Execute
    derivative, dotted = _derivative_and_dotted(trainable)
    # Assert: bfloat16 arithmetic rounds differently in the two passes (measured:
    # 4.1% here; the same model with plain bfloat16 frozen weights, 8.5%)
    assert derivative == pytest.approx(dotted, rel=0.1)


def test_a_shape_built_straight_into_nf4_is_the_configured_models_layout():
    from transformers import LlamaConfig

    from spry.models.quantized_lm import build_quantized_causal_lm

    # Prepare / Execute: a tiny Llama shape, never in float32
    config = LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    built = build_quantized_causal_lm(config, "nf4")
    reference = build_causal_lm(dtype="nf4", random_weights=config,
                                with_tokenizer=False)  # fmt: skip

    # Assert: the same modules, dtypes and trainable names as frozen-dtype=nf4
    # (but RoPE's inverse frequencies: recomputed in float32 here, where
    # cast_frozen casts that buffer to bfloat16)
    def layout(model: nn.Module) -> dict[str, tuple]:
        return {n: (type(m).__name__, tuple(
            (k, t.dtype, tuple(t.shape)) for k, t in
            [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]))
            for n, m in model.named_modules() if "rotary" not in n}  # fmt: skip

    assert layout(built.model) == layout(reference.model)
    assert built.names == reference.names
    assert not any(t.is_meta for t in [*built.model.parameters(),
                                       *built.model.buffers()])  # fmt: skip
    # ...and a forward-mode step runs on it and agrees with its own backprop
    derivative, dotted = _derivative_and_dotted(built)
    assert derivative == pytest.approx(dotted, rel=0.1)


def test_label_words_read_only_their_rows_of_a_quantized_output_layer(tiny_lm):
    from spry.tasks.lm_classification.scoring import label_word_logits

    # Prepare: an untied output layer, quantized
    net = tiny_lm("int8").model
    head = net.get_output_embeddings()
    assert isinstance(head, QuantizedLinear)
    ids = torch.tensor([7, 250])
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(3, 300, (3, 10), generator=gen)
    batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    # Execute
    with torch.no_grad():
        scores = label_word_logits(net, batch, ids)
        full = net(**batch).logits[:, -1, ids].float()
    # Assert: the rows alone, and the model's own logits there (bfloat16 compute)
    torch.testing.assert_close(head.weight_rows(ids), head.dequantize()[ids])
    torch.testing.assert_close(scores, full, rtol=2e-2, atol=2e-2)
