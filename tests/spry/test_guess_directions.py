"""Tangents tilted toward a guess (`tangent-guess`): the bias they bring, stated.

With v_k = sqrt(1-b) z_k + sqrt(b d) s_k u the forward gradient's mean is
(1-b) g + b d <g, u> u, not the gradient g: the Monte-Carlo mean of many tangents
on a fixed quadratic must match that formula and miss g. b = 0 (the default) and a
zero guess (round 1) must give today's estimates bit for bit, and each guessed
tangent's scalar is still the exact directional derivative (jvp == backprop . v).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spry.config import ClientConfig, ConfigError, RunConfig
from spry.engines import Backprop, ForwardGradient
from spry.engines.directions import (
    direction_specs,
    guessed_directions,
    sample_directions,
)
from spry.training import make_client_engine
from tests.helpers import TinyMLP, mlp_loss


class Quadratic(nn.Module):
    """f(w) = 1/2 w^T A w - c^T w over two tensors (d = 10): grad = A w - c."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.a = nn.Parameter(torch.randn(2, 3, generator=gen, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64))
        m = torch.randn(10, 10, generator=gen, dtype=torch.float64)
        self.register_buffer("A", m @ m.T / 10 + torch.eye(10, dtype=torch.float64))
        self.register_buffer("c", torch.randn(10, generator=gen, dtype=torch.float64))

    def flat(self) -> torch.Tensor:
        return torch.cat([self.a.reshape(-1), self.b])

    def forward(self) -> torch.Tensor:
        w = self.flat()
        return 0.5 * w @ self.A @ w - self.c @ w

    def gradient(self) -> torch.Tensor:
        return (self.A @ self.flat() - self.c).detach()


def quadratic_loss(model, batch):
    del batch
    value = model()
    return value, value.detach()  # the side output must be a tensor


def _flat(tensors):
    return torch.cat([tensors["a"].reshape(-1), tensors["b"].reshape(-1)])


def _tiny():
    model = TinyMLP()
    batch = {"x": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    return model, batch, dict(model.named_parameters())


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_the_mean_estimate_is_the_stated_biased_one_not_the_gradient(distribution):
    # Prepare: a fixed quadratic, a guess at 60 degrees-ish to the gradient
    model = Quadratic()
    params = dict(model.named_parameters())
    grad = model.gradient()  # (10,)
    guess_flat = torch.randn(10, generator=torch.Generator().manual_seed(2)).double()
    guess = {"a": guess_flat[:6].reshape(2, 3), "b": guess_flat[6:]}
    b, d, count = 0.5, 10, 20_000
    u = guess_flat / guess_flat.norm()

    # Execute: one estimate over `count` tangents is their Monte-Carlo mean
    engine = ForwardGradient(
        num_tangents=count,
        distribution=distribution,
        tangent_batch=0,
        guess=guess,
        guess_weight=b,
    )
    estimate = engine.estimate(
        model, quadratic_loss, {}, params, generator=torch.Generator().manual_seed(3)
    )

    # Assert: the formula within 5 standard errors of the per-tangent samples
    gen = torch.Generator().manual_seed(3)
    plain = sample_directions(direction_specs(params), gen, count, distribution)
    tangents = torch.stack(
        [_flat(v) for v in guessed_directions(plain, guess, b, gen)]
    )  # (count, d)
    samples = (tangents @ grad)[:, None] * tangents  # (count, d): <g, v> v
    mean = _flat(estimate.grads)
    torch.testing.assert_close(mean, samples.mean(0), rtol=1e-9, atol=1e-9)
    error = samples.std(0) / count**0.5
    stated = (1 - b) * grad + b * d * (grad @ u) * u
    assert torch.all((mean - stated).abs() < 5 * error), (mean, stated, error)
    # ... and not the gradient: along u it is (1 - b + b d) times the gradient's
    along, along_error = mean @ u, float((samples @ u).std()) / count**0.5
    assert abs(float(along - (1 - b + b * d) * (grad @ u))) < 5 * along_error
    assert abs(float(along - grad @ u)) > 20 * along_error


def test_without_a_guess_the_engine_and_the_client_engine_are_todays_bit_for_bit():
    model, batch, params = _tiny()
    guess = {n: torch.randn(p.shape) for n, p in params.items()}
    zero = {n: torch.zeros(p.shape) for n, p in params.items()}

    def run(engine):
        return engine.estimate(
            model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(5)
        )

    def forward(**kwargs):  # one vmapped pass, as the client's default
        return ForwardGradient(num_tangents=3, tangent_batch=0, **kwargs)

    today = run(forward())
    runs = [
        run(forward(guess=guess, guess_weight=0.0)),
        run(forward(guess=zero, guess_weight=0.5)),  # round 1: no update yet
        run(forward(guess=None, guess_weight=0.5)),
        run(
            make_client_engine(
                ClientConfig(num_tangents=3, head_gradient="shared"), guess
            )
        ),  # fmt: skip
    ]
    for other in runs:
        assert other.projected == today.projected
        for name in params:
            assert torch.equal(other.grads[name], today.grads[name])
    guessed = run(
        make_client_engine(
            ClientConfig(num_tangents=3, head_gradient="shared", tangent_guess=0.5),
            guess,
        )
    )
    assert guessed.projected != today.projected  # the key does reach the engine


def test_each_guessed_scalar_is_the_backprop_gradient_dotted_with_its_tangent():
    model, batch, params = _tiny()
    guess = {"l1.weight": torch.randn(3, 4), "l2.bias": torch.randn(2)}  # partial
    b = 0.7

    estimate = ForwardGradient(
        num_tangents=5, tangent_batch=0, guess=guess, guess_weight=b
    ).estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(6)
    )

    gen = torch.Generator().manual_seed(6)
    plain = sample_directions(direction_specs(params), gen, 5)
    tangents = guessed_directions(plain, guess, b, gen)
    exact = (
        Backprop()
        .estimate(model, mlp_loss, batch, params, generator=torch.Generator())
        .grads
    )
    for scalar, tangent, z in zip(estimate.projected, tangents, plain, strict=True):
        dot = sum(float((exact[n] * tangent[n]).sum()) for n in params)
        assert scalar == pytest.approx(dot, rel=1e-5, abs=1e-7)
        # tensors the guess lacks keep the plain direction, scaled by sqrt(1-b)
        torch.testing.assert_close(tangent["l1.bias"], (1 - b) ** 0.5 * z["l1.bias"])
    assert estimate.grads.keys() == params.keys()


