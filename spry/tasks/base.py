"""The task interface: everything the core needs to know about what a client learns.

The core (strategies, gradient engines, the ClientApp and ServerApp) never names a
model, a dataset or a metric: it asks the run's task. A task says
- how it builds its model and which parameters train (`build_model`; none is fine);
- how a client gets its data (`load_partition`) and the central test split;
- its loss, `loss(model, batch) -> (scalar, aux)`, which every gradient engine
  differentiates (forward-mode, zero-order and backprop alike);
- its evaluation, `evaluate`, with the metric names of its paper (plus `accuracy`
  and `loss`, the two every per-round table and plot shows);
- what a client shares besides the weights the strategy averages: a `report`
  (counts, sums, times) computed after the last round on the client's private data,
  which the server merges with `merge_reports`; and a server-side `finish` that
  works on the final model (explanations, plots) and writes into the results folder;
- or, for a task that learns in its clients' prompts rather than their weights
  (`shares_text`: tips, optimization hints), what a client does in a round with
  the server's shared text (`text_round`) and how the server merges the text the
  clients return (`merge_text`); no weights train then;
- what a client's training step holds at its peak, for device budgets: the model it
  trains and its largest batch (`probe_inputs`, with the data facts of
  `probe_context`), which the memory model (`spry.memory_model`) measures.

A worker process runs many clients over a run; `model` and `partition` build once
per process and reset/reuse, so a client's result never depends on which client
ran before it there. Tasks are found by name in the registry (`spry.tasks.registry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ConfigError, ConfigValue, Options
from ..config import build_options as _build_options
from ..engines.base import Batch
from ..models import TrainableModel, is_head
from ..seeding import STREAM_DATA, STREAM_INIT, derive_seed, numpy_rng

if TYPE_CHECKING:
    from ..config import RunConfig

Rows = Sized  # a client's examples: anything with a length that `batches` can read


@dataclass(frozen=True)
class TaskOptions(Options):
    """A task's own settings: a frozen dataclass with every default in one place.

    Set from the run config as `<task>.<option>` (`--set verix.epsilon=0.05`, or a
    `[tool.flwr.app.config.verix]` table). Validate in `__post_init__` with
    `ConfigError`, naming the option; the run fails before any process starts.
    """

    def require_at_least(self, minimum: float, *names: str) -> None:
        """ConfigError naming the first of the fields `names` below `minimum`."""
        for name in names:
            value = getattr(self, name)
            if value < minimum:
                option = name.replace("_", "-")
                raise ConfigError(
                    f"`{option}` should be at least {minimum}, got {value}"
                )


@dataclass(frozen=True)
class NoOptions(TaskOptions):
    """For tasks without settings."""


@dataclass(frozen=True)
class TextReply:
    """One client's answer in a text round: numbers and text, never its data.

    `metrics` must hold `num-examples`, the weight of the round's means; `text`
    maps a kind ("tips", "hints") to lines the server may merge.
    """

    metrics: dict[str, float]
    text: dict[str, list[str]]


@dataclass(frozen=True)
class ClientData:
    """One client's private examples: what it trains on and what it holds out."""

    train: Rows
    held_out: Rows


