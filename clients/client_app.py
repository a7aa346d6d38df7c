"""The ClientApp: trains the slice it is sent, evaluates the model it is sent.

The same app runs inside Flower's simulation engine and as a SuperNode on a device.
Everything it needs to know about the run arrives in each message's ConfigRecord;
the only local facts are its partition id (node config) and its hardware. What it
learns (model, data, loss, metrics) is the run's task (`spry.tasks`).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from spry import protocol
from spry.config import RunConfig
from spry.engines import FiniteDifference, GradientEngine
from spry.engines.selection import CosineRankedDirections
from spry.eval_finetune import finetune_and_score
from spry.faults import CRASH, InjectedFault
from spry.memory import StepPeaks, live_allocator, make_resident
from spry.models import TrainableModel
from spry.tasks import Task, device_for, load_task
from spry.training import (
    TrainReport,
    estimate_one_batch,
    make_client_engine,
    mask_seed,
    train_slice,
    warm_up,
)

app = ClientApp()
# (engine, device) pairs this process has run once: their kernels and lazy state
# are resident, so a step's measured peak no longer holds them (`warm_up`)
_WARMED: set[tuple[str, str]] = set()


def _partition(context: Context) -> tuple[int, int]:
    node = context.node_config
    return int(node[protocol.PARTITION_ID]), int(node[protocol.NUM_PARTITIONS])


def _run_config(msg: Message) -> RunConfig:
    # The message also carries per-message fields (round, slice, seeds): keep the
    # run's own keys. The server built them from a valid RunConfig.
    known = set(RunConfig.keys())
    values = {
        k: v
        for k, v in msg.content[protocol.CONFIG].items()
        if k in known or "." in k  # `<task>.<option>`, `<strategy>.<option>`
    }
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


def _feature_center(msg: Message) -> list[float] | None:
    center = msg.content[protocol.CONFIG].get(protocol.FEATURE_CENTER)
    return None if center is None else list(center)


@app.query(protocol.FEATURE_STATS)
def feature_stats(msg: Message, context: Context) -> Message:
    """Sum and count of this client's pooled features, under the initial model.

    The server averages them into the feature center a pooled head subtracts.
    """
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    task, device = load_task(cfg), device_for(cfg)
    total, count = task.feature_sum(
        task.model(device), task.partition(partition_id).train, device
    )
    return Message(
        RecordDict(
            {
                protocol.FEATURE_SUM: ArrayRecord({protocol.FEATURE_SUM: Array(total)}),
                protocol.METRICS: MetricRecord({protocol.NUM_EXAMPLES: count}),
            }
        ),
        reply_to=msg,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train (or, when the message says one step, estimate on one batch) the slice.

    The client knows no strategy: a one-estimate-a-round strategy (the FedSGD
    family) marks its messages `protocol.ONE_STEP`; otherwise it trains local
    epochs. The reply carries only the slice: its trained weights, its gradient,
    or, with `upload-scalars`, each step's K scalars, from which the server
    rebuilds either.
    """
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    fields = msg.content[protocol.CONFIG]
    server_round = int(fields[protocol.SERVER_ROUND])
    if fields.get(protocol.FAULT) == CRASH:
        raise InjectedFault(
            f"{InjectedFault.MARKER}: crash (partition {partition_id}, "
            f"round {server_round})"
        )
    names = list(fields[protocol.TRAINABLE_NAMES])
    task, device = load_task(cfg), device_for(cfg)
    trainable = task.model(
        device,
        {**_arrays(msg, protocol.CONTEXT), **_arrays(msg, protocol.ARRAYS)},
        _feature_center(msg),
    )
    guess = {  # the previous global update over the slice (`tangent-guess`)
        trainable.own_name(n): torch.tensor(t, device=device)
        for n, t in _arrays(msg, protocol.GUESS).items()
    }
    engine = make_client_engine(cfg.client, guess)
    task.partition(partition_id)  # build the partition outside the measured steps
    client = _Client(task, partition_id, device)
    # The step's own peak, measured as the memory benchmark measures it: every
    # weight resident, freed memory handed back, one baseline, then each step
    live = device != "cpu" or live_allocator()  # CPU: the allocator returns frees
    make_resident(trainable.model)
    _warm_up_once(cfg, client, trainable, names, engine, server_round)
    peaks = StepPeaks(device)
    peaks.start()
    started = time.perf_counter()
    if fields.get(protocol.ONE_STEP, False):
        tensors, report = _estimate(msg, cfg, client, trainable, names, engine, peaks)
    else:
        tensors, report = _train(
            cfg, client, trainable, names, engine, server_round, peaks
        )
    seconds = time.perf_counter() - started
    if cfg.strategy.upload_scalars:
        upload = ArrayRecord(
            {"scalars": Array(np.asarray(report.scalars, dtype=np.float64))}
        )
        key = protocol.SCALARS
    else:
        upload = ArrayRecord({n: Array(t) for n, t in tensors.items()})
        key = protocol.ARRAYS
    metrics = MetricRecord(
        {
            protocol.NUM_EXAMPLES: report.num_examples,
            protocol.TRAIN_LOSS: report.mean_loss,
            protocol.STEPS: report.steps,
            protocol.FORWARD_PASSES: report.forward_passes,
            protocol.TRAIN_SECONDS: seconds,
            protocol.PEAK_MEM_BYTES: peaks.extra_bytes,
            protocol.PEAK_MEM_TOTAL_BYTES: peaks.peak_bytes,
            protocol.PEAK_STEP_TOKENS: peaks.tokens,
            protocol.LIVE_ALLOCATOR: int(live),
            protocol.PARTITION_ID: partition_id,
        }
    )
    return Message(RecordDict({key: upload, protocol.METRICS: metrics}), reply_to=msg)


