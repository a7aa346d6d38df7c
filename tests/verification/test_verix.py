"""VeriX core: hand-solved networks, solver agreement, derivatives, masks.

Everything runs the real solvers (Marabou and z3) on networks small enough that
the whole file takes seconds. Expected explanations are derived by hand in the
comments; random networks are checked against each other and against sampling.
"""

from __future__ import annotations

import itertools

import matplotlib.image
import numpy as np
import pytest
import torch
from torch import nn

from spry.tasks.verix.explanation import Explanation, explain, verify
from spry.tasks.verix.masks import overlay, save_mask_grid, save_mask_png
from spry.tasks.verix.network import affine_layers, check_verifiable, forward
from spry.tasks.verix.sensitivity import (
    logit_derivatives,
    sensitivities,
    sensitivity_ranking,
)
from spry.tasks.verix.solvers import MarabouSolver, Z3Solver, input_box, make_solver
from tests.verification.pictures import cells, highlighted, panels

X_HALF = torch.tensor([0.5, 0.5])


@pytest.fixture(scope="module")
def marabou() -> MarabouSolver:
    return MarabouSolver()


@pytest.fixture(scope="module")
def z3_exact() -> Z3Solver:
    # presolve=False: every class goes to z3 itself, not to the interval bound.
    return Z3Solver(presolve=False)


@pytest.fixture(scope="module")
def solvers(marabou, z3_exact):
    return {"marabou": marabou, "z3": z3_exact, "z3+presolve": Z3Solver()}


def _linear(weight, bias) -> nn.Linear:
    layer = nn.Linear(len(weight[0]), len(weight))
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
        layer.bias.copy_(torch.tensor(bias))
    return layer


def _random_net(seed: int, sizes=(6, 8, 3), flatten: bool = False) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def _margin(layers, point: np.ndarray, label: int) -> float:
    """y_label - max_{j != label} y_j in float64: <= 0 means the label lost."""
    logits = forward(layers, point)
    return float(logits[label] - np.delete(logits, label).max())


# --------------------------------------------------------------------------- #
# Hand-solved networks
# --------------------------------------------------------------------------- #


def _linear_net() -> nn.Sequential:
    # y0 = 0.1 x0 + 2 x1,  y1 = 0.9, so the margin is
    #   m(x) = y0 - y1 = 0.1 x0 + 2 x1 - 0.9,   m(0.5, 0.5) = 0.15 > 0: label 0.
    return nn.Sequential(_linear([[0.1, 2.0], [0.0, 0.0]], [0.0, 0.9]))


@pytest.mark.parametrize("name", ["marabou", "z3", "z3+presolve"])
def test_linear_net_explanation_is_feature_1(solvers, name):
    # Prepare. eps = 0.1. Sensitivities 0.1 * |0.1| = 0.01 and 0.1 * |2| = 0.2:
    # x0 is tried first.
    #   free {0}:    m >= 0.15 - 0.1 * 0.1        = 0.14 > 0  -> invariant, freed
    #   free {0, 1}: m >= 0.15 - 0.01 - 2 * 0.1   = -0.06     -> breaks: x1 kept
    # (x1 alone already breaks: 0.15 - 0.2 = -0.05.) So the explanation is {1}.
    net, solver = _linear_net(), solvers[name]

    # Execute
    explanation = explain(net, X_HALF, 0, 0.1, solver)

    # Assert
    assert explanation.features == [1]
    assert explanation.freed == [0]
    assert explanation.verified
    assert explanation.solver_calls == 2
    assert not solver.is_invariant(net, X_HALF, 0, [1], 0.1)
    assert verify(net, X_HALF, explanation, solver, minimality=True)


@pytest.mark.parametrize("name", ["marabou", "z3", "z3+presolve"])
def test_linear_net_small_epsilon_needs_no_feature(solvers, name):
    # eps = 0.05: both free, m >= 0.15 - 0.1 * 0.05 - 2 * 0.05 = 0.045 > 0, so the
    # prediction survives with nothing fixed: the explanation is empty.
    explanation = explain(_linear_net(), X_HALF, 0, 0.05, solvers[name])

    assert explanation.features == []
    assert explanation.freed == [0, 1]
    assert explanation.verified


