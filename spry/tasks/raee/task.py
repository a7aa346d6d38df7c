"""RAEE as a client-side task: early exit guided by each client's private database.

RAEE (Huang et al., 2024) exits a layered model at the layer that similar, already
seen examples say is enough. Here the backbone is the run's frozen encoder
(all-MiniLM-L6-v2, 6 layers) and the exits are one linear head per layer on that
layer's mean-pooled state. The exits are the only weights; Spry trains them
federatedly (each head a tensor group, so different clients train different
layers' exits), with the encoder frozen, so its per-layer states are computed once
per example and cached.

After the last round each client, on its own data only (`report`):
1. labels its training examples with the earliest exit that predicts them correctly
   (`retrieval.earliest_correct_layer`) and indexes them by a cheap query
   embedding, the mean-pooled token embeddings (layer 0: no transformer layer runs
   before the decision);
2. for each held-out example, retrieves k = 12 neighbours, takes the layer with the
   highest inverse-distance-weighted vote, runs the encoder only that far
   (`forward_to_layer`) and predicts with that layer's exit;
3. shares counts and seconds, never examples: correct answers of RAEE, of the full
   model (last exit) and of every fixed-layer exit, the summed exit layer, and the
   wall time of the RAEE pass and of the full pass over the same examples.
The server merges them into accuracy, average exit layer and speed-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...classification import tokenize
from ...config import RunConfig
from ...engines.base import Batch
from ...models import TrainableModel, resolve_model_path
from ..base import Task, TaskOptions, tensor_batches
from ..classification import ClassificationTask
from .layers import forward_to_layer, layer_states
from .retrieval import RetrievalDatabase, earliest_correct_layer


@dataclass(frozen=True)
class RaeeOptions(TaskOptions):
    """RAEE's settings: neighbours retrieved, and the timed batch size."""

    k: int = field(default=12, metadata={"help": "neighbours retrieved (paper: 12)"})
    timing_batch: int = field(
        default=16, metadata={"help": "held-out examples per timed inference batch"}
    )

    def __post_init__(self) -> None:
        self.require_at_least(1, "k", "timing_batch")


