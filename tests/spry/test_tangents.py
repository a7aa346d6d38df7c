"""Batched tangents, tangent distributions and the head's own tangents.

The levers that make forward gradients cheap and accurate must not change what is
estimated: a vmapped pass gives the same directional derivatives as K separate jvp
calls, every distribution keeps E[v v^T] = I, orthogonal tangents with K = d give
the exact gradient, and a server redraws whichever distribution a client used.
"""

from __future__ import annotations

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
from spry.engines.directions import direction_specs, sample_directions
from spry.engines.forward import directional_derivatives, stack
from spry.models import is_head
from tests.helpers import TinyMLP, mlp_loss


def _flat(tensors, names):
    return torch.cat([tensors[n].reshape(-1) for n in names])


def _tiny():
    model = TinyMLP()
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    return model, batch, dict(model.named_parameters())


def test_vmapped_tangents_equal_k_separate_jvps_on_the_default_model(
    default_model, default_data
):
    # Prepare: a LoRA pair in layer 3 and the head, moved off LoRA B's zero init
    names = [n for n in default_model.names if ".layer.3." in n or is_head(n)]
    live = default_model.parameters()
    params = {default_model.own_name(n): live[n] for n in names}
    gen = torch.Generator().manual_seed(0)
    moved = {k: v.detach() + 0.05 * torch.randn(v.shape, generator=gen)
             for k, v in params.items()}  # fmt: skip
    rows = default_data.train.select(range(8))
    batch = next(
        iterate_batches(rows, default_model.tokenizer, batch_size=8, max_length=64)
    )
    tangents = sample_directions(direction_specs(moved), gen, 5)

    # Execute
    one_by_one = [
        directional_derivative(
            default_model.model, classification_loss, batch, moved, t
        )
        for t in tangents
    ]
    loss, batched, logits = directional_derivatives(
        default_model.model, classification_loss, batch, moved, stack(tangents)
    )
    _, chunked, _ = directional_derivatives(
        default_model.model, classification_loss, batch, moved, stack(tangents), chunk=2
    )

    # Assert
    separate = torch.stack([d for _, d, _ in one_by_one])
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(chunked, separate, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(loss, one_by_one[0][0])
    torch.testing.assert_close(logits, one_by_one[0][2])
    assert float(separate.abs().min()) > 0


def test_batched_and_one_per_pass_engines_give_the_same_estimate():
    model, batch, params = _tiny()
    results = [
        ForwardGradient(num_tangents=6, tangent_batch=b).estimate(
            model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(4)
        )
        for b in (1, 0, 4)
    ]
    for other in results[1:]:
        for name in params:
            torch.testing.assert_close(other.grads[name], results[0].grads[name])
    assert [r.forward_passes for r in results] == [6, 1, 2]


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher", "orthogonal"])
def test_every_distribution_has_identity_second_moment(distribution):
    # E[v v^T] = I is what keeps (1/K) sum <g, v> v unbiased.
    specs = direction_specs({"a": (3,), "b": (2, 2)})
    gen = torch.Generator().manual_seed(0)
    second = torch.zeros(7, 7)
    draws = 4000
    for _ in range(draws // 4):
        for v in sample_directions(specs, gen, 4, distribution):
            flat = _flat(v, ["a", "b"])
            second += torch.outer(flat, flat) / draws
    torch.testing.assert_close(second, torch.eye(7), atol=0.1, rtol=0)


def test_rademacher_and_orthogonal_directions_have_their_shape():
    specs = direction_specs({"a": (3,), "b": (2, 2)})
    signs = sample_directions(specs, torch.Generator().manual_seed(1), 3, "rademacher")
    assert all(
        set(v.unique().tolist()) <= {-1.0, 1.0} for d in signs for v in d.values()
    )
    block = sample_directions(specs, torch.Generator().manual_seed(1), 9, "orthogonal")
    flat = torch.stack([_flat(d, ["a", "b"]) for d in block])  # 9 > d = 7: two blocks
    torch.testing.assert_close(
        flat[:7] @ flat[:7].T, 7 * torch.eye(7), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        flat[7:] @ flat[7:].T, 7 * torch.eye(2), atol=1e-4, rtol=0
    )


def test_orthogonal_tangents_as_many_as_weights_give_the_exact_gradient():
    model, batch, params = _tiny()
    d = sum(p.numel() for p in params.values())
    exact = Backprop().estimate(model, mlp_loss, batch, params, generator=None)
    forward = ForwardGradient(num_tangents=d, distribution="orthogonal").estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(2)
    )
    for name in params:
        torch.testing.assert_close(
            forward.grads[name], exact.grads[name], atol=1e-5, rtol=1e-4
        )


@pytest.mark.parametrize("distribution", ["rademacher", "orthogonal"])
def test_server_redraws_any_distribution(distribution):
    model, batch, params = _tiny()
    estimate = ForwardGradient(num_tangents=5, distribution=distribution).estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(9)
    )
    shapes = {name: tuple(p.shape) for name, p in params.items()}
    rebuilt = rebuild_from_scalars(
        shapes, estimate.projected, torch.Generator().manual_seed(9),
        distribution=distribution,
    )  # fmt: skip
    for name in params:
        torch.testing.assert_close(rebuilt[name], estimate.grads[name])


