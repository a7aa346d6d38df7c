"""Zero-order engines (MeZO, BAFFLE, FwdLLM) on a quadratic and a tiny MLP."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spry.config import ConfigError, RunConfig
from spry.engines import (
    FiniteDifference,
    ForwardGradient,
    baffle,
    fwdllm,
    make_engine,
    mezo,
    rebuild_from_scalars,
    sample_direction,
)
from spry.engines.directions import direction_specs
from spry.resolve import resolve
from tests.helpers import TinyMLP, mlp_loss

D = 5


class Quadratic(nn.Module):
    """L(theta) = 0.5 theta^T A theta + b^T theta, with A SPD; grad = A theta + b."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        m = torch.randn(D, D, generator=gen, dtype=dtype)
        self.register_buffer("A", m @ m.T / D + torch.eye(D, dtype=dtype))
        self.register_buffer("b", torch.randn(D, generator=gen, dtype=dtype))
        self.theta = nn.Parameter(torch.randn(D, generator=gen, dtype=dtype))

    def forward(self) -> torch.Tensor:
        return 0.5 * self.theta @ self.A @ self.theta + self.b @ self.theta

    def true_grad(self) -> torch.Tensor:
        return (self.A @ self.theta + self.b).detach()


def _quadratic_loss(model, batch):
    del batch
    value = model()
    return value, value  # jvp's has_aux wants a tensor


def _mlp_setup():
    model = TinyMLP().eval()
    gen = torch.Generator().manual_seed(1)
    batch = {
        "x": torch.randn(8, 4, generator=gen),
        "labels": torch.randint(0, 2, (8,), generator=gen),
    }
    return model, batch, dict(model.named_parameters())


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


CENTER = {
    "mezo": lambda k=1: mezo(num_tangents=k),
    "fwdllm": lambda k=1: fwdllm(num_tangents=k),
    "baffle-center": lambda k=1: baffle(num_tangents=k, fd_format="center"),
}
ALL_ZO = {**CENTER, "baffle": lambda k=1: baffle(num_tangents=k)}


def test_presets_carry_the_published_steps_and_formats():
    assert (mezo().eps, mezo().fd_format) == (1e-3, "center")
    assert (baffle().eps, baffle().fd_format) == (1e-4, "forward")
    assert (fwdllm().eps, fwdllm().fd_format) == (1e-2, "center")
    engine = make_engine("baffle", num_tangents=3, eps=0.1, fd_format="center")
    assert isinstance(engine, FiniteDifference)
    assert (engine.num_tangents, engine.eps, engine.fd_format) == (3, 0.1, "center")


@pytest.mark.parametrize("name", sorted(CENTER))
def test_center_difference_is_exact_per_direction_on_a_quadratic(name):
    # Prepare: float64, so rounding stays far below the check
    model = Quadratic()
    params = dict(model.named_parameters())
    v = sample_direction(direction_specs(params), _seeded(5))["theta"]

    # Execute
    est = CENTER[name]().estimate(
        model, _quadratic_loss, {}, params, generator=_seeded(5)
    )

    # Assert: (L(t + eps v) - L(t - eps v)) / (2 eps) == grad . v, any eps
    expected = float(model.true_grad() @ v)
    assert est.projected[0] == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(est.grads["theta"], expected * v)


@pytest.mark.parametrize("sigma", [1e-4, 0.1])
def test_baffle_forward_format_has_the_curvature_bias(sigma):
    # Prepare
    model = Quadratic()
    params = dict(model.named_parameters())
    v = sample_direction(direction_specs(params), _seeded(2))["theta"]

    # Execute
    est = baffle(eps=sigma).estimate(
        model, _quadratic_loss, {}, params, generator=_seeded(2)
    )

    # Assert: s = grad . v + (sigma / 2) v^T A v exactly on a quadratic
    unbiased = float(model.true_grad() @ v)
    bias = sigma / 2 * float(v @ model.A @ v)
    assert est.projected[0] == pytest.approx(unbiased + bias, rel=1e-6, abs=1e-9)
    assert abs(est.projected[0] - unbiased) == pytest.approx(abs(bias), rel=1e-3)


def test_baffle_forward_bias_is_odd_in_v_so_the_mean_still_converges():
    # Prepare: a large sigma makes the (sigma/2) v^T A v term big in every scalar
    model = Quadratic()
    params = dict(model.named_parameters())
    engine = baffle(num_tangents=3000, eps=0.5)

    # Execute
    est = engine.estimate(model, _quadratic_loss, {}, params, generator=_seeded(0))

    # Assert: E[(v^T A v) v] = 0, so g still approaches the gradient, while the
    # scalars' mean is shifted by (sigma/2) tr(A)
    truth = model.true_grad()
    rel = float((est.grads["theta"] - truth).norm() / truth.norm())
    shift = sum(est.projected) / len(est.projected)
    assert rel < 0.15
    assert shift == pytest.approx(0.25 * float(model.A.trace()), rel=0.2)


