"""Is the prediction invariant over a box? One question, two complete solvers.

VeriX (Wu, Wu & Barrett, NeurIPS 2023, arXiv 2212.01051) reduces an explanation
to queries of one kind. Given an example x, its label, a set of *free* features
and epsilon, every x' with

    x'_i in [max(lower, x_i - eps), min(upper, x_i + eps)]   for i in free,
    x'_i = x_i                                               otherwise,

must keep `label` the strict argmax: y_label - y_j > 0 for every j != label.
The solvers look for a counterexample, one class j at a time, with the query
y_label - y_j <= 0 (a tie counts as a counterexample); the prediction is invariant
iff every query is unsatisfiable.

Backends
--------
- `MarabouSolver`: Marabou (Wu et al., CAV 2024), the solver VeriX was built on.
  The network goes through ONNX once and is parsed once; each query swaps only
  the input bounds and the output inequality. Floating point, with Marabou's own
  tolerances.
- `Z3Solver`: z3 over exact rationals: every float64 weight and bound becomes
  the `Fraction` it equals, and ReLUs are `If` terms. Slower, but exact, and it
  needs nothing beyond a pip wheel.

A solver that gives up (timeout, unknown) is answered "not invariant": VeriX then
keeps the feature in the explanation, which stays sound, only less small.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from .network import (
    AffineLayer,
    affine_layers,
    fingerprint,
    flat_input,
    forward,
    interval_bounds,
    margin_lower_bounds,
)

Status = Literal["unsat", "sat", "unknown"]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Verdict:
    """A solver's answer to one invariance question.

    Parameters
    ----------
    invariant : bool
        True iff every counterexample query was unsatisfiable.
    status : str
        "unsat" (invariant), "sat" (a counterexample exists) or "unknown" (the
        solver gave up; `invariant` is then False, the safe answer for VeriX).
    counterexample : np.ndarray | None (default: None)
        With "sat": a flat input in the box where `label` is not the strict argmax.
    rival : int | None (default: None)
        With "sat": the class j that reached y_j >= y_label.
    queries : int (default: 0)
        Solver calls made (one per class tried; classes a cheap bound settles
        cost none).
    seconds : float (default: 0.0)
        Wall time of the whole check.
    """

    invariant: bool
    status: Status
    counterexample: np.ndarray | None = None
    rival: int | None = None
    queries: int = 0
    seconds: float = 0.0


class InvarianceSolver(Protocol):
    """Decides whether a network's prediction is invariant over a box of inputs."""

    name: str

    def check(
        self,
        net: nn.Module,
        x: Tensor | np.ndarray,
        label: int,
        free: Sequence[int],
        epsilon: float,
        lower: float = 0.0,
        upper: float = 1.0,
    ) -> Verdict:
        """The full answer, with a counterexample when there is one."""
        ...

    def is_invariant(
        self,
        net: nn.Module,
        x: Tensor | np.ndarray,
        label: int,
        free: Sequence[int],
        epsilon: float,
        lower: float = 0.0,
        upper: float = 1.0,
    ) -> bool:
        """True iff `label` stays the strict argmax over the whole box."""
        ...


