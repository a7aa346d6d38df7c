"""Builders for Flower reply messages, as a strategy receives them from nodes."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict


def reply(
    src_node_id: int,
    arrays: Mapping[str, np.ndarray] | None,
    metrics: Mapping[str, float | int],
    message_type: str = "train",
) -> Message:
    """A reply from `src_node_id` carrying `arrays` and `metrics`."""
    content = RecordDict({"metrics": MetricRecord(dict(metrics))})
    if arrays is not None:
        content["arrays"] = ArrayRecord(
            {k: Array(np.asarray(v)) for k, v in arrays.items()}
        )
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=src_node_id,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)