@pytest.mark.parametrize("name", sorted(CENTER))
def test_center_estimators_are_unbiased_in_fp32(name):
    # Prepare: fp32 as in training; one estimate's relative error is ~sqrt(D + 1),
    # the mean of K = 3000 about sqrt(6 / 3000) ~ 0.045
    model = Quadratic(dtype=torch.float32)
    params = dict(model.named_parameters())

    # Execute
    est = CENTER[name](3000).estimate(
        model, _quadratic_loss, {}, params, generator=_seeded(0)
    )

    # Assert
    truth = model.true_grad()
    rel = float((est.grads["theta"] - truth).norm() / truth.norm())
    assert rel < 0.15
    assert len(est.projected) == 3000


@pytest.mark.parametrize("name", sorted(ALL_ZO))
def test_params_and_model_are_unchanged_bit_for_bit(name):
    # Prepare
    model, batch, params = _mlp_setup()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    identities = {k: id(v) for k, v in params.items()}

    # Execute
    ALL_ZO[name](4).estimate(model, mlp_loss, batch, params, generator=_seeded())

    # Assert
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {k: id(v) for k, v in model.named_parameters()} == identities


@pytest.mark.parametrize("name", sorted(ALL_ZO))
def test_directions_follow_the_params_order_and_match_the_jvp_engine(name):
    # Same seed, same (non-alphabetical) order: the finite-difference engine and the
    # jvp engine draw the same directions, so their scalars estimate the same
    # directional derivatives and the server can rebuild either from the seed.
    model, batch, params = _mlp_setup()
    reordered = dict(reversed(list(params.items())))
    zo = ALL_ZO[name](2).estimate(
        model, mlp_loss, batch, reordered, generator=_seeded(7)
    )
    jvp = ForwardGradient(num_tangents=2).estimate(
        model, mlp_loss, batch, reordered, generator=_seeded(7)
    )
    rebuilt = rebuild_from_scalars(reordered, zo.projected, _seeded(7))
    assert zo.projected == pytest.approx(jvp.projected, rel=0.05, abs=1e-3)
    for k in params:
        torch.testing.assert_close(rebuilt[k], zo.grads[k])


@pytest.mark.parametrize("name", sorted(ALL_ZO))
def test_k_direction_estimate_is_the_mean_of_k_single_estimates(name):
    # Prepare
    model, batch, params = _mlp_setup()
    gen = _seeded(3)

    # Execute
    k4 = ALL_ZO[name](4).estimate(model, mlp_loss, batch, params, generator=_seeded(3))
    singles = [
        ALL_ZO[name]().estimate(model, mlp_loss, batch, params, generator=gen)
        for _ in range(4)
    ]

    # Assert
    assert k4.projected == tuple(s.projected[0] for s in singles)
    for k in params:
        torch.testing.assert_close(k4.grads[k], sum(s.grads[k] for s in singles) / 4)


@pytest.mark.parametrize("name", sorted(ALL_ZO))
def test_server_rebuilds_the_estimate_from_the_scalars_and_the_seed(name):
    # Prepare
    model, batch, params = _mlp_setup()
    est = ALL_ZO[name](5).estimate(
        model, mlp_loss, batch, params, generator=_seeded(11)
    )
    shapes = {k: tuple(v.shape) for k, v in params.items()}

    # Execute: once from the tensors, once from shapes only (server side)
    from_params = rebuild_from_scalars(params, est.projected, _seeded(11))
    from_shapes = rebuild_from_scalars(shapes, list(est.projected), _seeded(11))

    # Assert
    for k in params:
        torch.testing.assert_close(from_params[k], est.grads[k])
        torch.testing.assert_close(from_shapes[k], est.grads[k])


def test_rebuild_needs_scalars():
    with pytest.raises(ValueError, match="empty"):
        rebuild_from_scalars({"w": (2,)}, [], _seeded())


def test_finite_differences_and_jvp_see_the_same_directions():
    # Prepare: one seed, float64 quadratic (center difference is exact there)
    model = Quadratic()
    params = dict(model.named_parameters())

    # Execute
    fd = mezo(num_tangents=3).estimate(
        model, _quadratic_loss, {}, params, generator=_seeded(4)
    )
    jvp = ForwardGradient(num_tangents=3).estimate(
        model, _quadratic_loss, {}, params, generator=_seeded(4)
    )

    # Assert
    assert fd.projected == pytest.approx(jvp.projected, rel=1e-6)
    torch.testing.assert_close(fd.grads["theta"], jvp.grads["theta"])


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("mezo", {}, 6),
        ("fwdllm", {}, 6),
        ("baffle", {}, 4),  # K probes + 1 shared clean pass
        ("baffle", {"fd_format": "center"}, 6),  # no clean pass
        ("forward", {}, 3),  # one jvp pass per tangent
        ("backprop", {}, 1),
    ],
)
def test_forward_passes_are_counted_as_run(name, options, expected):
    # Prepare: count the calls into the task loss
    model, batch, params = _mlp_setup()
    calls = []

    def counting_loss(m, b):
        calls.append(1)
        return mlp_loss(m, b)

    # Execute
    est = make_engine(name, num_tangents=3, **options).estimate(
        model, counting_loss, batch, params, generator=_seeded()
    )

    # Assert
    assert est.forward_passes == len(calls) == expected