def _relu_net(hidden_bias: float) -> nn.Sequential:
    # z0 = 10 x0 + hidden_bias,  z1 = x1,  h = relu(z)
    # y0 = -h0 + 0.2 h1,  y1 = 0.05,  so  m = y0 - y1 = -h0 + 0.2 h1 - 0.05.
    # At x = (0.5, 0.5): z0 = 5 + hidden_bias < 0 in both cases below, so h0 = 0,
    # m = 0.1 - 0.05 = 0.05 > 0 (label 0), and d m / d x0 = 0 at x.
    return nn.Sequential(
        _linear([[10.0, 0.0], [0.0, 1.0]], [hidden_bias, 0.0]),
        nn.ReLU(),
        _linear([[-1.0, 0.2], [0.0, 0.0]], [0.0, 0.05]),
    )


@pytest.mark.parametrize("name", ["marabou", "z3", "z3+presolve"])
def test_relu_dead_on_the_box_makes_its_input_irrelevant(solvers, name):
    # hidden_bias = -8: on the box x0 in [0.4, 0.6], z0 in [-4, -2], so h0 = 0
    # everywhere and x0 cannot move m. Read without the ReLU, m would contain
    # -z0 = -10 x0 + 8, and freeing x0 would move it by 10 * 0.1 = 1 >> 0.05.
    # With x0 free, x1 free too: m = 0.2 x1 - 0.05 in [0.03, 0.07] > 0.
    # Explanation: empty.
    net = _relu_net(-8.0)

    explanation = explain(net, X_HALF, 0, 0.1, solvers[name])

    assert explanation.features == []
    assert explanation.verified


@pytest.mark.parametrize("name", ["marabou", "z3", "z3+presolve"])
def test_relu_inactive_at_x_but_not_on_the_box_is_necessary(solvers, name):
    # hidden_bias = -5.5: at x, z0 = -0.5 (inactive, so the gradient says x0 does
    # not matter: sensitivity 0, tried first), but on the box x0 in [0.4, 0.6],
    # z0 in [-1.5, 0.5]: h0 reaches 0.5 and m reaches 0.05 - 0.5 = -0.45 < 0.
    #   free {0}: breaks -> x0 in the explanation (the linearisation at x is wrong)
    #   free {1}: m = 0.2 x1 - 0.05 in [0.03, 0.07] > 0 -> freed
    # Explanation: {0}.
    net, solver = _relu_net(-5.5), solvers[name]

    explanation = explain(net, X_HALF, 0, 0.1, solver)

    assert list(sensitivity_ranking(net, X_HALF, 0, 0.1)) == [0, 1]
    assert explanation.features == [0]
    assert explanation.freed == [1]
    assert explanation.verified
    verdict = solver.check(net, X_HALF, 0, [0], 0.1)
    assert verdict.status == "sat" and verdict.rival == 1
    assert _margin(affine_layers(net), verdict.counterexample, 0) <= 1e-9


# --------------------------------------------------------------------------- #
# Solvers agree with each other and with sampling
# --------------------------------------------------------------------------- #


