"""The ServerApp: builds the strategy from the run config and runs the rounds.

`flwr run .` uses `app`; `spry run` builds the same app with its command-line
overrides through `make_server_app`. Before the first round the server asks every
node which data partition it holds (node ids are random, partition ids are not), so
client sampling is a function of the seed alone. After each round it saves a
checkpoint (`server.checkpoint`); a run started with `resume` set continues from one.

The ServerApp is where a strategy meets its parts, each one file in `server/`:
device budgets (`budgets.py`, the dealer), fault injection and the deadline
(`faults.py`), the second wave (`second_wave.py`), resuming (`resume.py`) and the
queries before the first and after the last round (`queries.py`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
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

import strategies
from spry import protocol
from spry.config import ConfigValue, RunConfig
from spry.devices import Fleet, plan_fleet
from spry.models import TrainableModel
from spry.resolve import resolve
from spry.tasks import Task, load_task
from strategies import SlicedRounds

from . import checkpoint, queries, resume, text_rounds
from .budgets import BudgetDealer
from .faults import FaultInjection
from .results import RunRecorder
from .second_wave import SecondWave

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
    recorder, resumed = _open_records(cfg, task, trainable)
    partitions = discover_partitions(grid, cfg.data.num_clients)
    log(
        INFO,
        "Discovered %d nodes holding partitions 0..%d",
        len(partitions),
        len(partitions) - 1,
    )
    head = task.head_names(trainable.names)
    fleet = plan_fleet(cfg, list(trainable.names), head, task)
    recorder.fleet = fleet
    strategy = compose_strategy(cfg, partitions, head, fleet)

    def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        # Flower calls this last in each round: the round's records are complete
        metrics = None
        if cfg.runtime.evaluates(server_round):
            trainable.load({k: v.numpy() for k, v in arrays.items()})
            scores = task.evaluate(trainable, task.test_data())
            entry = strategy.round_log.get(server_round, {})
            recorder.record(server_round, scores, entry)
            metrics = MetricRecord({k: scores[k] for k in ("accuracy", "loss")})
        if cfg.runtime.checkpoints(server_round):
            resume.save(strategy, recorder, cfg, server_round, arrays)
        return metrics

    status = "failed"
    if task.shares_text:  # no weights train: the rounds exchange text
        if cfg.runtime.resume:
            raise ValueError(f"task {task.name!r} shares text; it cannot resume")

        def evaluate_text(server_round: int) -> None:
            scores = task.evaluate(trainable, task.test_data())
            entry = strategy.round_log.get(server_round, {})
            recorder.record(server_round, scores, entry)

        try:
            text_rounds.run_text_rounds(grid, cfg, task, strategy, evaluate_text)
            recorder.notes["shared-text"] = task.shared_text
            recorder.notes.update(task.finish(trainable, recorder.directory))
            status = "completed"
        finally:
            recorder.finish(status, strategy.round_log)
        return recorder.directory
    try:
        first_round = _before_round_one(
            grid, cfg, task, trainable, strategy, recorder, resumed
        )
        runner = strategy if first_round == 1 else resume.Resumed(strategy, first_round)
        runner.start(
            grid=grid,
            initial_arrays=_record(trainable.state()),
            num_rounds=cfg.runtime.num_server_rounds,
            timeout=cfg.runtime.round_timeout,
            evaluate_fn=end_of_round,
        )
        _after_last_round(grid, cfg, task, trainable, strategy, recorder)
        status = "completed"
    finally:
        recorder.finish(status, strategy.round_log)
        log(
            INFO,
            "[spry] results: %s (metrics.csv, plot.png, summary.json)",
            recorder.directory,
        )
    return recorder.directory


def compose_strategy(
    cfg: RunConfig, partitions: Mapping[int, int], head: Sequence[str], fleet: Fleet
) -> SlicedRounds:
    """The run's strategy with its parts: budgets, faults, the second wave.

    The strategy builds its own options from `cfg` (`<strategy>.<option>` keys).
    """
    return strategies.get(cfg.strategy.strategy).from_run(
        cfg,
        partitions,
        head,
        dealer=BudgetDealer(fleet),
        faults=FaultInjection.from_run(cfg),
        second_wave=SecondWave.from_run(cfg),
    )


def _open_records(
    cfg: RunConfig, task: Task, trainable: TrainableModel
) -> tuple[RunRecorder, checkpoint.Checkpoint | None]:
    """A new results folder, or the resumed run's (refused before any work)."""
    if not cfg.runtime.resume:
        return RunRecorder.create(cfg, reference=task.reference_metrics()), None
    resumed = checkpoint.load(cfg.runtime.resume)
    resumed.check_config(cfg)
    resumed.check_weights(trainable.state())
    assert resumed.path is not None
    recorder = RunRecorder.reopen(
        resumed.path.parent,
        cfg,
        resumed.recorder_state,
        reference=task.reference_metrics(),
    )
    return recorder, resumed


def _before_round_one(
    grid: Grid,
    cfg: RunConfig,
    task: Task,
    trainable: TrainableModel,
    strategy: SlicedRounds,
    recorder: RunRecorder,
    resumed: checkpoint.Checkpoint | None,
) -> int:
    """Restore a checkpoint or centre the features; the first round to run."""
    if resumed is not None:
        return resume.restore(strategy, trainable, resumed, recorder)
    if task.centers_features():
        recorder.notes["feature-center-examples"] = queries.estimate_feature_center(
            strategy, grid, ConfigRecord(), timeout=cfg.runtime.round_timeout
        )
        assert strategy.feature_center is not None
        trainable.set_feature_center(strategy.feature_center)
    return 1


def _after_last_round(
    grid: Grid,
    cfg: RunConfig,
    task: Task,
    trainable: TrainableModel,
    strategy: SlicedRounds,
    recorder: RunRecorder,
) -> None:
    """Save the final weights, ask for the task reports, let the task finish."""
    state = trainable.state()
    np.savez(recorder.directory / "final-weights.npz", **state)
    final = _record(state)
    if task.has_report:
        reports = queries.task_reports(strategy, grid, final, cfg.runtime.round_timeout)
        merged = task.merge_reports(reports)
        log(INFO, "task report of %d clients: %s", len(reports), merged)
        recorder.notes["task-report"] = {**merged, "clients": len(reports)}
    trainable.load({k: v.numpy() for k, v in final.items()})
    recorder.notes.update(task.finish(trainable, recorder.directory))


def _record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in state.items()})


def make_server_app(overrides: Mapping[str, ConfigValue] | None = None) -> ServerApp:
    """A ServerApp whose run config is Flower's, updated with `overrides`."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # the library's resolving step, then the strategy's options (above it)
        cfg = strategies.resolve(resolve({**context.run_config, **(overrides or {})}))
        run_federation(grid, cfg)

    return server_app


app = make_server_app()
