"""Checks every strategy applies to a client's reply before it touches the model.

A reply is accepted only if it holds exactly the records the protocol names, returns
exactly the tensors that node was sent to train, no more bytes than those tensors
(plus a small allowance), each with the dtype and shape the server sent and finite
values, and metrics that are finite numbers of the known keys with a positive
integer example count. Anything else drops that client from the round with a log
line; the round goes on with the rest (a bad or malicious client must not poison
the model, nor crash the aggregation that reads its metrics).

Every check runs on the reply as received, before any array is decoded for use:
the size limit first, so an oversized payload is never deserialized.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.logger import log

from spry import protocol
from spry.tasks import TextReply

# Bytes a reply may carry beyond the raw tensors it was sent: the .npy header of
# each array (128 bytes for any shape here) and some slack. Derived from what was
# sent, so no config key is needed.
HEADER_ALLOWANCE_BYTES = 1024  # per array
PAYLOAD_ALLOWANCE_BYTES = 64 * 1024  # per reply
# A scalar upload is steps x K float64: K the server knows; the steps it cannot
# (local epochs over a partition it never sees), so they are capped generously.
MAX_SCALAR_STEPS = 100_000
# Far above any partition (the whole datasets here are < 1e7 examples); stops a
# client claiming an overflow-scale weight that zeroes everyone else's share.
MAX_NUM_EXAMPLES = 10**9
# A text round's reply (tips, hints): far above any honest round's text, a bound
# on what one client can make the server hold and merge.
MAX_TEXT_CHARS = 1_000_000

# The metrics an honest training reply carries (clients/client_app.py `train`).
# Counts, bytes and seconds must be >= 0; the loss only finite.
NON_NEGATIVE_METRICS = (
    protocol.STEPS,
    protocol.FORWARD_PASSES,
    protocol.TRAIN_SECONDS,
    protocol.PEAK_MEM_BYTES,
    protocol.PEAK_MEM_TOTAL_BYTES,
    protocol.PEAK_STEP_TOKENS,
    protocol.LIVE_ALLOCATOR,
)
TRAIN_METRICS = frozenset(
    {
        protocol.NUM_EXAMPLES,
        protocol.TRAIN_LOSS,
        protocol.PARTITION_ID,
        *NON_NEGATIVE_METRICS,
    }
)
# An evaluation reply's; the fine-tuned scores only with `eval-finetune-epochs` > 0.
EVALUATE_METRICS = frozenset(
    {
        protocol.NUM_EXAMPLES,
        protocol.ACCURACY,
        protocol.LOSS,
        protocol.FINETUNED_ACCURACY,
        protocol.FINETUNED_LOSS,
    }
)


class InvalidReply(ValueError):
    """A client's reply cannot be used; the message says why."""


class EmptyReply(InvalidReply):
    """A well-formed reply from a client that had no training examples.

    Nothing to add and nothing wrong: a partitioner may leave a client empty (a
    Dirichlet draw, a small dataset), and such a client answers with 0 examples.
    The round drops it under a reason of its own instead of warning of an
    invalid reply.
    """


def slice_arrays(
    current: Mapping[str, np.ndarray], names: Sequence[str]
) -> ArrayRecord:
    """An ArrayRecord with the tensors `names` from `current`."""
    return ArrayRecord({name: Array(np.asarray(current[name])) for name in names})


def checked_update(
    reply: Message,
    *,
    expected_names: Sequence[str],
    current: Mapping[str, np.ndarray],
    partition: int | None = None,
) -> tuple[dict[str, np.ndarray], float, MetricRecord]:
    """(tensors, num-examples, metrics) of a valid training reply, else InvalidReply.

    `partition`, when given, must match the partition id the reply's metrics claim.
    """
    _check_no_error(reply)
    _check_records(reply, protocol.ARRAYS)
    metrics = checked_metrics(reply.content.metric_records[protocol.METRICS], partition)
    record = reply.content.array_records[protocol.ARRAYS]
    returned, expected = set(record.keys()), set(expected_names)
    if returned != expected:
        extra, missing = sorted(returned - expected), sorted(expected - returned)
        raise InvalidReply(
            f"wrong tensor names (unexpected {extra}, missing {missing})"
        )
    sent = sum(int(np.asarray(current[name]).nbytes) for name in expected_names)
    _check_size(record, sent)
    tensors: dict[str, np.ndarray] = {}
    for name in expected_names:
        want = np.asarray(current[name])
        value = _decode(name, record[name])
        if value.dtype != want.dtype:
            raise InvalidReply(f"{name}: dtype {value.dtype}, expected {want.dtype}")
        if value.shape != want.shape:
            raise InvalidReply(f"{name}: shape {value.shape}, expected {want.shape}")
        _check_finite(name, value)
        tensors[name] = value
    return tensors, float(metrics[protocol.NUM_EXAMPLES]), metrics


