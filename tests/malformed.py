"""Twenty ways a client's training reply can be malformed, and what the server says.

Each kind turns an honest reply (the slice's tensors as float32, honest metrics)
into a malformed one a ClientApp could really send through Flower (every record
here survives Flower's serialization). The unit tests apply them to hand-built
replies; the end-to-end test (tests/integration/test_malformed_replies.py) sends
them through the simulation engine from a ClientApp that wraps the real one.
`reason` is the text the server's rejection line must contain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

Arrays = dict[str, np.ndarray]
Metrics = dict[str, int | float | list[float]]


@dataclass(frozen=True)
class Kind:
    """One kind of malformed reply: how to make it, what the rejection says."""

    name: str
    reason: str
    corrupt: Callable[[Arrays, Metrics], RecordDict]


def content(
    arrays: Mapping[str, np.ndarray] | None,
    metrics: Mapping[str, int | float | list[float]] | None,
    /,
    **extra: ArrayRecord | ConfigRecord | MetricRecord,
) -> RecordDict:
    """A reply's RecordDict: "arrays" and "metrics" (None: left out), and `extra`.

    `extra` records are added under their keyword, replacing those two if named so.
    """
    records: dict[str, ArrayRecord | ConfigRecord | MetricRecord] = {}
    if arrays is not None:
        records["arrays"] = ArrayRecord(
            {k: Array(np.asarray(v)) for k, v in arrays.items()}
        )
    if metrics is not None:
        records["metrics"] = MetricRecord(dict(metrics))
    return RecordDict({**records, **extra})


def _first(arrays: Arrays, fn: Callable[[np.ndarray], np.ndarray]) -> Arrays:
    """`arrays` with `fn` applied to the first tensor (the first 2-D one if any)."""
    name = next((n for n, v in arrays.items() if v.ndim == 2), next(iter(arrays)))
    return {**arrays, name: fn(arrays[name])}


def _every(arrays: Arrays, fn: Callable[[np.ndarray], np.ndarray]) -> Arrays:
    return {n: fn(v) for n, v in arrays.items()}


def _with_value(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def poke(v: np.ndarray) -> np.ndarray:
        out = v.copy()
        out.flat[0] = value
        return out

    return poke


def _transposed(v: np.ndarray) -> np.ndarray:
    if v.ndim == 2 and v.shape[0] != v.shape[1]:
        return np.ascontiguousarray(v.T)
    return v.reshape(-1, 1)  # a 1-D or square tensor: a column instead


def _without(metrics: Metrics, key: str) -> Metrics:
    return {k: v for k, v in metrics.items() if k != key}


KINDS: tuple[Kind, ...] = (
    # Names and records
    Kind(
        "extra-tensor",
        "wrong tensor names (unexpected ['intruder']",
        lambda a, m: content({**a, "intruder": np.zeros(2, np.float32)}, m),
    ),
    Kind(
        "missing-tensor",
        "wrong tensor names (unexpected [], missing [",
        lambda a, m: content(dict(list(a.items())[1:]), m),
    ),
    Kind(
        "no-arrays",
        "unexpected records {'arrays': []}",
        lambda a, m: content(None, m),
    ),
    Kind(
        "extra-records",
        "unexpected records {'arrays': ['arrays', 'smuggled'], 'config': ['cfg']}",
        lambda a, m: content(
            a,
            m,
            smuggled=ArrayRecord({"x": Array(np.zeros(4, np.float32))}),
            cfg=ConfigRecord({"hello": "server"}),
        ),
    ),
    # Size: right names, far more bytes than the slice sent (checked undecoded)
    Kind(
        "oversized",
        "bytes over the limit of",
        lambda a, m: content(
            _first(a, lambda v: np.zeros(v.size + 200_000, np.float32)), m
        ),
    ),
    # Dtypes: anything but the float32 the server sent
    Kind(
        "float64",
        "dtype float64, expected float32",
        lambda a, m: content(_every(a, lambda v: v.astype(np.float64)), m),
    ),
    Kind(
        "float16",
        "dtype float16, expected float32",
        lambda a, m: content(_every(a, lambda v: v.astype(np.float16)), m),
    ),
    Kind(
        "integer",
        "dtype int32, expected float32",
        lambda a, m: content(_every(a, lambda v: v.astype(np.int32)), m),
    ),
    Kind(
        "complex",
        "dtype complex64, expected float32",
        lambda a, m: content(_every(a, lambda v: v.astype(np.complex64)), m),
    ),
    # Shapes
    Kind(
        "zero-dim",
        "shape (), expected",
        lambda a, m: content(_first(a, lambda v: np.float32(v.flat[0])), m),
    ),
    Kind(
        "empty",
        "shape (0,), expected",
        lambda a, m: content(_first(a, lambda v: np.zeros(0, np.float32)), m),
    ),
    Kind(
        "transposed",
        "expected (",
        lambda a, m: content(_first(a, _transposed), m),
    ),
    Kind(
        "leading-dim",
        "shape (1, ",
        lambda a, m: content(_first(a, lambda v: v[None]), m),
    ),
    # Values
    Kind(
        "nan",
        "contains NaN or Inf (1 NaN, 0 +Inf, 0 -Inf)",
        lambda a, m: content(_first(a, _with_value(np.nan)), m),
    ),
    Kind(
        "+inf",
        "contains NaN or Inf (0 NaN, 1 +Inf, 0 -Inf)",
        lambda a, m: content(_first(a, _with_value(np.inf)), m),
    ),
    Kind(
        "-inf",
        "contains NaN or Inf (0 NaN, 0 +Inf, 1 -Inf)",
        lambda a, m: content(_first(a, _with_value(-np.inf)), m),
    ),
    # Metrics the aggregation reads
    Kind(
        "num-examples-missing",
        "`num-examples` is missing",
        lambda a, m: content(a, _without(m, "num-examples")),
    ),
    Kind(
        "num-examples-negative",
        "`num-examples` should be an integer in 1..1000000000, got -5",
        lambda a, m: content(a, {**m, "num-examples": -5}),
    ),
    Kind(
        "num-examples-nan",
        "metric `num-examples` is nan",
        lambda a, m: content(a, {**m, "num-examples": float("nan")}),
    ),
    Kind(
        "train-loss-list",
        "metric `train-loss` should be a number, got list [0.1, 0.2]",
        lambda a, m: content(a, {**m, "train-loss": [0.1, 0.2]}),
    ),
)
assert len(KINDS) == 20 and len({k.name for k in KINDS}) == 20

BY_NAME = {kind.name: kind for kind in KINDS}