def test_reported_loss_is_the_clean_loss_or_within_eps_squared_of_it():
    model, batch, params = _mlp_setup()
    with torch.no_grad():
        clean, logits = mlp_loss(model, batch)
    fwd = baffle(num_tangents=2).estimate(
        model, mlp_loss, batch, params, generator=_seeded()
    )
    center = mezo(num_tangents=2).estimate(
        model, mlp_loss, batch, params, generator=_seeded()
    )
    assert torch.equal(fwd.loss, clean) and torch.equal(fwd.aux, logits)
    assert float(center.loss) == pytest.approx(float(clean), abs=1e-4)
    assert center.loss.grad_fn is None and center.aux.shape == logits.shape


def test_bad_settings_are_clear_errors():
    model, batch, params = _mlp_setup()
    half = {k: v.detach().to(torch.bfloat16) for k, v in params.items()}
    with pytest.raises(ValueError, match="fp32 or wider"):
        mezo().estimate(model.bfloat16(), mlp_loss, batch, half, generator=_seeded())
    with pytest.raises(ValueError, match="`eps` should be a positive"):
        FiniteDifference(eps=0.0)
    with pytest.raises(ValueError, match="applies to baffle only"):
        make_engine("mezo", fd_format="forward")
    with pytest.raises(ValueError, match="`fd_format` should be one of"):
        make_engine("baffle", fd_format="backward")
    with pytest.raises(KeyError, match="not a parameter"):
        mezo().estimate(
            model, mlp_loss, batch, {"nope": torch.zeros(1)}, generator=_seeded()
        )


def test_unknown_engine_lists_every_engine():
    with pytest.raises(ValueError, match="unknown engine 'nope'") as error:
        make_engine("nope")
    for name in ("backprop", "baffle", "forward", "fwdllm", "mezo"):
        assert name in str(error.value)


def test_config_passes_zo_options_to_the_engine():
    # Prepare
    defaults = RunConfig.from_run_config({"engine": "baffle"}).client
    tuned = RunConfig.from_run_config(
        {"engine": "baffle", "zo-eps": "0.01", "zo-format": "center"}
    ).client

    # Execute
    default_engine = make_engine("baffle", **defaults.engine_options())
    tuned_engine = make_engine(tuned.engine, **tuned.engine_options())

    # Assert
    assert (default_engine.eps, default_engine.fd_format) == (1e-4, "forward")
    assert (tuned_engine.eps, tuned_engine.fd_format) == (0.01, "center")
    with pytest.raises(ConfigError, match="`zo-format` 'forward' applies to baffle"):
        RunConfig.from_run_config({"engine": "mezo", "zo-format": "forward"})
    with pytest.raises(ConfigError, match="`zo-eps` should be >= 0"):
        RunConfig.from_run_config({"zo-eps": -1})


def test_baffle_plus_is_one_direction_scaled_by_2_over_k_as_in_spry():
    # Spry's BAFFLE+ precedence bug: weights 2/K for the first direction, then
    # sigma^2/K (negligible), so 2K passes buy one direction.
    model, batch, params = _mlp_setup()
    plus = make_engine("baffle-plus", num_tangents=10).estimate(
        model, mlp_loss, batch, params, generator=_seeded(4)
    )
    single = baffle(num_tangents=1, fd_format="center").estimate(
        model, mlp_loss, batch, params, generator=_seeded(4)
    )
    assert plus.forward_passes == 20
    assert plus.projected[0] == pytest.approx(single.projected[0])
    for k in params:
        torch.testing.assert_close(
            plus.grads[k], 0.2 * single.grads[k], rtol=1e-4, atol=1e-6
        )


def test_fwdllm_plus_reuses_one_direction_so_k_probes_give_a_k1_estimate():
    model, batch, params = _mlp_setup()
    engine = make_engine("fwdllm-plus", num_tangents=20)
    first = engine.estimate(model, mlp_loss, batch, params, generator=_seeded(5))
    single = fwdllm().estimate(model, mlp_loss, batch, params, generator=_seeded(5))
    assert first.forward_passes == 40
    assert len(set(first.projected)) == 1  # twenty identical scalars
    for k in params:
        torch.testing.assert_close(first.grads[k], single.grads[k])
    # A second estimate starts with a fresh direction
    second = engine.estimate(model, mlp_loss, batch, params, generator=_seeded(6))
    assert second.projected[0] != first.projected[0]


def test_plus_engines_cannot_upload_scalars():
    with pytest.raises(ConfigError, match="upload-scalars"):
        resolve({"engine": "fwdllm-plus", "upload-scalars": True})
