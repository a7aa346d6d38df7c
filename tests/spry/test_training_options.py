"""Client training options: head-only, dropout with seeded masks, LoRA-FA, B's init.

On tiny random models (a 2-layer BERT classifier with dropout 0.1 and a 2-layer
Llama), so the checks are about the mechanics, not the weights: which tensors
train, which stay put, and that with dropout on every engine differentiates one
function (the jvp equals backprop's gradient dotted with the tangent, under one
mask seed).
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, LlamaConfig

from spry.classification import classification_loss
from spry.config import ClientConfig, ModelConfig
from spry.engines import Backprop, ForwardGradient, make_engine
from spry.engines.forward import (
    derivatives_with_exact,
    directional_derivative,
    directional_derivatives,
    stack,
)
from spry.models import ModelError, build_classifier, is_head
from spry.models.causal_lm import build_causal_lm
from spry.models.lora import is_lora
from spry.training import (
    estimate_one_batch,
    make_client_engine,
    train_slice,
    with_seeded_masks,
)

VOCAB = 40


def bert(dropout: float = 0.1) -> BertConfig:
    return BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )  # fmt: skip


def llama() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip


def classifier(**model_options):
    cfg = ModelConfig(**{"lora_dropout": 0.1, **model_options})
    return build_classifier(cfg, num_labels=3, seed=0, random_weights=bert())


def batch(seed: int = 0, size: int = 6, length: int = 9) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, VOCAB, (size, length), generator=gen),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "labels": torch.randint(0, 3, (size,), generator=gen),
    }


def own_params(trainable):
    return {trainable.own_name(n): p for n, p in trainable.parameters().items()}


def lora_tensors(trainable) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone()
        for n, p in trainable.model.named_parameters()
        if is_lora(n)
    }


def dot(grads, tangent) -> float:
    return float(sum((grads[k] * tangent[k]).sum() for k in tangent))


# -- train-lora = false: the head-only reference ---------------------------------


@pytest.mark.parametrize("pooling", ["mean", "model"])
def test_without_lora_training_only_the_head_is_named(pooling):
    pooled = {"pooling": pooling, "center_features": pooling != "model"}
    trainable = classifier(train_lora=False, **pooled)
    assert trainable.names and all(is_head(n) for n in trainable.names)
    lora = [p for n, p in trainable.model.named_parameters() if is_lora(n)]
    assert lora and not any(p.requires_grad for p in lora)
    # The default build names LoRA as well, and the same head
    default = classifier(**pooled)
    assert [n for n in default.names if is_head(n)] == list(trainable.names)
    assert any("lora_A" in n for n in default.names)


def test_a_causal_lm_without_lora_training_fails_in_one_line():
    with pytest.raises(ModelError, match="nothing to train in a causal LM") as info:
        build_causal_lm(random_weights=llama(), train_lora=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dropout", [False, True])
def test_a_head_only_round_leaves_every_lora_tensor_unchanged(dropout):
    # Prepare: move B off zero so the adapters are live (a frozen zero is easy)
    trainable = classifier(train_lora=False, lora_b_init=0.1)
    lora, head = lora_tensors(trainable), trainable.state()
    cfg = ClientConfig(engine="forward", head_gradient="exact", dropout=dropout)

    # Execute: one local epoch of 3 steps with Spry's engine
    report = train_slice(
        trainable,
        list(trainable.names),
        lambda epoch: (batch(seed=i) for i in range(3)),
        loss=classification_loss,
        engine=make_client_engine(cfg),
        cfg=cfg,
        seed=0,
        server_round=1,
        partition_id=0,
    )

    # Assert
    assert report.steps == 3
    after = lora_tensors(trainable)
    assert all(torch.equal(lora[n], after[n]) for n in lora)
    assert any(abs(v - head[n]).max() > 1e-6 for n, v in trainable.state().items())
    assert not trainable.model.training  # evaluation runs without dropout


# -- dropout: one mask per step, every pass ----------------------------------------


def dropout_model():
    """A classifier in train mode whose every tensor has a gradient (B non-zero)."""
    trainable = classifier(lora_b_init=0.2)
    trainable.model.train()
    return trainable


def test_with_dropout_the_jvp_equals_backprop_under_the_same_mask_seed():
    trainable, data = dropout_model(), batch()
    params = own_params(trainable)
    gen = torch.Generator().manual_seed(3)
    tangent = {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
    loss = with_seeded_masks(classification_loss, seed=11)

    value, jvp, _ = directional_derivative(trainable.model, loss, data, params, tangent)
    exact = Backprop().estimate(trainable.model, loss, data, params, generator=gen)
    expected = dot(exact.grads, tangent)
    assert torch.equal(value, exact.loss)
    assert abs(float(jvp) - expected) <= 1e-4 * abs(expected)

    # The masks are really on: another seed, or eval mode, is another function
    other = directional_derivative(
        trainable.model,
        with_seeded_masks(classification_loss, seed=12),
        data,
        params,
        tangent,
    )
    trainable.model.eval()
    off = directional_derivative(
        trainable.model, classification_loss, data, params, tangent
    )
    for value_b, jvp_b, _ in (other, off):
        assert abs(float(jvp_b) - expected) > 1e-3 * abs(expected)
        assert not torch.isclose(value_b, value)


def test_with_dropout_vmapped_tangents_see_the_masks_of_separate_passes():
    # K tangents in one vmapped pass against K passes, and the exact head nested
    # inside the slice's jvp (Spry's default) against backprop
    trainable, data = dropout_model(), batch(seed=1)
    params = own_params(trainable)
    gen = torch.Generator().manual_seed(4)
    tangents = [
        {k: torch.randn(v.shape, generator=gen) for k, v in params.items()}
        for _ in range(3)
    ]
    loss = with_seeded_masks(classification_loss, seed=5)
    exact = Backprop().estimate(trainable.model, loss, data, params, generator=gen)

    _, batched, _ = directional_derivatives(
        trainable.model, loss, data, params, stack(tangents)
    )
    one_by_one = [
        directional_derivative(trainable.model, loss, data, params, t)[1]
        for t in tangents
    ]
    for k, tangent in enumerate(tangents):
        expected = dot(exact.grads, tangent)
        assert abs(float(batched[k]) - expected) <= 1e-4 * abs(expected)
        assert abs(float(one_by_one[k]) - expected) <= 1e-4 * abs(expected)

    lora = {k: v for k, v in params.items() if not is_head(k)}
    head = {k: v for k, v in params.items() if is_head(k)}
    for chunk in (1, 0):  # one pass per tangent, then all vmapped
        _, derivatives, head_grad, _ = derivatives_with_exact(
            trainable.model,
            loss,
            data,
            lora,
            [{k: t[k] for k in lora} for t in tangents],
            head,
            chunk=chunk,
        )
        want = torch.cat([exact.grads[k].reshape(-1) for k in head])
        assert torch.allclose(head_grad, want, rtol=1e-4, atol=1e-6)
        for k, tangent in enumerate(tangents):
            expected = dot(exact.grads, {n: tangent[n] for n in lora})
            assert abs(float(derivatives[k]) - expected) <= 1e-4 * abs(expected)


def test_with_dropout_the_zero_order_probes_and_checkpointing_share_the_masks():
    trainable, data = dropout_model(), batch(seed=2)
    params = own_params(trainable)
    loss = with_seeded_masks(classification_loss, seed=9)
    exact = Backprop().estimate(
        trainable.model, loss, data, params, generator=torch.Generator()
    )

    # MeZO's +eps / -eps probes see one mask: their difference is the derivative
    gen = torch.Generator().manual_seed(6)
    mezo = make_engine("mezo").estimate(
        trainable.model, loss, data, params, generator=gen
    )
    gen = torch.Generator().manual_seed(6)  # the same direction, as a tangent
    jvp = ForwardGradient().estimate(trainable.model, loss, data, params, generator=gen)
    (fd,), (exact_scalar,) = mezo.projected, jvp.projected
    assert abs(fd - exact_scalar) <= 1e-2 * abs(exact_scalar)

    # A recomputed layer redraws the forward pass's masks
    ckpt = Backprop(checkpointing=True).estimate(
        trainable.model, loss, data, params, generator=torch.Generator()
    )
    for name, grad in exact.grads.items():
        assert torch.allclose(ckpt.grads[name], grad, rtol=1e-5, atol=1e-7)


def test_a_dropout_round_is_seeded_and_batched_tangents_change_nothing():
    def round_with(**client):
        trainable = classifier(lora_b_init=0.2)
        cfg = ClientConfig(engine="forward", num_tangents=3, **client)
        train_slice(
            trainable,
            list(trainable.names),
            lambda epoch: (batch(seed=i) for i in range(2)),
            loss=classification_loss,
            engine=make_client_engine(cfg),
            cfg=cfg,
            seed=0,
            server_round=2,
            partition_id=1,
        )
        return trainable.state()

    one, again = round_with(dropout=True), round_with(dropout=True)
    vmapped = round_with(dropout=True, tangent_batch=0)
    off = round_with(dropout=False)
    for name, value in one.items():
        assert (value == again[name]).all()
        assert abs(value - vmapped[name]).max() <= 1e-5
    assert any(abs(v - off[n]).max() > 1e-6 for n, v in one.items())


def test_a_one_batch_estimate_with_a_mask_seed_is_backprops_under_that_seed():
    # FedSGD-style clients (spry-iter, baffle, fwdllm): one estimate, one mask
    trainable, data = classifier(lora_b_init=0.2), batch(seed=3)
    names = list(trainable.names)

    def estimate(engine, masks):
        return estimate_one_batch(
            trainable,
            names,
            data,
            loss=classification_loss,
            engine=engine,
            generator=torch.Generator().manual_seed(8),
            masks=masks,
        )

    grads, _ = estimate(Backprop(), masks=21)
    assert not trainable.model.training
    _, jvp = estimate(ForwardGradient(), masks=21)
    gen = torch.Generator().manual_seed(8)  # the engine's tangent: tensor by tensor
    tangent = {
        n: torch.randn(p.shape, generator=gen) for n, p in own_params(trainable).items()
    }
    stable = {trainable.own_name(n): n for n in names}
    expected = dot(grads, {stable[k]: v for k, v in tangent.items()})
    assert abs(jvp.projected[0] - expected) <= 1e-4 * abs(expected)
    _, off = estimate(ForwardGradient(), masks=None)
    assert abs(off.projected[0] - expected) > 1e-3 * abs(expected)


# -- LoRA dropout, LoRA-FA, B's init, in both builders ------------------------------


def build(kind: str, **options):
    if kind == "classifier":
        return build_classifier(
            ModelConfig(**options), num_labels=3, seed=0, random_weights=bert()
        )
    return build_causal_lm(random_weights=llama(), seed=0, **options)


@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
def test_lora_dropout_reaches_every_adapter(kind):
    trainable = build(kind, lora_dropout=0.1)
    drops = [
        m.lora_dropout["default"]
        for m in trainable.model.modules()
        if hasattr(m, "lora_dropout")
    ]
    assert drops and all(isinstance(d, torch.nn.Dropout) and d.p == 0.1 for d in drops)


@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
def test_lora_fa_trains_b_alone_and_a_keeps_its_init(kind):
    default, fa = build(kind), build(kind, lora_fa=True)
    lora = [n for n in fa.names if not is_head(n)]
    assert lora and all(".lora_B." in n for n in lora)
    assert [n for n in default.names if "lora_A" not in n] == list(fa.names)
    a_default, a_fa = lora_tensors(default), lora_tensors(fa)
    assert all(torch.equal(a_default[n], a_fa[n]) for n in a_default)


@pytest.mark.parametrize("kind", ["classifier", "causal-lm"])
def test_b_init_draws_one_non_zero_b_for_every_party(kind):
    default = build(kind)
    first, second = build(kind, lora_b_init=0.05), build(kind, lora_b_init=0.05)
    b = {n: v for n, v in lora_tensors(first).items() if "lora_B" in n}
    assert b and all(v.abs().min() > 0 for v in b.values())
    assert all(torch.equal(v, lora_tensors(second)[n]) for n, v in b.items())
    std = torch.cat([v.reshape(-1) for v in b.values()]).std()
    assert 0.03 < float(std) < 0.07
    # Defaults unchanged: the same names, B zero, A as with B drawn
    assert list(default.names) == list(first.names)
    base = lora_tensors(default)
    assert all(not base[n].any() for n in b)
    assert all(torch.equal(base[n], v) for n, v in lora_tensors(first).items()
               if "lora_A" in n)  # fmt: skip


def test_a_frozen_a_stays_float32_beside_bfloat16_weights():
    # LoRA-FA freezes A after the frozen weights are cast: A keeps its input's dtype
    trainable = build("classifier", lora_fa=True, frozen_dtype="bfloat16")
    a = [p for n, p in trainable.model.named_parameters() if "lora_A" in n]
    assert a and all(p.dtype == torch.float32 for p in a)
    estimate = ForwardGradient().estimate(
        trainable.model,
        classification_loss,
        batch(),
        own_params(trainable),
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(estimate.loss)


def test_the_sgd_client_step_is_the_gradient_times_the_learning_rate():
    """`client-optimizer=sgd`: w <- w - lr g, exactly, with the engine's gradient."""
    from spry.config import ConfigError
    from spry.training import make_optimizer

    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    params = {"w": weight}
    optimizer = make_optimizer(params, ClientConfig(client_optimizer="sgd", lr=0.5))
    weight.grad = torch.tensor([0.2, 0.4, -1.0])
    optimizer.step()

    assert isinstance(optimizer, torch.optim.SGD)
    assert torch.equal(weight.detach(), torch.tensor([0.9, -2.2, 3.5]))
    assert isinstance(make_optimizer(params, ClientConfig()), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="client-optimizer"):
        ClientConfig(client_optimizer="lion")