def test_solvers_agree_on_random_nets_and_never_miss_a_sampled_flip(solvers):
    # Prepare
    rng = np.random.default_rng(0)
    answers: list[bool] = []
    for seed in range(4):
        net = _random_net(seed)
        layers = affine_layers(net)
        x = rng.uniform(0.1, 0.9, size=6).astype(np.float32)
        label = int(np.argmax(forward(layers, x)))
        for epsilon, size in itertools.product((0.1, 0.3), (1, 3, 4, 6)):
            free = sorted(rng.choice(6, size=size, replace=False).tolist())
            lo, hi = input_box(x.astype(np.float64), free, epsilon)

            # Execute
            verdicts = {
                name: s.check(net, x, label, free, epsilon)
                for name, s in solvers.items()
            }

            # Assert: one answer...
            invariant = {v.invariant for v in verdicts.values()}
            assert len(invariant) == 1, (seed, epsilon, free, verdicts)
            answers.append(invariant.pop())
            # ...that no sampled point (corners included) contradicts: corners do
            # not suffice for a ReLU net, but any flip found proves "not invariant".
            corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
            samples = rng.uniform(lo, hi, size=(3000, 6))
            flipped = any(
                _margin(layers, p, label) <= 0 for p in np.vstack([corners, samples])
            )
            if flipped:
                assert not answers[-1]
            # Every counterexample lies in the box and does flip the label.
            for name, verdict in verdicts.items():
                if verdict.status == "sat":
                    point = verdict.counterexample
                    assert np.all(point >= lo - 1e-6) and np.all(point <= hi + 1e-6)
                    assert _margin(layers, point, label) <= 1e-6, name
    # Both kinds of answer occurred, so the comparison was not vacuous.
    assert any(answers) and not all(answers)


def test_marabou_is_silent(capfd):
    # A fresh solver and network: the ONNX export, the parse and a query.
    solver = MarabouSolver()
    solver.is_invariant(_random_net(7), np.full(6, 0.5), 0, [0, 1], 0.1)

    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""


def test_make_solver_names():
    assert make_solver("marabou").name == "marabou"
    assert make_solver("z3").name == "z3"
    assert make_solver("auto").name == "marabou"  # maraboupy is installed here
    with pytest.raises(ValueError, match="unknown solver 'cvc5'"):
        make_solver("cvc5")


# --------------------------------------------------------------------------- #
# Networks and sensitivity
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("net", "match"),
    [
        (nn.Sequential(nn.Conv2d(1, 1, 3)), "layer 0 \\(Conv2d\\)"),
        (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()), "layer 1 \\(Sigmoid\\)"),
        (nn.Sequential(nn.Flatten(0), nn.Linear(4, 2)), "Flatten"),
        (nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), "before any Linear"),
        (nn.Linear(4, 2), "nn.Sequential"),
    ],
)
def test_unverifiable_networks_are_refused_by_name(net, match):
    with pytest.raises(ValueError, match=match):
        check_verifiable(net)


def test_forward_mode_derivatives_equal_backprop():
    # Prepare: an image-shaped input through Flatten, two ReLU layers.
    net = _random_net(3, sizes=(16, 12, 8, 4), flatten=True)
    x = torch.rand(4, 4, generator=torch.Generator().manual_seed(0))
    label = 2

    # Execute
    derivatives = logit_derivatives(net, x, label)
    leaf = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(net(leaf.unsqueeze(0))[0, label], leaf)

    # Assert
    assert derivatives.shape == (16,)
    np.testing.assert_allclose(derivatives, gradient.reshape(-1).numpy(), atol=1e-5)


def test_ranking_is_ascending_in_sensitivity():
    net = _random_net(4, sizes=(16, 12, 4), flatten=True)
    x = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))

    ranking = sensitivity_ranking(net, x, 1, 0.05)
    scores = sensitivities(net, x, 1, 0.05)

    assert sorted(ranking.tolist()) == list(range(16))
    assert np.all(np.diff(scores[ranking]) >= 0)
    np.testing.assert_allclose(scores, 0.05 * np.abs(logit_derivatives(net, x, 1)))


# --------------------------------------------------------------------------- #
# explain on a random network
# --------------------------------------------------------------------------- #