def checked_scalars(
    reply: Message,
    *,
    num_tangents: int | None = None,
    partition: int | None = None,
) -> tuple[np.ndarray, float, MetricRecord]:
    """(scalars of shape (steps, K), num-examples, metrics) of a scalar upload.

    `num_tangents`, when given, is the K the server will redraw directions for:
    any other count would rebuild a different gradient without an error.
    """
    _check_no_error(reply)
    _check_records(reply, protocol.SCALARS)
    metrics = checked_metrics(reply.content.metric_records[protocol.METRICS], partition)
    record = reply.content.array_records[protocol.SCALARS]
    if set(record.keys()) != {"scalars"}:
        raise InvalidReply(
            f"a scalar upload holds one `scalars` array, got {sorted(record.keys())}"
        )
    k = num_tangents or 1
    _check_size(record, MAX_SCALAR_STEPS * k * 8)
    scalars = _decode("scalars", record["scalars"])
    if scalars.dtype != np.float64:
        raise InvalidReply(f"scalars: dtype {scalars.dtype}, expected float64")
    if scalars.ndim != 2 or scalars.shape[0] == 0 or scalars.shape[1] == 0:
        raise InvalidReply(f"scalars should be (steps, K), got shape {scalars.shape}")
    if num_tangents is not None and scalars.shape[1] != num_tangents:
        raise InvalidReply(
            f"scalars: K = {scalars.shape[1]} per step, the server drew "
            f"{num_tangents} directions"
        )
    _check_finite("scalars", scalars)
    return scalars, float(metrics[protocol.NUM_EXAMPLES]), metrics


def checked_metrics(
    metrics: MetricRecord,
    partition: int | None = None,
    *,
    known: frozenset[str] = TRAIN_METRICS,
) -> MetricRecord:
    """`metrics` if every value is usable by the aggregation, else InvalidReply.

    Only `known` keys, each a finite number (no lists, no bools, no strings);
    `num-examples` a positive integer below MAX_NUM_EXAMPLES; counts, bytes and
    seconds non-negative; the partition id, if sent, the node's own.
    """
    unknown = sorted(set(metrics.keys()) - known)
    if unknown:
        raise InvalidReply(f"unexpected metrics {unknown}")
    for key, value in metrics.items():
        _check_number("metric", key, value)
        if key in NON_NEGATIVE_METRICS and value < 0:
            raise InvalidReply(f"metric `{key}` should be >= 0, got {value}")
    weight = metrics.get(protocol.NUM_EXAMPLES)
    if weight is None:
        raise InvalidReply(f"`{protocol.NUM_EXAMPLES}` is missing")
    if weight == 0 and type(weight) is int:
        raise EmptyReply("no training examples on this client")
    if (
        not isinstance(weight, int)
        or isinstance(weight, bool)
        or not 0 < weight <= MAX_NUM_EXAMPLES
    ):
        raise InvalidReply(
            f"`{protocol.NUM_EXAMPLES}` should be an integer in 1..{MAX_NUM_EXAMPLES}"
            f", got {_short(weight)}"
        )
    _check_claim(metrics.get(protocol.PARTITION_ID), partition)
    return metrics


def checked_feature_sum(
    reply: Message, partition: int | None = None
) -> tuple[np.ndarray, int]:
    """(sum of pooled features, example count) of a feature-statistics reply.

    The center is subtracted in every later forward pass of every client, so one
    bad sum would bias the whole run: a 1-d float vector, finite, with a positive
    integer count. Widths are compared across replies by the caller.
    """
    _check_no_error(reply)
    _check_records(reply, protocol.FEATURE_SUM)
    content = reply.content
    record = content.array_records[protocol.FEATURE_SUM]
    if list(record.keys()) != [protocol.FEATURE_SUM]:
        raise InvalidReply(f"unexpected arrays {sorted(record.keys())}")
    total = _decode(protocol.FEATURE_SUM, record[protocol.FEATURE_SUM])
    if total.ndim != 1 or total.size == 0:
        raise InvalidReply(f"feature sum of shape {total.shape}, expected (width,)")
    if not np.issubdtype(total.dtype, np.floating):
        raise InvalidReply(f"feature sum: dtype {total.dtype} is not floating point")
    _check_finite(protocol.FEATURE_SUM, total)
    metrics = checked_metrics(
        content[protocol.METRICS], partition, known=frozenset({protocol.NUM_EXAMPLES})
    )
    return total.astype(np.float64), int(metrics[protocol.NUM_EXAMPLES])


def checked_report(reply: Message, partition: int | None = None) -> dict[str, float]:
    """A task report's numbers: finite, not bools or strings, for its own partition.

    The keys are the task's, so they are not checked here; the task merges them.
    """
    _check_no_error(reply)
    content = reply.content
    if list(content.metric_records.keys()) != [protocol.METRICS] or (
        content.array_records or content.config_records
    ):
        raise InvalidReply("a task report is one metrics record and nothing else")
    metrics = content[protocol.METRICS]
    for key, value in metrics.items():
        _check_number("report", key, value)
    _check_claim(metrics.get(protocol.PARTITION_ID), partition)
    return {
        key: float(value)
        for key, value in metrics.items()
        if key != protocol.PARTITION_ID
    }