def input_box(
    x: np.ndarray,
    free: Sequence[int],
    epsilon: float,
    lower: float = 0.0,
    upper: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 bounds of every flat feature: free ones within epsilon, clipped.

    Both backends take their bounds from here, so they decide the same box.
    """
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    lo = x.astype(np.float64, copy=True)
    hi = x.astype(np.float64, copy=True)
    index = np.asarray(list(free), dtype=np.int64)
    if index.size:
        if index.min() < 0 or index.max() >= x.size:
            raise ValueError(
                f"free feature indices must lie in [0, {x.size}), got "
                f"{int(index.min())}..{int(index.max())}"
            )
        lo[index] = np.maximum(lower, x[index] - epsilon)
        hi[index] = np.minimum(upper, x[index] + epsilon)
    return lo, hi


def _rivals(layers: list[AffineLayer], x: np.ndarray, label: int) -> list[int]:
    """The other classes, closest to the label's logit first: likelier to flip."""
    logits = forward(layers, x)
    if not 0 <= label < logits.size:
        raise ValueError(f"label must lie in [0, {logits.size}), got {label}")
    order = np.argsort(logits[label] - logits, kind="stable")
    return [int(j) for j in order if j != label]


class _SolverBase:
    """`is_invariant` in terms of `check`, and a small cache of parsed networks."""

    name: str = ""

    def __init__(self, cache_size: int) -> None:
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = cache_size

    def _cached(self, key: str, build: Callable[[], _T]) -> _T:
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = build()
        self._cache[key] = value  # one solver, one kind of entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return value

    def check(
        self,
        net: nn.Module,
        x: Tensor | np.ndarray,
        label: int,
        free: Sequence[int],
        epsilon: float,
        lower: float = 0.0,
        upper: float = 1.0,
    ) -> Verdict:
        raise NotImplementedError

    def is_invariant(
        self,
        net: nn.Module,
        x: Tensor | np.ndarray,
        label: int,
        free: Sequence[int],
        epsilon: float,
        lower: float = 0.0,
        upper: float = 1.0,
    ) -> bool:
        """True iff `label` stays the strict argmax over the whole box."""
        return self.check(net, x, label, free, epsilon, lower, upper).invariant


# --------------------------------------------------------------------------- #
# Marabou
# --------------------------------------------------------------------------- #


@dataclass
class _MarabouNet:
    """A parsed network and what each query restores or reads."""

    network: Any  # maraboupy MarabouNetworkONNX
    inputs: np.ndarray  # (n,) Marabou variable of each flat feature
    outputs: np.ndarray  # (classes,) Marabou variable of each logit
    lower_bounds: dict[int, float]  # the parser's own bounds (ReLU outputs >= 0)
    upper_bounds: dict[int, float]
    layers: list[AffineLayer]


def _import_marabou() -> tuple[Any, Any]:
    with warnings.catch_warnings():
        # maraboupy warns at import that its TensorFlow parser is unavailable.
        warnings.simplefilter("ignore")
        from maraboupy import Marabou, MarabouCore
    return Marabou, MarabouCore


class MarabouSolver(_SolverBase):
    """Invariance by Marabou, reading the network from a one-off ONNX export.

    Parameters
    ----------
    timeout : int (default: 0)
        Seconds per query; 0 means none. A timed-out query answers "unknown".
    cache_size : int (default: 4)
        Parsed networks kept, keyed by `network.fingerprint`.
    """

    name = "marabou"

    def __init__(self, *, timeout: int = 0, cache_size: int = 4) -> None:
        super().__init__(cache_size)
        self._marabou, _ = _import_marabou()
        # verbosity=0 matters: with default Options, Marabou's C++ engine prints
        # its statistics to stdout on every solve, `verbose=False` or not.
        self._options = self._marabou.createOptions(
            verbosity=0, timeoutInSeconds=int(timeout)
        )

    def _parse(self, net: nn.Module, shape: tuple[int, ...]) -> _MarabouNet:
        layers = affine_layers(net)
        # float64 export: the ONNX weights are then exactly the float64 values the
        # z3 backend reads, so both decide the same network.
        exported = _Float64Copy(net)
        dummy = torch.zeros((1, *shape), dtype=torch.float64)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "net.onnx")
            with warnings.catch_warnings():
                # The TorchScript exporter (dynamo=False) is deprecated in 2.9+,
                # but Marabou's parser reads its plain Gemm/Relu graph directly.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    exported,
                    (dummy,),
                    path,
                    dynamo=False,
                    input_names=["x"],
                    output_names=["logits"],
                )
            network = self._marabou.read_onnx(path)
        return _MarabouNet(
            network=network,
            inputs=np.asarray(network.inputVars[0]).reshape(-1),
            outputs=np.asarray(network.outputVars[0]).reshape(-1),
            lower_bounds=dict(network.lowerBounds),
            upper_bounds=dict(network.upperBounds),
            layers=layers,
        )

    def check(
        self,
        net: nn.Module,
        x: Tensor | np.ndarray,
        label: int,
        free: Sequence[int],
        epsilon: float,
        lower: float = 0.0,
        upper: float = 1.0,
    ) -> Verdict:
        start = time.perf_counter()
        shape = tuple(x.shape)
        parsed: _MarabouNet = self._cached(
            fingerprint(net, shape), lambda: self._parse(net, shape)
        )
        flat = flat_input(x)
        lo, hi = input_box(flat, free, epsilon, lower, upper)
        network = parsed.network
        # Reset the property (bounds + added inequalities), then put back the
        # parser's own bounds, which clearProperty also drops.
        network.clearProperty()
        network.lowerBounds.update(parsed.lower_bounds)
        network.upperBounds.update(parsed.upper_bounds)
        for var, low, high in zip(parsed.inputs, lo, hi, strict=True):
            network.setLowerBound(int(var), float(low))
            network.setUpperBound(int(var), float(high))
        y_label = int(parsed.outputs[label])
        queries = 0
        status: Status = "unsat"
        for j in _rivals(parsed.layers, flat, label):
            network.additionalEquList.clear()
            # y_label - y_j <= 0: class j ties or beats the label somewhere.
            network.addInequality(
                [y_label, int(parsed.outputs[j])], [1.0, -1.0], 0.0, isProperty=True
            )
            exit_code, values, _ = network.solve(verbose=False, options=self._options)
            queries += 1
            if exit_code == "sat":
                point = np.array([values[int(v)] for v in parsed.inputs])
                return Verdict(
                    False,
                    "sat",
                    point,
                    j,
                    queries,
                    time.perf_counter() - start,
                )
            if exit_code == "ERROR":
                raise RuntimeError(f"Marabou failed on the query for class {j}")
            if exit_code != "unsat":
                status = "unknown"
                break
        return Verdict(
            status == "unsat",
            status,
            queries=queries,
            seconds=time.perf_counter() - start,
        )