class _Client(NamedTuple):
    task: Task
    partition_id: int
    device: str


def _warm_up_once(
    cfg: RunConfig,
    client: _Client,
    trainable: TrainableModel,
    names: list[str],
    engine: GradientEngine,
    server_round: int,
) -> None:
    """The process's first run of this engine, on a tiny cut of a real batch.

    As the memory benchmark warms up before its baseline (`spry.training.warm_up`);
    without it the first client a worker trains would count torch's start-up
    (kernel code paged in, lazy allocations) in its step peak. Once per process.
    """
    task, partition_id, device = client
    key = (cfg.client.engine, device)
    if key in _WARMED or not names:
        return
    batches = task.train_batches(trainable, partition_id, server_round, 0, device)
    batch = next(batches, None)
    if batch is not None:  # an empty partition: warm up with the next client
        warm_up(trainable, names, batch, loss=task.loss, engine=engine)
        _WARMED.add(key)


def _train(
    cfg: RunConfig,
    client: _Client,
    trainable: TrainableModel,
    names: list[str],
    engine: GradientEngine,
    server_round: int,
    peaks: StepPeaks,
) -> tuple[dict[str, np.ndarray], TrainReport]:
    """Local epochs on the slice, each step tracked by `peaks`; the trained slice."""
    task, partition_id, device = client
    report = train_slice(
        trainable,
        names,
        lambda epoch: task.train_batches(
            trainable, partition_id, server_round, epoch, device
        ),
        loss=task.loss,
        engine=engine,
        cfg=cfg.client.at_round(server_round, cfg.runtime.num_server_rounds),
        seed=cfg.runtime.seed,
        server_round=server_round,
        partition_id=partition_id,
        peaks=peaks,
    )
    live = trainable.parameters()
    return {n: _numpy(live[n]) for n in names}, report


