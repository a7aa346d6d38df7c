"""The queries outside the rounds: feature statistics before, task reports after.

A part of its own because neither is a round of any strategy: before round 1 a
run that centres features asks a seeded sample of clients for the sum and count
of their pooled features (the center every later message carries); after the
last round a task that reports asks every client for numbers computed on its
private data (`Task.report`). Both reuse the strategy's sampling, config and
partitions, and validate each reply (`strategies.replies`): a bad one is logged
and dropped, the honest ones are used.
"""

from __future__ import annotations

from collections import Counter
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from spry import protocol
from spry.seeding import SAMPLE_STATISTICS
from strategies.replies import (
    EmptyReply,
    InvalidReply,
    checked_feature_sum,
    checked_report,
    log_dropped,
    log_empty,
)
from strategies.sliced_rounds import SlicedRounds
from strategies.strategy_utils import by_partition, in_partition_order


def _ask(
    strategy: SlicedRounds,
    grid: Grid,
    nodes: list[int],
    kind: str,
    content: RecordDict,
    timeout: float | None,
) -> list[Message]:
    """Send `content` as query `kind` to `nodes`; the replies in partition order."""
    message_type = f"{MessageType.QUERY}.{kind}"
    messages = [
        Message(content=content, message_type=message_type, dst_node_id=n)
        for n in nodes
    ]
    replies = grid.send_and_receive(messages, timeout=timeout)
    return in_partition_order(replies, strategy.partitions)


def estimate_feature_center(
    strategy: SlicedRounds,
    grid: Grid,
    config: ConfigRecord,
    timeout: float | None = None,
) -> int:
    """Set `strategy.feature_center` to the mean pooled feature of a sample.

    Each sampled client returns the sum and count of its training examples'
    pooled features under the initial model; the center is the pooled mean, sent
    with every later message. Returns the number of examples it used.
    """
    nodes = strategy.sample(0, strategy.clients_per_round, SAMPLE_STATISTICS)
    content = RecordDict({protocol.CONFIG: strategy.config(config, 0)})
    sums: dict[int, tuple[np.ndarray, int]] = {}
    for reply in _ask(strategy, grid, nodes, protocol.FEATURE_STATS, content, timeout):
        node = reply.metadata.src_node_id
        try:
            sums[node] = checked_feature_sum(reply, strategy.partitions.get(node))
        except EmptyReply:
            log_empty(strategy.partitions.get(node), "feature center")
        except InvalidReply as reason:
            log_dropped(node, strategy.partitions.get(node), str(reason))
    total, count = _pooled(strategy, sums)
    if total is None or count == 0:
        raise RuntimeError(
            "no client returned feature statistics; cannot centre the features"
        )
    strategy.feature_center = (total / count).astype(np.float32).tolist()
    log(INFO, "feature center: mean pooled feature of %d examples", count)
    return count


def _pooled(
    strategy: SlicedRounds, sums: dict[int, tuple[np.ndarray, int]]
) -> tuple[np.ndarray | None, int]:
    """(sum, count) over the clients whose width most clients agree on.

    The model's width is what most clients agree on; a lone odd one is dropped.
    """
    widths = Counter(part.shape for part, _ in sums.values())
    width = widths.most_common(1)[0][0] if widths else None
    total, count = None, 0
    for node, (part, examples) in sums.items():
        if part.shape != width:
            log_dropped(
                node,
                strategy.partitions.get(node),
                f"feature sum of shape {part.shape}, most clients sent {width}",
            )
            continue
        total = part if total is None else total + part
        count += examples
    return total, count


def task_reports(
    strategy: SlicedRounds,
    grid: Grid,
    arrays: ArrayRecord,
    timeout: float | None = None,
) -> list[dict[str, float]]:
    """Every client's task report on the final model `arrays`, in partition order.

    What a task shares instead of (or besides) weights: numbers a client computes
    on its private data (`Task.report`). Failed clients are logged and left out.
    """
    content = RecordDict(
        {protocol.ARRAYS: arrays, protocol.CONFIG: strategy.config(ConfigRecord(), 0)}
    )
    nodes = by_partition(strategy.partitions)
    log(INFO, "task report: asking all %d clients", len(nodes))
    reports = []
    for reply in _ask(strategy, grid, nodes, protocol.TASK_REPORT, content, timeout):
        node = reply.metadata.src_node_id
        try:
            reports.append(checked_report(reply, strategy.partitions.get(node)))
        except InvalidReply as reason:
            log_dropped(node, strategy.partitions.get(node), str(reason))
    return reports