def checked_text_reply(reply: Message, partition: int | None = None) -> TextReply:
    """A text round's reply: finite numbers with an example count, lists of text.

    Exactly one metrics record and one config record of `kind -> list[str]`, no
    arrays; at most `MAX_TEXT_CHARS` characters of text in all.
    """
    _check_no_error(reply)
    content = reply.content
    if (
        list(content.metric_records.keys()) != [protocol.METRICS]
        or list(content.config_records.keys()) != [protocol.TEXT]
        or content.array_records
    ):
        raise InvalidReply(
            "a text round's reply is one metrics and one text record, nothing else"
        )
    metrics = content[protocol.METRICS]
    for key, value in metrics.items():
        _check_number("metric", key, value)
    examples = metrics.get(protocol.NUM_EXAMPLES)
    if examples is None or not 0 <= examples <= MAX_NUM_EXAMPLES:
        raise InvalidReply(
            f"`{protocol.NUM_EXAMPLES}` should be in 0..{MAX_NUM_EXAMPLES}, "
            f"got {_short(examples)}"
        )
    _check_claim(metrics.get(protocol.PARTITION_ID), partition)
    text: dict[str, list[str]] = {}
    for kind, lines in content[protocol.TEXT].items():
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise InvalidReply(f"text `{kind}` should be a list of strings")
        text[kind] = list(lines)
    chars = sum(len(line) for lines in text.values() for line in lines)
    if chars > MAX_TEXT_CHARS:
        raise InvalidReply(f"{chars} characters of text, the limit is {MAX_TEXT_CHARS}")
    numbers = {k: float(v) for k, v in metrics.items() if k != protocol.PARTITION_ID}
    return TextReply(metrics=numbers, text=text)


def _check_no_error(reply: Message) -> None:
    if reply.has_error():
        raise InvalidReply(f"client error: {reply.error.reason}")


def _check_number(kind: str, key: str, value: object) -> None:
    """A finite int or float (bools, strings and lists are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReply(
            f"{kind} `{key}` should be a number, got {type(value).__name__} "
            f"{_short(value)}"
        )
    if not math.isfinite(value):
        raise InvalidReply(f"{kind} `{key}` is {value}")


def _check_claim(claimed: object, partition: int | None) -> None:
    """A reply that names a partition must name the one its node holds."""
    if partition is not None and claimed is not None and claimed != partition:
        raise InvalidReply(
            f"claims partition {claimed}, the node holds partition {partition}"
        )


def _check_records(reply: Message, array_key: str) -> None:
    """Exactly one ArrayRecord (`array_key`), one MetricRecord, no ConfigRecord."""
    content = reply.content
    found = {
        "arrays": sorted(content.array_records.keys()),
        "metrics": sorted(content.metric_records.keys()),
        "config": sorted(content.config_records.keys()),
    }
    expected = {"arrays": [array_key], "metrics": [protocol.METRICS], "config": []}
    if found != expected:
        wrong = {
            kind: names for kind, names in found.items() if names != expected[kind]
        }
        raise InvalidReply(
            f"unexpected records {wrong}; expected {array_key!r} arrays and "
            f"{protocol.METRICS!r} metrics only"
        )


def _check_size(record: ArrayRecord, expected_bytes: int) -> None:
    """Reject a payload larger than `expected_bytes` plus headers, undecoded."""
    size = sum(len(array.data) for array in record.values())
    limit = (
        expected_bytes + HEADER_ALLOWANCE_BYTES * len(record) + PAYLOAD_ALLOWANCE_BYTES
    )
    if size > limit:
        raise InvalidReply(
            f"payload of {size} bytes over the limit of {limit} "
            f"({expected_bytes} bytes expected)"
        )


def _decode(name: str, array: Array) -> np.ndarray:
    """The array as numpy; never unpickles (object arrays fail here)."""
    try:
        return array.numpy()
    except Exception as error:  # noqa: BLE001 - any failure: the bytes are bad
        raise InvalidReply(f"{name}: cannot decode ({error})") from None


def _check_finite(name: str, value: np.ndarray) -> None:
    if not np.all(np.isfinite(value)):
        nan = int(np.isnan(value).sum())
        raise InvalidReply(
            f"{name}: contains NaN or Inf ({nan} NaN, "
            f"{int(np.isposinf(value).sum())} +Inf, "
            f"{int(np.isneginf(value).sum())} -Inf)"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def log_empty(partition: int | None, where: str) -> None:
    """One INFO line for a client left out because it holds no training examples."""
    log(INFO, "%s: partition %s has no training examples", where, partition)


def log_dropped(
    node_id: int, partition: int | None, reason: str, server_round: int | None = None
) -> None:
    """One WARNING line: which node (and partition) gave nothing this round, why."""
    log(
        WARNING,
        "%sdropping node %s (partition %s) from this round: %s",
        "" if server_round is None else f"round {server_round}: ",
        node_id,
        partition,
        reason,
    )