def test_estimated_tensors_take_their_own_step_and_the_exact_head_keeps_adamw():
    """`estimated-optimizer=sgd`: w <- w - estimated_lr g for every tensor whose
    gradient is an estimate; the exactly differentiated head steps with AdamW at
    `lr`, as with one optimizer."""
    from spry.config import ConfigError
    from spry.training import make_optimizer

    head = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    lora = torch.nn.Parameter(torch.tensor([0.5, 0.0, -1.0]))
    twin = torch.nn.Parameter(head.detach().clone())
    cfg = ClientConfig(lr=1e-2, estimated_optimizer="sgd", estimated_lr=0.5)
    paired = make_optimizer(
        {"head.w": head, "lora.w": lora}, cfg, exact=lambda n: n.startswith("head")
    )
    alone = torch.optim.AdamW([twin], lr=1e-2, weight_decay=0.0)
    for g in ([0.3, -0.1], [1.0, 2.0]):
        head.grad, twin.grad = torch.tensor(g), torch.tensor(g)
        lora.grad = torch.tensor([0.2, 0.4, -1.0])
        paired.step()
        alone.step()
        paired.zero_grad()
        alone.zero_grad()

    assert torch.equal(head.detach(), twin.detach())
    assert torch.allclose(lora.detach(), torch.tensor([0.3, -0.4, 0.0]))
    # every tensor estimated (a forward engine without an exact head): one SGD
    only = make_optimizer({"lora.w": lora}, cfg)
    assert isinstance(only, torch.optim.SGD)
    assert only.param_groups[0]["lr"] == 0.5
    with pytest.raises(ConfigError, match="estimated-optimizer"):
        ClientConfig(estimated_optimizer="lion")


def test_the_engines_say_which_gradients_are_exact():
    from spry.engines import make_engine
    from spry.models import is_head

    assert make_engine("backprop").is_exact("lora.w")
    assert not make_engine("mezo").is_exact("classifier.weight")
    forward = make_engine("forward", exact=is_head)
    assert not forward.is_exact("encoder.layer.0.attention.self.query.lora_B.w")
    assert forward.is_exact("classifier.weight")
