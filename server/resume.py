"""Resuming: a strategy restored from a checkpoint, started at the next round.

A part of its own so that no strategy carries "was this round restored?" checks.
Flower's `Strategy.start` has no first round, and a resumed run must keep the
round numbers (sampling and seeds are functions of them). So the loop is Flower's
own, unchanged, run by `Resumed`, a wrapper in the shape of Flower's
`dp_fixed_clipping.py`: it forwards `configure_train` and the rest to the wrapped
strategy for the rounds still to run, and for the restored ones sends nothing and
does not call `evaluate_fn`. `restore` loads a checkpoint into the strategy and the
model; `save` writes the checkpoint of a round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from spry.config import RunConfig
from spry.models import TrainableModel
from strategies.sliced_rounds import SlicedRounds

from . import checkpoint
from .results import RunRecorder

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


class Resumed(Strategy):
    """`strategy`, skipping the rounds before `first_round` (in the checkpoint).

    Parameters
    ----------
    strategy : Strategy
        The restored strategy, which runs the rounds from `first_round` on.
    first_round : int
        The first round that trains; `start`'s `initial_arrays` are the
        checkpoint's weights.
    """

    def __init__(self, strategy: Strategy, first_round: int) -> None:
        self.strategy = strategy
        self.first_round = first_round

    def _restored(self, server_round: int) -> bool:
        """Whether `server_round` ran before the checkpoint this run resumed from."""
        return server_round < self.first_round

    def summary(self) -> None:
        """The wrapped strategy's settings, and where it resumes."""
        log(INFO, "\t├──> resumed: rounds before %d are restored", self.first_round)
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Nothing for a restored round; otherwise the strategy's messages."""
        if self._restored(server_round):
            log(INFO, "configure_train: round %d is in the checkpoint", server_round)
            return []
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Nothing for a restored round; otherwise the strategy's aggregate."""
        if self._restored(server_round):
            return None, None
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Nothing for a restored round; otherwise the strategy's messages."""
        if self._restored(server_round):
            return []
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The strategy's (a restored round has no replies)."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Flower's round loop; `evaluate_fn` is not called for restored rounds."""
        return super().start(
            grid,
            initial_arrays,
            num_rounds,
            timeout,
            train_config,
            evaluate_config,
            _from_round(self.first_round, evaluate_fn),
        )


def _from_round(first_round: int, evaluate_fn: EvaluateFn | None) -> EvaluateFn | None:
    """`evaluate_fn`, not called for the rounds before `first_round`."""
    if evaluate_fn is None or first_round <= 1:
        return evaluate_fn
    evaluate = evaluate_fn

    def resumed(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        return None if server_round < first_round else evaluate(server_round, arrays)

    return resumed


def restore(
    strategy: SlicedRounds,
    trainable: TrainableModel,
    resumed: checkpoint.Checkpoint,
    recorder: RunRecorder,
) -> int:
    """Load `resumed` into the strategy and the model; the first round to run."""
    strategy.load_checkpoint_state(resumed.strategy_arrays, resumed.strategy_state)
    trainable.load(resumed.weights)
    if strategy.feature_center is not None:
        trainable.set_feature_center(strategy.feature_center)
    recorder.notes.setdefault("resumed-from-rounds", []).append(resumed.server_round)
    log(INFO, "resuming from round %d (%s)", resumed.server_round, resumed.path)
    return resumed.server_round + 1


def save(
    strategy: SlicedRounds,
    recorder: RunRecorder,
    cfg: RunConfig,
    server_round: int,
    arrays: ArrayRecord,
) -> Path:
    """Write round `server_round`'s checkpoint into the results folder."""
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
    return path
