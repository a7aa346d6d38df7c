"""A task that shares text, not weights: clients pool the facts each one knows.

Client p knows a few words of its own; in a round it sends the ones the shared
list lacks, and the server merges them (sorted, de-duplicated, capped). The test
set is every client's words, so accuracy is the share of them the federation has
pooled: it must grow round by round, and only through the text exchange. Outside
the core, loaded by name (`SPRY_TASKS`), as a user's task would be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from spry.models import TrainableModel
from spry.tasks import ClientData, TaskOptions, TextReply, TextTask


@dataclass(frozen=True)
class FactsOptions(TaskOptions):
    words: int = field(default=3, metadata={"help": "words each client knows"})
    max_lines: int = field(default=100, metadata={"help": "shared list cap"})


def client_words(partition_id: int, count: int) -> list[str]:
    return [f"fact-{partition_id}-{i}" for i in range(count)]


class FactsTask(TextTask):
    name: ClassVar[str] = "toy-facts"
    summary: ClassVar[str] = "clients pool the words they know (text rounds)"
    Options = FactsOptions

    def load_partition(self, partition_id: int) -> ClientData:
        words = client_words(partition_id, self.options.words)  # type: ignore[attr-defined]
        return ClientData(train=words, held_out=[])

    def test_data(self) -> list[str]:
        count = self.options.words  # type: ignore[attr-defined]
        return [
            w for p in range(self.run.data.num_clients) for w in client_words(p, count)
        ]

    def initial_text(self) -> dict[str, list[str]]:
        return {"facts": []}

    def text_round(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        shared: Mapping[str, list[str]],
        device: str = "cpu",
    ) -> TextReply:
        mine = list(self.partition(partition_id).train)
        known = set(shared.get("facts", []))
        new = [w for w in mine if w not in known]
        metrics = {
            "num-examples": float(len(mine)),
            "known-share": 1 - len(new) / len(mine),
        }
        return TextReply(metrics=metrics, text={"facts": new})

    def merge_text(
        self,
        server_round: int,
        shared: Mapping[str, list[str]],
        replies: Sequence[TextReply],
    ) -> dict[str, list[str]]:
        pooled = set(shared.get("facts", []))
        for reply in replies:
            pooled.update(reply.text.get("facts", []))
        return {"facts": sorted(pooled)[: self.options.max_lines]}  # type: ignore[attr-defined]

    def evaluate(
        self, trainable: TrainableModel, rows: list[str], device: str = "cpu"
    ) -> dict[str, float]:
        known = set(self.shared_text.get("facts", []))
        share = sum(w in known for w in rows) / len(rows)
        return {"accuracy": share, "loss": math.nan, "num-examples": float(len(rows))}