def test_exact_block_is_the_head_gradient_and_the_body_keeps_its_own_estimate():
    # Prepare: the tiny model's last layer plays the head
    model, batch, params = _tiny()
    head = {n for n in params if n.startswith("l2.")}
    d_head = sum(params[n].numel() for n in head)
    exact = Backprop().estimate(model, mlp_loss, batch, params, generator=None)

    # Execute
    engine = ForwardGradient(
        num_tangents=3, tangent_batch=0, exact=lambda name: name in head
    )
    estimate = engine.estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(5)
    )
    body = {n: p for n, p in params.items() if n not in head}
    body_only = ForwardGradient(num_tangents=3).estimate(
        model, mlp_loss, batch, body, generator=torch.Generator().manual_seed(5)
    )

    # Assert: the head's gradient is exact, the body is its own 3-tangent estimate,
    # and the scalars are the body's 3 then the head's d_head gradient entries
    for name in head:
        torch.testing.assert_close(
            estimate.grads[name], exact.grads[name], atol=1e-6, rtol=1e-5
        )
    for name in body:
        torch.testing.assert_close(estimate.grads[name], body_only.grads[name])
    assert d_head == 8 and len(estimate.projected) == 3 + d_head
    assert estimate.forward_passes == 1  # 3 body tangents and the head, one pass


def test_exact_head_on_the_default_model_equals_backprop(default_model, default_data):
    names = [n for n in default_model.names if is_head(n)]
    live = default_model.parameters()
    params = {default_model.own_name(n): live[n] for n in names}
    rows = default_data.train.select(range(8))
    batch = next(
        iterate_batches(rows, default_model.tokenizer, batch_size=8, max_length=64)
    )
    exact = Backprop().estimate(
        default_model.model, classification_loss, batch, params, generator=None
    )
    forward = ForwardGradient(tangent_batch=0, exact=is_head).estimate(
        default_model.model, classification_loss, batch, params,
        generator=torch.Generator(),
    )  # fmt: skip
    for name in params:
        torch.testing.assert_close(
            forward.grads[name], exact.grads[name], atol=1e-6, rtol=1e-4
        )


def test_forward_options_are_refused_by_other_engines():
    with pytest.raises(ValueError, match="forward engine only"):
        make_engine("mezo", distribution="orthogonal")
    with pytest.raises(ValueError, match="distribution"):
        ForwardGradient(distribution="uniform")


@pytest.mark.parametrize("tangent_batch", [1, 0])
def test_body_tangents_and_exact_head_in_one_pass_match_backprop(
    default_model, default_data, tangent_batch
):
    # Prepare: layer 3's LoRA pair (moved off B = 0) and the head
    names = [n for n in default_model.names if ".layer.3." in n or is_head(n)]
    live = default_model.parameters()
    gen = torch.Generator().manual_seed(3)
    params = {
        default_model.own_name(n): live[n].detach()
        + (0.05 * torch.randn(live[n].shape, generator=gen) if "lora" in n else 0)
        for n in names
    }
    body = {n: v for n, v in params.items() if not is_head(n)}
    rows = default_data.train.select(range(8, 16))
    batch = next(
        iterate_batches(rows, default_model.tokenizer, batch_size=8, max_length=64)
    )
    exact = Backprop().estimate(
        default_model.model, classification_loss, batch, params, generator=None
    )

    # Execute
    engine = ForwardGradient(num_tangents=2, tangent_batch=tangent_batch, exact=is_head)
    estimate = engine.estimate(
        default_model.model, classification_loss, batch, params,
        generator=torch.Generator().manual_seed(4),
    )  # fmt: skip

    # Assert: the body's scalars are <grad, v_k> for the tangents the seed names,
    # the head's gradient is backprop's, and it all took one pass per tangent batch
    tangents = sample_directions(
        direction_specs(body), torch.Generator().manual_seed(4), 2
    )
    expected = [
        float(sum((exact.grads[n] * t[n]).sum() for n in body)) for t in tangents
    ]
    assert estimate.projected[:2] == pytest.approx(expected, rel=1e-3, abs=1e-7)
    for name in params:
        if is_head(name):
            torch.testing.assert_close(
                estimate.grads[name], exact.grads[name], atol=1e-6, rtol=1e-4
            )
    torch.testing.assert_close(estimate.loss, exact.loss)
    assert estimate.forward_passes == (2 if tangent_batch == 1 else 1)
