"""Checks every strategy applies to a client's reply before it touches the model.

A reply is accepted only if it returns exactly the tensors that node was sent to
train, with the shapes the server holds, finite float values, and a positive
example count. Anything else drops that client from the round with a log line; the
round goes on with the rest (a bad or malicious client must not poison the model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.common.logger import log

from spry import protocol


class InvalidReply(ValueError):
    """A client's reply cannot be used; the message says why."""


def slice_arrays(
    current: Mapping[str, np.ndarray], names: Sequence[str]
) -> ArrayRecord:
    """An ArrayRecord with the tensors `names` from `current`."""
    from flwr.app import Array

    return ArrayRecord({name: Array(np.asarray(current[name])) for name in names})


def checked_update(
    reply: Message,
    *,
    expected_names: Sequence[str],
    current: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], float, MetricRecord]:
    """(tensors, num-examples, metrics) of a valid training reply, else InvalidReply."""
    if reply.has_error():
        raise InvalidReply(f"client error: {reply.error.reason}")
    content = reply.content
    if protocol.ARRAYS not in content.array_records:
        raise InvalidReply("no arrays in reply")
    if protocol.METRICS not in content.metric_records:
        raise InvalidReply("no metrics in reply")
    record = content.array_records[protocol.ARRAYS]
    metrics = content.metric_records[protocol.METRICS]
    returned, expected = set(record.keys()), set(expected_names)
    if returned != expected:
        extra, missing = sorted(returned - expected), sorted(expected - returned)
        raise InvalidReply(
            f"wrong tensor names (unexpected {extra}, missing {missing})"
        )
    weight = _positive_weight(metrics)
    tensors: dict[str, np.ndarray] = {}
    for name in expected_names:
        value = record[name].numpy()
        if value.shape != current[name].shape:
            raise InvalidReply(
                f"{name}: shape {value.shape} != expected {current[name].shape}"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise InvalidReply(f"{name}: dtype {value.dtype} is not floating point")
        if not np.all(np.isfinite(value)):
            raise InvalidReply(f"{name}: contains NaN or Inf")
        tensors[name] = value
    return tensors, weight, metrics


def checked_scalars(reply: Message) -> tuple[np.ndarray, float, MetricRecord]:
    """(scalars of shape (steps, K), num-examples, metrics) of a scalar upload."""
    if reply.has_error():
        raise InvalidReply(f"client error: {reply.error.reason}")
    content = reply.content
    if protocol.METRICS not in content.metric_records:
        raise InvalidReply("no metrics in reply")
    metrics = content.metric_records[protocol.METRICS]
    weight = _positive_weight(metrics)
    record = content.array_records.get(protocol.SCALARS)
    if record is None or set(record.keys()) != {"scalars"}:
        raise InvalidReply("no `scalars` array in a scalar-upload reply")
    scalars = record["scalars"].numpy()
    if scalars.ndim != 2 or scalars.shape[1] == 0:
        raise InvalidReply(f"scalars should be (steps, K), got shape {scalars.shape}")
    if not np.issubdtype(scalars.dtype, np.floating):
        raise InvalidReply(f"scalars: dtype {scalars.dtype} is not floating point")
    if not np.all(np.isfinite(scalars)):
        raise InvalidReply("scalars contain NaN or Inf")
    return scalars.astype(np.float64), weight, metrics


def _positive_weight(metrics: MetricRecord) -> float:
    weight = metrics.get(protocol.NUM_EXAMPLES)
    if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
        raise InvalidReply(f"`{protocol.NUM_EXAMPLES}` should be > 0, got {weight!r}")
    return float(weight)


def log_dropped(node_id: int, partition: int | None, reason: str) -> None:
    log(
        WARNING,
        "dropping node %s (partition %s) from this round: %s",
        node_id,
        partition,
        reason,
    )
