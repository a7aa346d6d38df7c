"""Forward-mode derivatives against backprop, on real weights and on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spry.classification import classification_loss, iterate_batches
from spry.engines import (
    Backprop,
    ForwardGradient,
    directional_derivative,
    make_engine,
    rebuild_from_scalars,
)
from tests.helpers import TinyMLP, mlp_loss


def _default_batch(model, data, size=8, max_length=64):
    return next(
        iterate_batches(
            data.train.select(range(size)),
            model.tokenizer,
            batch_size=size,
            max_length=max_length,
        )
    )


def _trainable_params(model):
    return {model.own_name(n): p for n, p in model.parameters().items()}


def test_jvp_equals_backprop_gradient_dot_tangent_on_default_model(
    default_model, default_data
):
    # Prepare: LoRA B starts at zero, so move every tensor off its init first;
    # otherwise gradients through A would be exactly zero and the test too easy.
    params = _trainable_params(default_model)
    gen = torch.Generator().manual_seed(1)
    moved = {
        k: (v.detach() + 0.05 * torch.randn(v.shape, generator=gen))
        for k, v in params.items()
    }
    batch = _default_batch(default_model, default_data)
    tangents = {k: torch.randn(v.shape, generator=gen) for k, v in moved.items()}

    # Execute
    loss_f, jvp, _ = directional_derivative(
        default_model.model, classification_loss, batch, moved, tangents
    )
    exact = Backprop().estimate(
        default_model.model, classification_loss, batch, moved, generator=gen
    )

    # Assert
    expected = sum((exact.grads[k] * tangents[k]).sum() for k in moved)
    assert torch.isclose(loss_f, exact.loss, rtol=1e-6)
    assert abs(float(jvp) - float(expected)) <= 1e-4 * abs(float(expected))
    assert all(
        float(exact.grads[k].abs().sum()) > 0 for k in moved
    )  # covers A, B, head


def test_forward_gradient_is_unbiased_on_small_model():
    # Prepare
    model = TinyMLP()
    batch = {"x": torch.randn(16, 4), "labels": torch.randint(0, 2, (16,))}
    params = dict(model.named_parameters())
    exact = Backprop().estimate(
        model, mlp_loss, batch, params, generator=torch.Generator()
    )
    engine = ForwardGradient(num_tangents=1)
    gen = torch.Generator().manual_seed(0)
    n = 6000

    # Execute: average n independent one-tangent estimates
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(n):
        est = engine.estimate(model, mlp_loss, batch, params, generator=gen)
        for k in total:
            total[k] += est.grads[k] / n

    # Assert: the mean approaches the true gradient (d = 23, so one estimate has
    # relative error ~sqrt(d); the mean of 6000 about sqrt(24 / 6000) ~ 0.06)
    flat_mean = torch.cat([total[k].flatten() for k in params])
    flat_true = torch.cat([exact.grads[k].flatten() for k in params])
    rel = float((flat_mean - flat_true).norm() / flat_true.norm())
    single = engine.estimate(model, mlp_loss, batch, params, generator=gen)
    flat_single = torch.cat([single.grads[k].flatten() for k in params])
    assert rel < 0.15
    assert float((flat_single - flat_true).norm() / flat_true.norm()) > rel


def test_forward_gradient_with_k_tangents_is_the_mean_of_k_single_estimates():
    model = TinyMLP()
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    params = dict(model.named_parameters())
    k4 = ForwardGradient(num_tangents=4).estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(3)
    )
    gen = torch.Generator().manual_seed(3)
    singles = [
        ForwardGradient().estimate(model, mlp_loss, batch, params, generator=gen)
        for _ in range(4)
    ]
    for name in params:
        mean = sum(s.grads[name] for s in singles) / 4
        torch.testing.assert_close(k4.grads[name], mean)


def test_server_redraws_the_tangents_from_the_seed_and_the_names_order():
    # Prepare: the client's tensors in a non-alphabetical order (the order is the
    # contract: the server sends the names and rebuilds in that order)
    model = TinyMLP()
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    params = dict(reversed(list(model.named_parameters())))
    # Act: the client's K = 3 estimate, then the server's rebuild from shapes alone
    estimate = ForwardGradient(num_tangents=3).estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(7)
    )
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    rebuilt = rebuild_from_scalars(
        shapes, estimate.projected, torch.Generator().manual_seed(7)
    )
    # Assert: the same gradient, to fp32 rounding
    for name in params:
        torch.testing.assert_close(rebuilt[name], estimate.grads[name])


def test_forward_engine_runs_sdpa_attention_models_through_the_math_kernel():
    # Prepare: a tiny BERT built with the default (fused) sdpa attention
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
        attn_implementation="sdpa",
    )
    model = BertForSequenceClassification(cfg).eval()
    batch = {
        "input_ids": torch.randint(0, 50, (2, 5)),
        "attention_mask": torch.ones(2, 5, dtype=torch.long),
        "labels": torch.tensor([0, 1]),
    }
    params = {"classifier.weight": model.classifier.weight}

    # Execute
    fwd = make_engine("forward").estimate(
        model,
        classification_loss,
        batch,
        params,
        generator=torch.Generator().manual_seed(0),
    )

    # Assert: finite and consistent with backprop's loss
    exact = Backprop().estimate(
        model, classification_loss, batch, params, generator=None
    )
    assert torch.isfinite(fwd.grads["classifier.weight"]).all()
    assert torch.isclose(fwd.loss, exact.loss)


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown engine 'nope'"):
        make_engine("nope")


def test_forward_pass_keeps_no_autograd_graph(default_model, default_data):
    params = _trainable_params(default_model)
    batch = _default_batch(default_model, default_data, size=2)
    est = ForwardGradient().estimate(
        default_model.model,
        classification_loss,
        batch,
        params,
        generator=torch.Generator().manual_seed(0),
    )
    assert est.loss.grad_fn is None
    assert all(g.grad_fn is None for g in est.grads.values())
    assert np.isfinite(float(est.loss))


def test_checkpointed_backprop_gives_backprops_gradient_with_dropout_off():
    # Prepare: a 2-layer BERT with dropout configured (it must stay off) and LoRA
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=2, hidden_dropout_prob=0.5,
        attn_implementation="eager",
    )  # fmt: skip
    model = get_peft_model(
        BertForSequenceClassification(cfg),
        LoraConfig(task_type="SEQ_CLS", r=1, target_modules=["query", "value"]),
    ).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # off the zero init, so every tensor gets a gradient
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    batch = {
        "input_ids": torch.randint(0, 50, (3, 6)),
        "attention_mask": torch.ones(3, 6, dtype=torch.long),
        "labels": torch.tensor([0, 1, 1]),
    }

    calls = []
    attention = next(
        m for n, m in model.named_modules() if n.endswith("layer.0.attention")
    )
    attention.register_forward_hook(lambda *_: calls.append(1))

    # Execute
    plain = make_engine("backprop").estimate(
        model, classification_loss, batch, params, generator=None
    )
    calls_plain = len(calls)
    ckpt = make_engine("backprop-checkpoint").estimate(
        model, classification_loss, batch, params, generator=None
    )

    # Assert: same loss and gradient; no module left in training mode
    torch.testing.assert_close(ckpt.loss, plain.loss)
    for name in params:
        torch.testing.assert_close(ckpt.grads[name], plain.grads[name])
    assert ckpt.forward_passes == 2 and plain.forward_passes == 1
    assert (calls_plain, len(calls) - calls_plain) == (1, 2)  # recomputed in backward
    assert not any(m.training for m in model.modules())