def _estimate(
    msg: Message,
    cfg: RunConfig,
    client: _Client,
    trainable: TrainableModel,
    names: list[str],
    engine: GradientEngine,
    peaks: StepPeaks,
) -> tuple[dict[str, np.ndarray], TrainReport]:
    """One estimate on one batch, along the directions the server's seed names.

    The batch is the first of round `data-round`'s order; `peaks` tracks the
    estimate.
    """
    task, partition_id, device = client
    fields = msg.content[protocol.CONFIG]
    batch = next(
        task.train_batches(
            trainable, partition_id, int(fields[protocol.DATA_ROUND]), 0, device
        ),
        None,
    )
    if batch is None:  # an empty partition: the server drops a 0-example reply
        return {}, TrainReport(num_examples=0, steps=0, mean_loss=0.0)
    target = _arrays(msg, protocol.TARGET)
    if target and isinstance(engine, FiniteDifference):
        engine.directions = CosineRankedDirections(
            {trainable.own_name(n): t for n, t in target.items()},
            seed=int(fields[protocol.SELECT_SEED]),
            index=int(fields[protocol.SELECT_INDEX]),
            count=int(fields[protocol.SELECT_COUNT]),
        )
    generator = torch.Generator().manual_seed(int(fields[protocol.DIRECTION_SEED]))
    masks = mask_seed(
        cfg.runtime.seed, int(fields[protocol.SERVER_ROUND]), partition_id, 0
    )
    grads, estimate = estimate_one_batch(
        trainable,
        names,
        batch,
        loss=task.loss,
        engine=engine,
        generator=generator,
        masks=masks if cfg.client.dropout else None,
        peaks=peaks,
    )
    report = TrainReport(
        num_examples=len(next(iter(batch.values()))),
        steps=1,
        mean_loss=float(estimate.loss),
        forward_passes=estimate.forward_passes,
        scalars=(estimate.projected,),
    )
    return {n: _numpy(g) for n, g in grads.items()}, report


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received model on this client's held-out examples.

    With `eval-finetune-epochs` N > 0 the reply also carries the paper's metric:
    the held-out scores after N local epochs of fine-tuning on the client's own
    training part (`spry.eval_finetune`). The fine-tuning changes the process's
    model only for this call: it is reset to the received arrays before returning.
    """
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    task, device = load_task(cfg), device_for(cfg)
    arrays, center = _arrays(msg, protocol.ARRAYS), _feature_center(msg)
    trainable = task.model(device, arrays, center)
    scores = task.evaluate(trainable, task.partition(partition_id).held_out, device)
    metrics = MetricRecord(
        {
            protocol.ACCURACY: scores["accuracy"],
            protocol.LOSS: scores["loss"],
            protocol.NUM_EXAMPLES: int(scores["num-examples"]),
        }
    )
    epochs = cfg.strategy.eval_finetune_epochs
    if epochs and scores["num-examples"]:  # nothing held out: nothing to score
        server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
        try:
            tuned, _ = finetune_and_score(
                task,
                trainable,
                partition_id,
                epochs=epochs,
                server_round=server_round,
                device=device,
            )
        finally:
            task.model(device, arrays, center)  # the global model again, as sent
        metrics[protocol.FINETUNED_ACCURACY] = tuned["accuracy"]
        metrics[protocol.FINETUNED_LOSS] = tuned["loss"]
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


@app.query(protocol.TASK_REPORT)
def task_report(msg: Message, context: Context) -> Message:
    """After the last round: the task's report on this client's private data."""
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    task, device = load_task(cfg), device_for(cfg)
    trainable = task.model(device, _arrays(msg, protocol.ARRAYS), _feature_center(msg))
    report = task.report(trainable, partition_id, device)
    metrics = MetricRecord(
        {
            **{k: float(v) for k, v in report.items()},
            protocol.PARTITION_ID: partition_id,
        }
    )
    return Message(RecordDict({protocol.METRICS: metrics}), reply_to=msg)


@app.query(protocol.TEXT_ROUND)
def text_round(msg: Message, context: Context) -> Message:
    """A round of a task that shares text: work with it, return numbers and text."""
    cfg = _run_config(msg)
    partition_id, _ = _partition(context)
    task, device = load_task(cfg), device_for(cfg)
    server_round = int(msg.content[protocol.CONFIG][protocol.SERVER_ROUND])
    shared = {k: list(v) for k, v in msg.content[protocol.TEXT].items()}
    reply = task.text_round(
        task.model(device), partition_id, server_round, shared, device
    )
    metrics = MetricRecord(
        {
            **{k: float(v) for k, v in reply.metrics.items()},
            protocol.PARTITION_ID: partition_id,
        }
    )
    text = ConfigRecord({k: [str(x) for x in v] for k, v in reply.text.items()})
    return Message(
        RecordDict({protocol.METRICS: metrics, protocol.TEXT: text}), reply_to=msg
    )