def test_the_guess_has_the_stated_share_and_the_exact_head_is_untouched():
    model, batch, params = _tiny()
    guess = {n: torch.randn(p.shape) for n, p in params.items()}
    gen = torch.Generator().manual_seed(7)
    plain = sample_directions(direction_specs(params), gen, 4)
    tangents = guessed_directions(plain, guess, 0.25, gen)
    d = sum(p.numel() for p in params.values())
    u = torch.cat([guess[n].reshape(-1) for n in params])
    u = u / u.norm()
    for v, z in zip(tangents, plain, strict=True):
        flat_v = torch.cat([v[n].reshape(-1) for n in params])
        flat_z = torch.cat([z[n].reshape(-1) for n in params])
        rest = flat_v - 0.75**0.5 * flat_z  # the guess's part: +-sqrt(b d) u
        torch.testing.assert_close(rest.abs(), (0.25 * d) ** 0.5 * u.abs())

    # With the head exact, only the other tensors are tilted; the head's
    # gradient is the exact one whatever the guess
    head = lambda n: n.startswith("l2.")  # noqa: E731
    plain_head = ForwardGradient(num_tangents=2, exact=head).estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(8)
    )
    guessed_head = ForwardGradient(
        num_tangents=2, exact=head, guess=guess, guess_weight=0.5
    ).estimate(
        model, mlp_loss, batch, params, generator=torch.Generator().manual_seed(8)
    )
    for n in ("l2.weight", "l2.bias"):
        torch.testing.assert_close(guessed_head.grads[n], plain_head.grads[n])
    tilted = guessed_head.grads["l1.weight"]
    assert not torch.equal(tilted, plain_head.grads["l1.weight"])


def test_config_refuses_a_guess_it_cannot_honour():
    assert ClientConfig().tangent_guess == 0.0
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="tangent-guess"):
            ClientConfig(tangent_guess=bad)
    with pytest.raises(ConfigError, match="forward engine"):
        ClientConfig(engine="backprop", tangent_guess=0.5)
    with pytest.raises(ConfigError, match="upload-scalars"):
        RunConfig.from_run_config(
            {"upload-scalars": True, "head-gradient": "shared", "tangent-guess": 0.5}
        )
    cfg = RunConfig.from_run_config({"tangent-guess": 0.5})
    assert cfg.client.tangent_guess == 0.5
    assert RunConfig.from_run_config(cfg.to_mapping()) == cfg
    with pytest.raises(ValueError, match="guess_weight"):
        ForwardGradient(guess_weight=1.0)
