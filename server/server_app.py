"""The ServerApp: builds the strategy from the run config and runs the rounds.

`flwr run .` uses `app`; `spry run` builds the same app with its command-line
overrides through `make_server_app`. Before the first round the server asks every
node which data partition it holds (node ids are random, partition ids are not), so
client sampling is a function of the seed alone. After each round it saves a
checkpoint (`server.checkpoint`); a run started with `resume` set continues from one.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from spry import protocol
from spry.config import ConfigError, ConfigValue, RunConfig
from spry.devices import plan_fleet
from spry.tasks import load_task
from strategies import STRATEGIES

from . import checkpoint
from .results import RunRecorder

DISCOVERY_TIMEOUT = 600.0


class DiscoveryError(RuntimeError):
    """The connected nodes do not form the federation the config describes."""


def discover_partitions(
    grid: Grid, num_clients: int, timeout: float = DISCOVERY_TIMEOUT
) -> dict[int, int]:
    """Node id -> partition id, asked of every node once all `num_clients` are up."""
    start = time.monotonic()
    next_log = start
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        now = time.monotonic()
        if now - start > timeout:
            raise DiscoveryError(
                f"only {len(nodes)} of {num_clients} nodes connected after "
                f"{timeout:.0f} s (`num-clients` must equal the number of SuperNodes)"
            )
        if now >= next_log:
            log(INFO, "Waiting for nodes: %d of %d connected", len(nodes), num_clients)
            next_log = now + 10
        time.sleep(0.5)
    if len(nodes) > num_clients:
        raise DiscoveryError(f"{len(nodes)} nodes connected, config says {num_clients}")
    messages = [
        Message(
            content=RecordDict({protocol.CONFIG: ConfigRecord()}),
            message_type=f"{MessageType.QUERY}.{protocol.DESCRIBE}",
            dst_node_id=node_id,
        )
        for node_id in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    partitions: dict[int, int] = {}
    for reply in replies:
        if reply.has_error():
            raise DiscoveryError(
                f"node {reply.metadata.src_node_id}: {reply.error.reason}"
            )
        metrics = reply.content[protocol.METRICS]
        if int(metrics[protocol.NUM_PARTITIONS]) != num_clients:
            raise DiscoveryError(
                f"node {reply.metadata.src_node_id} holds one of "
                f"{metrics[protocol.NUM_PARTITIONS]} partitions; "
                f"config says {num_clients}"
            )
        partitions[reply.metadata.src_node_id] = int(metrics[protocol.PARTITION_ID])
    if sorted(partitions.values()) != list(range(num_clients)):
        raise DiscoveryError(
            f"expected partitions 0..{num_clients - 1} once each, "
            f"got {sorted(partitions.values())}"
        )
    return partitions


def run_federation(grid: Grid, cfg: RunConfig) -> Path:
    """Run `cfg` on `grid`; return the results folder."""
    task = load_task(cfg)
    trainable = task.model()
    resumed = checkpoint.load(cfg.runtime.resume) if cfg.runtime.resume else None
    if resumed is None:
        recorder = RunRecorder.create(cfg, reference=task.reference_metrics())
    else:  # refused before anything is written or any client is asked
        resumed.check_config(cfg)
        resumed.check_weights(trainable.state())
        assert resumed.path is not None
        recorder = RunRecorder.reopen(
            resumed.path.parent,
            cfg,
            resumed.recorder_state,
            reference=task.reference_metrics(),
        )
    partitions = discover_partitions(grid, cfg.data.num_clients)
    log(
        INFO,
        "Discovered %d nodes holding partitions 0..%d",
        len(partitions),
        len(partitions) - 1,
    )

    strategy_cls = STRATEGIES.get(cfg.strategy.strategy)
    if strategy_cls is None:
        raise ConfigError(
            f"unknown strategy {cfg.strategy.strategy!r}; "
            f"available: {sorted(STRATEGIES)}"
        )
    head = task.head_names(trainable.names)
    fleet = plan_fleet(cfg, list(trainable.names), head)
    recorder.fleet = fleet
    strategy = strategy_cls.from_run(cfg, partitions, head, fleet=fleet)

    def evaluate_central(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if not cfg.runtime.evaluates(server_round):
            return None
        trainable.load({k: v.numpy() for k, v in arrays.items()})
        scores = task.evaluate(trainable, task.test_data())
        recorder.record(server_round, scores, strategy.round_log.get(server_round, {}))
        return MetricRecord({"accuracy": scores["accuracy"], "loss": scores["loss"]})

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower calls this last in each round: the round's records are complete
        metrics = evaluate_central(server_round, arrays)
        if cfg.runtime.checkpoints(server_round):
            save_checkpoint(server_round, arrays)
        return metrics

    def save_checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        strategy_arrays, strategy_state = strategy.checkpoint_state()
        path = checkpoint.save(
            recorder.directory / checkpoint.CHECKPOINT_FILE,
            checkpoint.Checkpoint(
                server_round=server_round,
                weights={k: v.numpy() for k, v in arrays.items()},
                config=cfg.to_mapping(),
                strategy_arrays=strategy_arrays,
                strategy_state=strategy_state,
                recorder_state=recorder.checkpoint_state(),
            ),
        )
        log(INFO, "checkpoint: saved round %d to %s", server_round, path)

    status = "failed"
    first_round = 1
    try:
        if resumed is not None:
            strategy.load_checkpoint_state(
                resumed.strategy_arrays, resumed.strategy_state
            )
            trainable.load(resumed.weights)
            if strategy.feature_center is not None:
                trainable.set_feature_center(strategy.feature_center)
            first_round = resumed.server_round + 1
            recorder.notes.setdefault("resumed-from-rounds", []).append(
                resumed.server_round
            )
            log(
                INFO,
                "resuming from round %d (%s)",
                resumed.server_round,
                resumed.path,
            )
        elif task.centers_features():
            recorder.notes["feature-center-examples"] = (
                strategy.estimate_feature_center(
                    grid, ConfigRecord(), timeout=cfg.runtime.round_timeout
                )
            )
            assert strategy.feature_center is not None
            trainable.set_feature_center(strategy.feature_center)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(
                {k: Array(v) for k, v in trainable.state().items()}
            ),
            num_rounds=cfg.runtime.num_server_rounds,
            timeout=cfg.runtime.round_timeout,
            evaluate_fn=end_of_round,
            first_round=first_round,
        )
        state = trainable.state()
        np.savez(recorder.directory / "final-weights.npz", **state)
        final = ArrayRecord({k: Array(v) for k, v in state.items()})
        if task.has_report:
            reports = strategy.task_reports(grid, final, cfg.runtime.round_timeout)
            merged = task.merge_reports(reports)
            log(INFO, "task report of %d clients: %s", len(reports), merged)
            recorder.notes["task-report"] = {**merged, "clients": len(reports)}
        trainable.load({k: v.numpy() for k, v in final.items()})
        recorder.notes.update(task.finish(trainable, recorder.directory))
        status = "completed"
    finally:
        recorder.finish(status, strategy.round_log)
        log(
            INFO,
            "[spry] results: %s (metrics.csv, plot.png, summary.json)",
            recorder.directory,
        )
    return recorder.directory


def make_server_app(overrides: Mapping[str, ConfigValue] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with `overrides`."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = RunConfig.from_run_config({**context.run_config, **(overrides or {})})
        run_federation(grid, cfg)

    return server_app


app = make_server_app()