class Task(ABC):
    """One run's task, as a process (server or client worker) sees it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line for `spry tasks`
    Options: ClassVar[type[TaskOptions]] = NoOptions
    # Run-config keys this task is tuned for (learning rates, federation size);
    # `spry run --task` applies them under the user's method, flags and `--set`.
    run_defaults: ClassVar[Mapping[str, ConfigValue]] = {}
    # Settings this task is tuned for under one named method (no `--method`:
    # "spry"), applied over that method's presets and under the user's flags and
    # `--set`. A tuned forward-mode client step (plain SGD at a large rate) would
    # wreck backprop FedAvg, so it cannot be a `run_defaults` entry.
    method_defaults: ClassVar[Mapping[str, Mapping[str, ConfigValue]]] = {}

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        self.run = run
        self.options = options
        self._models: dict[str, TrainableModel] = {}
        self._initial: dict[str, dict[str, np.ndarray]] = {}
        self._partitions: dict[int, ClientData] = {}
        self.shared_text = {}

    # -- what a task defines ---------------------------------------------------------

    @abstractmethod
    def build_model(self, device: str) -> TrainableModel:
        """The model at the run's initial state (a function of the run's seed)."""

    @abstractmethod
    def load_partition(self, partition_id: int) -> ClientData:
        """Client `partition_id`'s data (a function of the run's seed)."""

    @abstractmethod
    def test_data(self) -> Rows:
        """The central test split the server scores the global model on."""

    @abstractmethod
    def batches(
        self,
        trainable: TrainableModel,
        rows: Rows,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        """Batches over `rows` in `order` (a permutation) or as stored, on CPU."""

    @staticmethod
    @abstractmethod
    def loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Any]:
        """The scalar every gradient engine differentiates, and a side output."""

    @abstractmethod
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Metrics over `rows`: `accuracy`, `loss`, `num-examples`, the paper's."""

    def reference_metrics(self) -> dict[str, float]:
        """Fixed points of comparison for the results (e.g. the majority class)."""
        return {}

    def seeded_model(
        self, build: Callable[[], nn.Module], device: str, tokenizer: Any = None
    ) -> TrainableModel:
        """`build()` under the run's init seed, every parameter trainable.

        The seed makes the server and every client start from the same weights.
        """
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.run.runtime.seed, STREAM_INIT))
            model = build()
        names = {name: name for name, _ in model.named_parameters()}
        return TrainableModel(
            model=model.to(device).eval(), tokenizer=tokenizer, names=names
        )

    def head_names(self, names: Iterable[str]) -> list[str]:
        """Trainable tensors every client trains (Spry's `share-head`)."""
        return [n for n in names if is_head(n)]

    def centers_features(self) -> bool:
        """Whether the server first estimates a feature center (`feature_sum`)."""
        return False

    def feature_sum(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> tuple[np.ndarray, int]:
        """Sum and count of the pooled features of `rows`, for a centred head."""
        raise NotImplementedError(f"task {self.name!r} does not centre features")

    # -- sharing beyond weights --------------------------------------------------------

    has_report: ClassVar[bool] = False

    def report(
        self, trainable: TrainableModel, partition_id: int, device: str = "cpu"
    ) -> dict[str, float]:
        """After the last round: what this client shares about its private data.

        Plain numbers (counts, sums, seconds); the data itself never leaves.
        """
        raise NotImplementedError(f"task {self.name!r} has no client report")

    def merge_reports(self, reports: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """The server's merge of the client reports (default: sums)."""
        keys = sorted({k for r in reports for k in r})
        return {k: float(sum(r.get(k, 0.0) for r in reports)) for k in keys}

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """Server-side work on the final model; files go under `results`."""
        return {}

    # -- rounds that share text, not weights ------------------------------------------

    shares_text: ClassVar[bool] = False
    # The server's current shared text (kind -> lines). The core sets it before
    # each `evaluate` and `finish` on the server; clients get it in `text_round`.
    shared_text: dict[str, list[str]]

    def initial_text(self) -> dict[str, list[str]]:
        """The shared text before round 1 (default: none)."""
        return {}

    def text_round(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        shared: Mapping[str, list[str]],
        device: str = "cpu",
    ) -> TextReply:
        """One client's round on its own partition, given the shared text."""
        raise NotImplementedError(f"task {self.name!r} does not share text")

    def merge_text(
        self,
        server_round: int,
        shared: Mapping[str, list[str]],
        replies: Sequence[TextReply],
    ) -> dict[str, list[str]]:
        """The next round's shared text from this round's replies."""
        raise NotImplementedError(f"task {self.name!r} does not share text")

    # -- memory planning (device budgets) ----------------------------------------------

    def probe_context(self) -> dict[str, ConfigValue]:
        """Facts of the run's data that `probe_inputs` needs (JSON numbers, strings).

        The memory probe builds a client in a fresh process that holds only what a
        client holds, so facts that take the whole data set to learn (the number of
        labels) are computed here, in the run's process, and handed over. They are
        part of the probe's cache key. Default: none.
        """
        return {}

    def probe_inputs(
        self, device: str, context: Mapping[str, ConfigValue]
    ) -> tuple[TrainableModel, Batch]:
        """The model a client trains and its largest batch, on `device`.

        The memory probe trains a slice of the model on this batch and reads the
        peak. Default: `build_model` and client 0's first `batch-size` training
        rows, right for tasks whose batches all have one shape; a task whose batches
        vary (text padded to its longest) returns its worst: full length.
        """
        trainable = self.build_model(device)
        rows = self.partition(0).train
        batches = self.batches(trainable, rows, batch_size=self.run.client.batch_size)
        batch = next(iter(batches), None)
        if batch is None:
            raise ConfigError(
                f"task {self.name!r}: client 0 has no training rows to size a "
                "client's memory with"
            )
        return trainable, {k: v.to(device) for k, v in batch.items()}

    # -- what the core calls -----------------------------------------------------------

    def model(
        self,
        device: str = "cpu",
        arrays: Mapping[str, np.ndarray] | None = None,
        feature_center: Sequence[float] | None = None,
    ) -> TrainableModel:
        """The process's model, reset to the initial state, then `arrays` loaded.

        A pooled head also gets the run's `feature_center` (zero when not yet set).
        """
        if device not in self._models:
            self._models[device] = self.build_model(device)
            self._initial[device] = self._models[device].state()
        trainable = self._models[device]
        trainable.load(self._initial[device])
        trainable.load(arrays or {})
        head = trainable.pooled_head
        if head is not None:
            center = (
                np.zeros(head.center.shape)
                if feature_center is None
                else feature_center
            )
            trainable.set_feature_center(center)
        return trainable

    def client_data(self, partition: Any, partition_id: int) -> ClientData:
        """A client's partition split into train and held out (the run's share)."""
        from ..data import client_split

        train, held_out = client_split(
            partition, self.run.data, seed=self.run.runtime.seed,
            partition_id=partition_id,
        )  # fmt: skip
        return ClientData(train=train, held_out=held_out)

    def partition(self, partition_id: int) -> ClientData:
        """Client `partition_id`'s data, built once per process."""
        if partition_id not in self._partitions:
            if len(self._partitions) >= 256:  # a worker may see 1000 clients
                self._partitions.pop(next(iter(self._partitions)))
            self._partitions[partition_id] = self.load_partition(partition_id)
        return self._partitions[partition_id]

    def train_batches(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        epoch: int,
        device: str = "cpu",
    ) -> Iterator[Batch]:
        """Shuffled local batches, ordered by (seed, round, client, epoch)."""
        rows = self.partition(partition_id).train
        order = numpy_rng(
            self.run.runtime.seed, STREAM_DATA, server_round, partition_id, epoch
        ).permutation(len(rows))
        for batch in self.batches(
            trainable, rows, batch_size=self.run.client.batch_size, order=order
        ):
            yield {k: v.to(device) for k, v in batch.items()}


class TextTask(Task):
    """A task that learns in its clients' prompts: rounds share text, not weights.

    The model it builds (by default none; a generator's LM for tasks that write
    text) has no trainable tensors, so there is no batch and no loss: a round is
    `text_round` on each sampled client and `merge_text` on the server
    (`server.text_rounds`), and `evaluate` scores `shared_text` on the test data.
    """

    shares_text: ClassVar[bool] = True

    def build_model(self, device: str) -> TrainableModel:
        """No model: override to build the clients' generator (nothing trains)."""
        return TrainableModel(model=nn.Module(), tokenizer=None, names={})

    def batches(
        self,
        trainable: TrainableModel,
        rows: Rows,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        return iter(())

    @staticmethod
    def loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Any]:
        raise NotImplementedError("a text task trains no weights: it has no loss")

    @abstractmethod
    def text_round(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        shared: Mapping[str, list[str]],
        device: str = "cpu",
    ) -> TextReply: ...  # fmt: skip

    @abstractmethod
    def merge_text(
        self,
        server_round: int,
        shared: Mapping[str, list[str]],
        replies: Sequence[TextReply],
    ) -> dict[str, list[str]]: ...  # fmt: skip


def tensor_batches(
    columns: Mapping[str, Tensor], batch_size: int, order: np.ndarray | None = None
) -> Iterator[Batch]:
    """Batches of the same rows of every column, in `order` (default: as stored).

    For tasks whose model reads tensors computed once (image features, a frozen
    encoder's states, pixels) rather than text to tokenize.
    """
    size = len(next(iter(columns.values())))
    index = torch.as_tensor(
        np.arange(size) if order is None else order, dtype=torch.long
    )
    for start in range(0, len(index), batch_size):
        part = index[start : start + batch_size]
        yield {name: column[part] for name, column in columns.items()}


def device_for(run: RunConfig) -> str:
    """CUDA when this process has a GPU and the run gives clients one."""
    return (
        "cuda"
        if torch.cuda.is_available() and run.runtime.client_num_gpus > 0
        else "cpu"
    )


def build_options(task: type[Task], values: Mapping[str, ConfigValue]) -> TaskOptions:
    """The task's options from `<option>` keys; errors name `<task>.<option>`."""
    return _build_options("task", task.name, task.Options, values)


class LabelledDataTask(Task):
    """A task over a labelled `datasets.Dataset` (`dataset.train`, `dataset.test`).

    Clients get flwr-datasets partitions of the train split by `label` (the run's
    `partitioner`, `alpha`, `num-clients`), each split into train and held out.
    """

    @property
    @abstractmethod
    def dataset(self) -> Any:
        """Has `train` and `test` splits (a `label` column) and `majority_rate()`."""

    def load_partition(self, partition_id: int) -> ClientData:
        from ..data import make_partitioner

        if not hasattr(self, "_partitioner"):
            self._partitioner = make_partitioner(
                self.dataset.train, self.run.data, seed=self.run.runtime.seed
            )
        partition = self._partitioner.load_partition(partition_id)
        return self.client_data(partition, partition_id)

    def test_data(self) -> Rows:
        return self.dataset.test

    def reference_metrics(self) -> dict[str, float]:
        return {"majority-rate": self.dataset.majority_rate()}
