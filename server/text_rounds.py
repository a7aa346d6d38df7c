"""Rounds that share text, not weights: federated prompt learning.

A task with `shares_text` (Introspective Tips' tips, SOAP's optimization hints)
learns in its clients' prompts: the model it builds is only the clients'
generator and never changes. Each round the server sends the task's shared text
to a seeded sample of clients; each works on its own partition with it (plays its
games, optimizes its programs) and returns numbers and text of its own; the task
merges the text into the next round's (`Task.merge_text`: de-duplicate, rank,
cap). Clients share no data and no weights, only what the task puts in a reply.

The loop reuses the strategy's sampling, config and partitions, and the reply
checks every strategy applies (`strategies.replies`): a bad reply is logged and
dropped, the round goes on with the rest. Each round's weighted means of the
clients' numbers go into rounds.json and the run's summary; the task's own
evaluation (with the merged text) is the per-round row of metrics.csv.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from logging import INFO

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from spry import protocol
from spry.config import RunConfig
from spry.seeding import SAMPLE_TRAIN
from spry.tasks import Task, TextReply
from strategies.replies import InvalidReply, checked_text_reply, log_dropped
from strategies.sliced_rounds import SlicedRounds
from strategies.strategy_utils import in_partition_order


def text_record(text: Mapping[str, Sequence[str]]) -> ConfigRecord:
    """The shared text as it travels: kind -> list of lines."""
    return ConfigRecord(
        {kind: [str(line) for line in lines] for kind, lines in text.items()}
    )


def weighted_means(replies: Sequence[TextReply]) -> dict[str, float]:
    """Each metric's mean over the replies, weighted by `num-examples`.

    `num-examples` itself is summed; with no examples at all, plain means.
    """
    total = sum(r.metrics.get(protocol.NUM_EXAMPLES, 0.0) for r in replies)
    keys = sorted({k for r in replies for k in r.metrics} - {protocol.NUM_EXAMPLES})
    means: dict[str, float] = {protocol.NUM_EXAMPLES: total}
    for key in keys:
        having = [r for r in replies if key in r.metrics]
        weights = [r.metrics.get(protocol.NUM_EXAMPLES, 0.0) for r in having]
        if sum(weights) > 0:
            weighted = sum(
                w * r.metrics[key] for w, r in zip(weights, having, strict=True)
            )
            means[key] = weighted / sum(weights)
        else:
            means[key] = sum(r.metrics[key] for r in having) / len(having)
    return means


def run_text_rounds(
    grid: Grid,
    cfg: RunConfig,
    task: Task,
    strategy: SlicedRounds,
    evaluate: Callable[[int], None],
) -> None:
    """Rounds 1..N of a text-sharing task; `evaluate(r)` records round r's row.

    Round 0 is evaluated first, with the task's initial text. The strategy's
    `round_log` gets each round's sampled partitions, means and text sizes.
    """
    task.shared_text = task.initial_text()
    evaluate(0)
    for server_round in range(1, cfg.runtime.num_server_rounds + 1):
        started = time.perf_counter()
        count = min(strategy.clients_per_round, len(strategy.partitions))
        nodes = strategy.sample(server_round, count, SAMPLE_TRAIN)
        content = RecordDict(
            {
                protocol.CONFIG: strategy.config(ConfigRecord(), server_round),
                protocol.TEXT: text_record(task.shared_text),
            }
        )
        message_type = f"{MessageType.QUERY}.{protocol.TEXT_ROUND}"
        messages = [
            Message(content=content, message_type=message_type, dst_node_id=node)
            for node in nodes
        ]
        received = grid.send_and_receive(messages, timeout=cfg.runtime.round_timeout)
        replies: list[TextReply] = []
        rejected: dict[int, str] = {}
        for reply in in_partition_order(received, strategy.partitions):
            node = reply.metadata.src_node_id
            partition = strategy.partitions.get(node)
            try:
                replies.append(checked_text_reply(reply, partition))
            except InvalidReply as reason:
                log_dropped(node, partition, str(reason))
                rejected[-1 if partition is None else partition] = str(reason)
        if not replies:
            raise RuntimeError(f"round {server_round}: no client returned a text round")
        task.shared_text = task.merge_text(server_round, task.shared_text, replies)
        means = weighted_means(replies)
        strategy.round_log[server_round] = {
            "sampled-partitions": [strategy.partitions[n] for n in nodes],
            "train": {**means, "clients": len(replies)},
            "dropped": len(nodes) - len(replies),
            "rejected": rejected,
            "shared-text-lines": {k: len(v) for k, v in task.shared_text.items()},
            "train-wall-seconds": time.perf_counter() - started,
        }
        log(
            INFO,
            "text round %d: %d clients, shared text %s",
            server_round,
            len(replies),
            strategy.round_log[server_round]["shared-text-lines"],
        )
        if cfg.runtime.evaluates(server_round):
            evaluate(server_round)
