"""Free functions the strategies share (Flower's `strategy_utils.py` in spirit).

Sampling by partition, reply ordering, the training-metrics summary and the gist of
a client's error: pure functions of their arguments, no strategy state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from flwr.app import Message, MetricRecord, RecordDict

from spry import protocol
from spry.splitting import sample_clients


def by_partition(partitions: Mapping[int, int]) -> list[int]:
    """Node ids in partition order (sampling indexes this list)."""
    return [n for n, _ in sorted(partitions.items(), key=lambda kv: kv[1])]


def sample_nodes(
    seed: int, draw: int, count: int, population: Sequence[int]
) -> list[int]:
    """`count` of `population` (in partition order), drawn from (seed, draw).

    The draw order is the deal order; `draw` is a `spry.seeding.SAMPLE_*` offset
    plus the round.
    """
    picks = sample_clients(seed, draw, count, len(population))
    return [population[i] for i in picks]


def in_partition_order(
    replies: Iterable[Message], partitions: Mapping[int, int]
) -> list[Message]:
    """Replies sorted by partition: float sums must not depend on arrival order."""
    return sorted(replies, key=lambda r: partitions.get(r.metadata.src_node_id, -1))


def gist(reason: str) -> str:
    """The line of a client's error that says what went wrong (not the stack)."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Message:" in line:
            return line.split("Message:", 1)[1].strip()[:300]
    return lines[-1][:300] if lines else "(no reason given)"


def evaluate_metrics(records: list[RecordDict]) -> MetricRecord:
    """Each metric's example-weighted mean over the replies that report it.

    With every key in every reply this is Flower's `aggregate_metricrecords`,
    number for number (same order of operations); a key some replies leave out
    (the fine-tuned scores, when a client has none) is averaged over the others,
    not diluted by them.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    keys = [k for m in metrics for k in m if k != protocol.NUM_EXAMPLES]
    aggregated = MetricRecord()
    for key in dict.fromkeys(keys):  # first-seen order
        having = [m for m in metrics if key in m]
        total = sum(float(m[protocol.NUM_EXAMPLES]) for m in having)
        value = 0.0
        for i, m in enumerate(having):
            term = m[key] * (float(m[protocol.NUM_EXAMPLES]) / total)
            value = term if i == 0 else value + term
        aggregated[key] = value
    return aggregated


def train_metrics(records: list[RecordDict]) -> MetricRecord:
    """Weighted mean of losses and times; max of peak memory; total examples.

    The step peak is the largest client's (its batch length beside it); the
    allocator flag is the smallest, so one client measured without the live
    allocator marks the round's peak as not comparable.
    """
    metrics = [next(iter(r.metric_records.values())) for r in records]
    # The loss's weighted mean over the replies that report one (all keys were
    # checked: numbers, finite, known; a reply may leave optional ones out).
    losses = [
        (float(m[protocol.TRAIN_LOSS]), float(m[protocol.NUM_EXAMPLES]))
        for m in metrics
        if protocol.TRAIN_LOSS in m
    ]
    loss = sum(v * w for v, w in losses) / sum(w for _, w in losses) if losses else 0.0

    def largest(key: str) -> int:
        return max(int(m.get(key, 0)) for m in metrics)

    peak = max(metrics, key=lambda m: int(m.get(protocol.PEAK_MEM_BYTES, 0)))

    return MetricRecord(
        {
            protocol.TRAIN_LOSS: loss,
            "train-seconds-max": max(
                float(m.get(protocol.TRAIN_SECONDS, 0.0)) for m in metrics
            ),
            "peak-mem-bytes-max": largest(protocol.PEAK_MEM_BYTES),
            "peak-mem-total-bytes-max": largest(protocol.PEAK_MEM_TOTAL_BYTES),
            "peak-step-tokens": int(peak.get(protocol.PEAK_STEP_TOKENS, 0)),
            "live-allocator-min": min(
                int(m.get(protocol.LIVE_ALLOCATOR, 0)) for m in metrics
            ),
            "clients": len(metrics),
            "forward-passes": sum(
                int(m.get(protocol.FORWARD_PASSES, 0)) for m in metrics
            ),
            protocol.NUM_EXAMPLES: sum(int(m[protocol.NUM_EXAMPLES]) for m in metrics),
        }
    )