class LayerExits(nn.Module):
    """One linear exit per layer, each on its layer's normalised pooled state."""

    def __init__(self, num_layers: int, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.exits = nn.ModuleList(
            nn.Linear(hidden, num_labels) for _ in range(num_layers)
        )

    def forward(self, states: Tensor) -> Tensor:
        """(B, L + 1, H) states after embeddings and each layer -> (B, L, C) logits."""
        return torch.stack(
            [head(_normalise(states[:, i + 1])) for i, head in enumerate(self.exits)],
            dim=1,
        )

    def exit_logits(self, state: Tensor, layer: int) -> Tensor:
        """Logits of exit `layer` (1..L) from that layer's pooled state (B, H)."""
        return self.exits[layer - 1](_normalise(state))


def _normalise(state: Tensor) -> Tensor:
    # Pooled states of different layers differ in scale by 10x; a parameter-free
    # layer norm gives every exit the same footing and the forward gradient a
    # well-conditioned start.
    return F.layer_norm(state, state.shape[-1:])


def exits_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """Mean over exits of their cross-entropy; every exit learns the same labels."""
    logits = model(batch["states"])  # (B, L, C)
    labels = batch["labels"]
    per_exit = [F.cross_entropy(logits[:, i], labels) for i in range(logits.shape[1])]
    return torch.stack(per_exit).mean(), logits


class RaeeTask(ClassificationTask):
    """Per-layer exits trained with Spry; retrieval-guided exit on each client."""

    name: ClassVar[str] = "raee"
    summary: ClassVar[str] = (
        "RAEE early exit: per-layer exits (Spry) + a private k-NN exit database "
        "(accuracy, average exit layer, speed-up)"
    )
    Options = RaeeOptions
    # Linear exits on cached states: 16 tangents cost little, and the per-coordinate
    # server step of Yogi (0.03 a round) swamps weights of this scale; measured in
    # benchmarks/results/task_raee.md
    run_defaults: ClassVar[dict[str, Any]] = {
        "num-tangents": 16,
        "server-optimizer": "avg",
        "local-epochs": 5,
        "lr": 0.003,
    }
    has_report: ClassVar[bool] = True
    loss = staticmethod(exits_loss)  # type: ignore[assignment]

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        super().__init__(run, options)
        self._encoder: tuple[nn.Module, Any] | None = None
        self._states: dict[str, Tensor] = {}

    # -- the frozen backbone ---------------------------------------------------------

    def encoder(self) -> tuple[nn.Module, Any]:
        """The frozen encoder and its tokenizer, loaded once per process."""
        if self._encoder is None:
            from transformers import AutoModel, AutoTokenizer

            from ...models.classifier import _quiet_transformers

            _quiet_transformers()
            path = resolve_model_path(self.run.model.model)
            encoder = AutoModel.from_pretrained(path, attn_implementation="eager")
            self._encoder = (encoder.eval(), AutoTokenizer.from_pretrained(path))
        return self._encoder

    @property
    def num_layers(self) -> int:
        return int(self.encoder()[0].config.num_hidden_layers)

    def _tokens(
        self, rows: datasets.Dataset, index: Sequence[int]
    ) -> dict[str, Tensor]:
        _, tokenizer = self.encoder()
        texts, labels = rows["text"], rows["label"]
        return tokenize(
            tokenizer,
            [texts[i] for i in index],
            [labels[i] for i in index],
            self.run.model.max_length,
        )

    def states(self, rows: datasets.Dataset) -> Tensor:
        """(N, L + 1, H) pooled states of every example of `rows`, cached."""
        key = rows._fingerprint
        if key not in self._states:
            encoder, _ = self.encoder()
            parts = []
            size = self.run.client.eval_batch_size
            for start in range(0, len(rows), size):
                batch = self._tokens(rows, range(start, min(start + size, len(rows))))
                parts.append(
                    layer_states(
                        encoder, batch["input_ids"], batch["attention_mask"]
                    ).transpose(0, 1)
                )
            hidden = encoder.config.hidden_size
            empty = torch.zeros(0, self.num_layers + 1, hidden)
            self._states[key] = torch.cat(parts) if parts else empty
        return self._states[key]

    # -- the task interface ------------------------------------------------------------

    def build_model(self, device: str) -> TrainableModel:
        encoder, tokenizer = self.encoder()
        hidden, labels = encoder.config.hidden_size, self.dataset.num_labels
        return self.seeded_model(
            lambda: LayerExits(self.num_layers, hidden, labels), device, tokenizer
        )

    def head_names(self, names: Sequence[str]) -> list[str]:
        return []  # every exit is a group of its own; none is shared by all clients

    # Batches are cached pooled states, all of one shape: the generic probe (the
    # exits, client 0's first batch), not the classifier's full-length sentences
    probe_context = Task.probe_context
    probe_inputs = Task.probe_inputs

    def centers_features(self) -> bool:
        return False

    def batches(
        self,
        trainable: TrainableModel,
        rows: datasets.Dataset,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        labels = torch.as_tensor(rows["label"], dtype=torch.long)
        columns = {"states": self.states(rows), "labels": labels}
        yield from tensor_batches(columns, batch_size, order)

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: datasets.Dataset, device: str = "cpu"
    ) -> dict[str, float]:
        """`accuracy` of the full model (last exit), mean exit `loss`, per exit."""
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        batch = next(self.batches(trainable, rows, batch_size=len(rows)))
        loss, logits = exits_loss(trainable.model, batch)
        correct = logits.argmax(-1) == batch["labels"][:, None]  # (N, L)
        per_exit = correct.float().mean(0)
        return {
            "accuracy": float(per_exit[-1]),
            "loss": float(loss),
            "num-examples": len(rows),
            **{f"exit-{i + 1}-accuracy": float(a) for i, a in enumerate(per_exit)},
        }

    # -- the client's report: its private database, used on its held-out examples ----

    @torch.no_grad()
    def report(
        self, trainable: TrainableModel, partition_id: int, device: str = "cpu"
    ) -> dict[str, float]:
        data = self.partition(partition_id)
        exits: LayerExits = trainable.model  # type: ignore[assignment]
        train, held_out = data.train, data.held_out
        if len(train) == 0 or len(held_out) == 0:
            return {"examples": 0.0}
        database = self.database(exits, train)
        held_states = self.states(held_out)
        labels = torch.as_tensor(held_out["label"], dtype=torch.long)
        fixed = exits(held_states).argmax(-1) == labels[:, None]  # (N, L)

        raee_seconds, full_seconds, exit_layers, raee_correct = 0.0, 0.0, [], 0
        size = self.options.timing_batch  # type: ignore[attr-defined]
        for start in range(0, len(held_out), size):
            index = range(start, min(start + size, len(held_out)))
            batch = self._tokens(held_out, index)
            seconds, layers, predictions = self.early_exit(exits, database, batch)
            raee_seconds += seconds
            exit_layers += layers.tolist()
            raee_correct += int((predictions == batch["labels"]).sum())
            full_seconds += self.full_pass_seconds(exits, batch)
        return {
            "examples": float(len(held_out)),
            "database-size": float(len(database)),
            "raee-correct": float(raee_correct),
            "exit-layer-sum": float(sum(exit_layers)),
            "raee-seconds": raee_seconds,
            "full-seconds": full_seconds,
            **{
                f"exit-{i + 1}-correct": float(c)
                for i, c in enumerate(fixed.sum(0).tolist())
            },
        }

    def database(self, exits: LayerExits, rows: datasets.Dataset) -> RetrievalDatabase:
        """Query embedding -> earliest correct exit, for every example of `rows`."""
        states = self.states(rows)
        labels = torch.as_tensor(rows["label"], dtype=torch.long)
        correct = (exits(states).argmax(-1) == labels[:, None]).numpy()
        return RetrievalDatabase(
            states[:, 0].numpy().astype(np.float32),
            earliest_correct_layer(correct),
            num_layers=self.num_layers,
        )

    def early_exit(
        self,
        exits: LayerExits,
        database: RetrievalDatabase,
        batch: Mapping[str, Tensor],
    ) -> tuple[float, np.ndarray, Tensor]:
        """RAEE on one batch: (seconds, exit layer per example, predictions)."""
        encoder, _ = self.encoder()
        ids, mask = batch["input_ids"], batch["attention_mask"]
        start = time.perf_counter()
        query = forward_to_layer(encoder, ids, mask, 0).numpy().astype(np.float32)
        layers = database.predict(query, k=self.options.k)  # type: ignore[attr-defined]
        predictions = torch.empty(len(layers), dtype=torch.long)
        for layer in np.unique(layers):
            rows = torch.as_tensor(np.flatnonzero(layers == layer))
            state = forward_to_layer(encoder, ids[rows], mask[rows], int(layer))
            predictions[rows] = exits.exit_logits(state, int(layer)).argmax(-1)
        return time.perf_counter() - start, layers, predictions

    def full_pass_seconds(
        self, exits: LayerExits, batch: Mapping[str, Tensor]
    ) -> float:
        """Seconds of the full model (every layer, last exit) on the same batch."""
        encoder, _ = self.encoder()
        start = time.perf_counter()
        state = forward_to_layer(
            encoder, batch["input_ids"], batch["attention_mask"], self.num_layers
        )
        exits.exit_logits(state, self.num_layers).argmax(-1)
        return time.perf_counter() - start

    def merge_reports(self, reports: Sequence[Mapping[str, float]]) -> dict[str, float]:
        total = super().merge_reports(reports)
        n = total.get("examples", 0.0)
        if not n:
            return total
        layers = self.num_layers
        merged = {
            "examples": n,
            "accuracy": total["raee-correct"] / n,
            "average-exit-layer": total["exit-layer-sum"] / n,
            "full-model-accuracy": total[f"exit-{layers}-correct"] / n,
            "speed-up": total["full-seconds"] / total["raee-seconds"],
            "layer-speed-up": layers / (total["exit-layer-sum"] / n),
            "raee-seconds": total["raee-seconds"],
            "full-seconds": total["full-seconds"],
            "database-size-mean": total["database-size"] / len(reports),
        }
        for layer in range(1, layers + 1):
            merged[f"fixed-exit-{layer}-accuracy"] = total[f"exit-{layer}-correct"] / n
        return merged