def test_explain_random_net_is_sound_minimal_and_a_partition(marabou, z3_exact):
    # Prepare: 4x4 inputs, 16 features, hidden 12, 3 classes.
    # (Seed and epsilon picked so that the explanation is neither empty nor full.)
    net = _random_net(0, sizes=(16, 12, 3), flatten=True)
    x = torch.rand(4, 4, generator=torch.Generator().manual_seed(2))
    label = int(net(x.unsqueeze(0)).argmax())

    # Execute: Marabou explains, z3 (another implementation) re-checks.
    explanation = explain(net, x, label, 0.2, marabou, checker=z3_exact)
    same_order = explain(net, x, label, 0.2, z3_exact, ranking=explanation.traversal)

    # Assert
    assert 0 < explanation.size < 16  # neither trivial answer
    assert sorted(explanation.features + explanation.freed) == list(range(16))
    assert not set(explanation.features) & set(explanation.freed)
    assert explanation.verified
    assert explanation.solver_calls == 16
    assert verify(net, x, explanation, z3_exact, minimality=True)
    assert verify(net, x, explanation, marabou, minimality=True)
    assert same_order.features == explanation.features
    # Dropping an explanation feature is not sound any more.
    weaker = Explanation(
        label=label,
        epsilon=0.2,
        features=explanation.features[1:],
        freed=sorted(explanation.freed + explanation.features[:1]),
        seconds=0.0,
        solver_calls=0,
        verified=False,
    )
    assert not verify(net, x, weaker, marabou)


def test_explain_refuses_a_label_the_network_does_not_predict(marabou):
    with pytest.raises(ValueError, match="predicts 0"):
        explain(_linear_net(), X_HALF, 1, 0.1, marabou)


def test_explain_refuses_a_ranking_that_is_not_a_permutation(marabou):
    with pytest.raises(ValueError, match="permutation"):
        explain(_linear_net(), X_HALF, 0, 0.1, marabou, ranking=[0, 0])


# --------------------------------------------------------------------------- #
# Masks
# --------------------------------------------------------------------------- #


def _explanation(n: int, seed: int) -> Explanation:
    rng = np.random.default_rng(seed)
    features = sorted(rng.choice(n, size=n // 5, replace=False).tolist())
    return Explanation(
        label=seed % 10,
        epsilon=0.05,
        features=features,
        freed=sorted(set(range(n)) - set(features)),
        seconds=0.0,
        solver_calls=n,
        verified=True,
    )


def _assert_png(path, height: int, width: int) -> np.ndarray:
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert pixels.shape[2] in (3, 4)
    return pixels[..., :3]


def _assert_shows(rgb, image, explanation) -> None:
    """Each drawn cell: red exactly at the explanation, else the image's grey."""
    side = image.shape
    drawn = cells(rgb, side)
    shown = np.flatnonzero(highlighted(drawn)).tolist()
    assert shown == explanation.features
    grey = ~highlighted(drawn)
    assert np.allclose(drawn[grey], image[grey][:, None], atol=0.01)
    red = highlighted(drawn)  # blended: the pixel's own grey stays visible
    assert np.allclose(drawn[red][:, 0], 0.35 * image[red] + 0.65, atol=0.01)
    assert np.allclose(drawn[red][:, 1:], 0.35 * image[red][:, None], atol=0.01)
    assert np.allclose(drawn, overlay(image, explanation), atol=0.01)


@pytest.mark.parametrize("side", [8, 28])
def test_mask_png_shows_the_image_with_the_explanation_in_red(tmp_path, side):
    image = np.random.default_rng(side).uniform(size=(side, side))
    explanation = _explanation(side * side, 1)

    path = save_mask_png(image, explanation, tmp_path / "m.png")

    rgb = _assert_png(path, 300, 300)  # figsize 3 in at 100 dpi
    _assert_shows(rgb, image, explanation)


def test_mask_grid_shows_each_image_in_its_panel(tmp_path):
    images = [np.random.default_rng(i).uniform(size=(8, 8)) for i in range(7)]
    explanations = [_explanation(64, i) for i in range(7)]

    path = save_mask_grid(images, explanations, tmp_path / "sub" / "grid.png")

    rgb = _assert_png(path, 3 * 230, 3 * 220)  # 3 x 3 panels of 2.2 x 2.3 in
    grid = panels(rgb, 3, 3)
    for panel, image, explanation in zip(grid, images, explanations, strict=False):
        _assert_shows(panel, image, explanation)
    assert all((panel > 0.99).all() for panel in grid[7:])  # the two spare: blank


def test_mask_rejects_an_image_of_the_wrong_size(tmp_path):
    with pytest.raises(ValueError, match="64 pixels"):
        save_mask_png(np.zeros((8, 8)), _explanation(784, 0), tmp_path / "m.png")
