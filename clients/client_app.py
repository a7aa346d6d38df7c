"""The ClientApp: trains the slice it is sent, evaluates the model it is sent.

The same app runs inside Flower's simulation engine and as a SuperNode on a device.
Everything it needs to know about the run arrives in each message's ConfigRecord;
the only local facts are its partition id (node config) and its hardware.
"""

from __future__ import annotations

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.tasks import load_task
from spry import protocol
from spry.config import RunConfig
from spry.engines import make_engine
from spry.memory import track_peak_memory
from spry.training import train_slice

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    node = context.node_config
    return int(node[protocol.PARTITION_ID]), int(node[protocol.NUM_PARTITIONS])


def _run_config(msg: Message) -> RunConfig:
    values = dict(msg.content[protocol.CONFIG])
    values.pop(protocol.TRAINABLE_NAMES, None)
    cfg = RunConfig.from_run_config(values)
    torch.set_num_threads(cfg.runtime.client_num_cpus)
    return cfg


def _arrays(msg: Message, key: str) -> dict:
    record = msg.content.array_records.get(key)
    return {} if record is None else {k: v.numpy() for k, v in record.items()}


@app.query(protocol.DESCRIBE)
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (node ids are random)."""
    partition_id, num_partitions = _partition(context)
    metrics = MetricRecord(
        {protocol.PARTITION_ID: partition_id, protocol.NUM_PARTITIONS: num_partitions}
    )
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received slice with the configured engine; return only the slice."""
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    names = list(msg.content[protocol.CONFIG][protocol.TRAINABLE_NAMES])
    task = load_task(cfg, partition_id)
    trainable = task.model(
        {**_arrays(msg, protocol.CONTEXT), **_arrays(msg, protocol.ARRAYS)}
    )
    engine = make_engine(cfg.client.engine, **cfg.client.engine_options())
    _ = task.train_data  # build the partition outside the measured block
    with track_peak_memory(task.device) as memory:
        report = train_slice(
            trainable,
            names,
            lambda epoch: task.batches(trainable, server_round, epoch),
            loss=task.loss,
            engine=engine,
            cfg=cfg.client,
            seed=cfg.runtime.seed,
            server_round=server_round,
            partition_id=partition_id,
        )
    live = trainable.parameters()
    arrays = ArrayRecord(
        {n: Array(live[n].detach().to("cpu", torch.float32).numpy()) for n in names}
    )
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: report.num_examples,
            protocol.TRAIN_LOSS: report.mean_loss,
            protocol.STEPS: report.steps,
            protocol.FORWARD_PASSES: report.forward_passes,
            protocol.TRAIN_SECONDS: memory.seconds,
            protocol.PEAK_MEM_BYTES: memory.extra_bytes,
            protocol.PEAK_MEM_TOTAL_BYTES: memory.peak_bytes,
            protocol.PARTITION_ID: partition_id,
        }
    )
    content = RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: metrics})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on this client's held-out examples."""
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    task = load_task(cfg, partition_id)
    trainable = task.model(_arrays(msg, protocol.ARRAYS))
    scores = task.evaluate(trainable)
    metrics = MetricRecord(
        {
            protocol.ACCURACY: scores["accuracy"],
            protocol.LOSS: scores["loss"],
            protocol.NUM_EXAMPLES: int(scores["num-examples"]),
        }
    )
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)