class _Float64Copy(nn.Module):
    """The network in float64, without touching the caller's module."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(
                _float64_linear(layer) if isinstance(layer, nn.Linear) else layer
                for layer in net
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _float64_linear(layer: nn.Linear) -> nn.Linear:
    copy = nn.Linear(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        dtype=torch.float64,
    )
    with torch.no_grad():
        copy.weight.copy_(layer.weight.detach().cpu())
        if layer.bias is not None:
            copy.bias.copy_(layer.bias.detach().cpu())
    return copy


# --------------------------------------------------------------------------- #
# z3
# --------------------------------------------------------------------------- #


@dataclass
class _ExactNet:
    """Each weight as the rational it equals, and as a z3 numeral."""

    layers: list[AffineLayer]
    weights: list[list[list[Fraction]]]
    biases: list[list[Fraction]]
    weight_terms: list[list[list[Any]]]  # z3 RatNumRef


def _rational(value: float) -> Fraction:
    # Fraction(float) is exact. (z3.RealVal(0.1) is not: it parses str(0.1) and
    # gives 1/10, which is not the float the network computes with.)
    return Fraction(float(value))


def _numeral(value: Fraction) -> Any:
    import z3

    return z3.RealVal(value)  # parses "p/q": exact


class Z3Solver(_SolverBase):
    """Invariance by z3, over exact rationals.

    Two things keep z3 practical, neither changing its answer. Sound interval
    bounds on every pre-activation (rigorous for float64 rounding, then rounded
    outward to a coarse dyadic grid so that z3's exact simplex works with small
    numbers) settle the ReLUs that are stable over the box and, for the others,
    add the triangle relaxation z3 cannot find itself. And a class whose margin the
    same bounds already prove positive needs no query at all (`presolve`).

    Parameters
    ----------
    timeout : float (default: 0.0)
        Seconds per query; 0 means none. A timed-out query answers "unknown".
    presolve : bool (default: True)
        Skip the classes that interval bounds already rule out.
    grid_bits : int (default: 16)
        Bounds are rounded outward to multiples of 2**-grid_bits.
    cache_size : int (default: 4)
        Networks kept in exact form, keyed by `network.fingerprint`.
    """

    name = "z3"

    def __init__(
        self,
        *,
        timeout: float = 0.0,
        presolve: bool = True,
        grid_bits: int = 16,
        cache_size: int = 4,
    ) -> None:
        super().__init__(cache_size)
        import z3  # noqa: F401  (fail here, not on the first query)

        self.timeout = timeout
        self.presolve = presolve
        self._grid = 2**grid_bits

    def _exact(self, net: nn.Module) -> _ExactNet:
        layers = affine_layers(net)
        weights = [[[_rational(w) for w in row] for row in la.weight] for la in layers]
        return _ExactNet(
            layers=layers,
            weights=weights,
            biases=[[_rational(b) for b in la.bias] for la in layers],
            weight_terms=[[[_numeral(w) for w in row] for row in w_] for w_ in weights],
        )

    def _outward(self, low: float, high: float) -> tuple[Fraction, Fraction]:
        return (
            Fraction(math.floor(low * self._grid), self._grid),
            Fraction(math.ceil(high * self._grid), self._grid),
        )

    def check(
        self,
        net: nn.Module,
        x: Tensor | np.ndarray,
        label: int,
        free: Sequence[int],
        epsilon: float,
        lower: float = 0.0,
        upper: float = 1.0,
    ) -> Verdict:
        import z3

        start = time.perf_counter()
        exact: _ExactNet = self._cached(
            fingerprint(net, tuple(x.shape)), lambda: self._exact(net)
        )
        flat = flat_input(x)
        lo, hi = input_box(flat, free, epsilon, lower, upper)
        rivals = _rivals(exact.layers, flat, label)
        if self.presolve:
            margins = margin_lower_bounds(exact.layers, lo, hi, label)
            rivals = [j for j in rivals if not margins[j] > 0]
        if not rivals:
            return Verdict(True, "unsat", seconds=time.perf_counter() - start)

        solver = z3.Solver()
        if self.timeout:
            solver.set("timeout", int(self.timeout * 1000))
        free_set = sorted({int(i) for i in free})
        inputs = {i: z3.Real(f"x{i}") for i in free_set}
        for i, var in inputs.items():
            solver.add(var >= _numeral(_rational(lo[i])))
            solver.add(var <= _numeral(_rational(hi[i])))
        fixed = [_rational(v) for v in flat]
        is_free = np.zeros(flat.size, dtype=bool)
        is_free[free_set] = True

        bounds = interval_bounds(exact.layers, lo, hi)
        hidden: list[Any] = []  # z3 term of each unit's output (None: always 0)
        for k, layer in enumerate(exact.layers):
            outputs: list[Any] = []
            for r in range(layer.weight.shape[0]):
                row, terms = exact.weights[k][r], exact.weight_terms[k][r]
                if k == 0:
                    # Fixed features fold into the constant, exactly.
                    constant = exact.biases[0][r] + sum(
                        (row[i] * fixed[i] for i in np.flatnonzero(~is_free)),
                        Fraction(0),
                    )
                    addends = [terms[i] * inputs[i] for i in free_set]
                else:
                    constant = exact.biases[k][r]
                    addends = [
                        terms[c] * h for c, h in enumerate(hidden) if h is not None
                    ]
                z = z3.Real(f"z{k}_{r}")
                solver.add(z == z3.Sum(*addends, _numeral(constant)))
                low, high = self._outward(bounds[k][0][r], bounds[k][1][r])
                solver.add(z >= _numeral(low), z <= _numeral(high))
                if not layer.relu or low >= 0:
                    outputs.append(z)  # linear, or a ReLU active on the whole box
                elif high <= 0:
                    outputs.append(None)  # a ReLU inactive on the whole box
                else:
                    a = z3.Real(f"a{k}_{r}")
                    solver.add(a == z3.If(z > 0, z, _numeral(Fraction(0))))
                    # Triangle relaxation: implied by the If, but z3 would only
                    # find it by case splits.
                    solver.add(a >= 0, a >= z)
                    solver.add(
                        a * _numeral(high - low) <= _numeral(high) * (z - _numeral(low))
                    )
                    outputs.append(a)
            hidden = outputs
        logits = [h if h is not None else _numeral(Fraction(0)) for h in hidden]

        queries = 0
        status: Status = "unsat"
        for j in rivals:
            solver.push()
            solver.add(logits[label] - logits[j] <= 0)
            answer = solver.check()
            queries += 1
            if answer == z3.sat:
                model = solver.model()
                point = flat.copy()
                for i, var in inputs.items():
                    value = model.eval(var, model_completion=True)
                    point[i] = float(value.as_fraction())
                return Verdict(
                    False, "sat", point, j, queries, time.perf_counter() - start
                )
            solver.pop()
            if answer != z3.unsat:
                status = "unknown"
                break
        return Verdict(
            status == "unsat",
            status,
            queries=queries,
            seconds=time.perf_counter() - start,
        )


# --------------------------------------------------------------------------- #
# Choosing a backend
# --------------------------------------------------------------------------- #

SOLVERS = ("marabou", "z3", "auto")


def marabou_available() -> bool:
    """Whether maraboupy imports (it ships Linux/macOS wheels only)."""
    try:
        _import_marabou()
    except ImportError:
        return False
    return True


def default_solver() -> InvarianceSolver:
    """Marabou when maraboupy imports (VeriX's own solver, and faster), else z3."""
    return MarabouSolver() if marabou_available() else Z3Solver()


def make_solver(name: str = "auto") -> InvarianceSolver:
    """A solver by name: "marabou", "z3" or "auto" (`default_solver`)."""
    if name == "marabou":
        return MarabouSolver()
    if name == "z3":
        return Z3Solver()
    if name == "auto":
        return default_solver()
    raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
