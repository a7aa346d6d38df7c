"""Test helpers: Flower reply messages as a strategy receives them, a tiny model,
a strict JSON reader."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    Context,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from torch import nn


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
    return Message(content=content, metadata=_metadata(src_node_id, message_type))


def error_reply(src_node_id: int, reason: str, message_type: str = "train") -> Message:
    """An error reply from `src_node_id`, as Flower sends when a ClientApp raises."""
    error = Error(code=0, reason=reason)
    return Message(error=error, metadata=_metadata(src_node_id, message_type))


def _metadata(src_node_id: int, message_type: str) -> Metadata:
    return Metadata(
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


class TinyMLP(nn.Module):
    """A 4-3-2 tanh MLP (23 parameters) with fixed weights, for engine tests."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(4, 3)
        self.l2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


def mlp_loss(model, batch):
    """Cross-entropy of TinyMLP's logits; the logits are the side output."""
    logits = model(batch["x"])
    return nn.functional.cross_entropy(logits, batch["labels"]), logits


def _refuse(constant: str) -> Any:
    raise ValueError(f"not valid JSON: {constant}")


def strict_json(path: Path) -> Any:
    """The JSON file at `path`, refusing Python's extensions Infinity and NaN.

    Python's json module writes and reads them by default; most other readers
    (browsers, jq, JSON.parse) reject the whole file.
    """
    return json.loads(path.read_text(), parse_constant=_refuse)


SMALL_RUN_NODES = {10 + p: p for p in range(4)}  # node id -> partition


def small_run(**settings: Any) -> Any:
    """A resolved run config of 4 IID clients, 2 a round, on 64 training examples.

    Small enough for the real ClientApp to train a message in a test (see
    `answer`, with `SMALL_RUN_NODES`); `settings` are config keys, as in
    pyproject ("lr-decay": "linear" is passed as lr_decay="linear").
    """
    import strategies
    from spry.resolve import resolve

    base = {
        "num-clients": 4,
        "clients-per-round": 2,
        "eval-clients-per-round": 1,
        "partitioner": "iid",
        "max-train-examples": 64,
        "client-eval-fraction": 0.0,
    }
    overrides = {key.replace("_", "-"): value for key, value in settings.items()}
    return strategies.resolve(resolve({**base, **overrides}))


def answer(
    app: Any, message: Message, partitions: Mapping[int, int], num_partitions: int
) -> Message:
    """The real ClientApp's reply to `message` on the node it is addressed to.

    The node holds partition `partitions[node]` of `num_partitions`; a reply with
    an error fails the test with the client's traceback.
    """
    from spry import protocol

    node = message.metadata.dst_node_id
    context = Context(
        run_id=1,
        node_id=node,
        node_config={
            protocol.PARTITION_ID: partitions[node],
            "num-partitions": num_partitions,
        },
        state=RecordDict(),
        run_config={},
    )
    reply = app(message, context)
    assert not reply.has_error(), reply.error
    return reply


def tiny_llama(vocab_size: int) -> Any:
    """A random 2-layer Llama shape (hidden 32, grouped-query attention) for tests."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
