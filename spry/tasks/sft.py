"""Supervised fine-tuning of a causal LM on prompt -> response pairs, LoRA only.

The causal-LM task base (`spry.tasks.causal_lm`) supplies the model (SmolLM2-135M-
Instruct offline, LoRA on attention), the batches (prompt through the `template`,
then the response and EOS; only the response's tokens and EOS carry loss) and the
chunked loss. What is here is where the pairs come from and how answers are scored:

- data: the run's `dataset`, a local JSONL/CSV/Parquet file or folder or a Hugging
  Face id with `prompt-column` / `response-column` (`spry.data.pairs`); left at
  the run's default (or named `sft-reviews`), questions on the shipped Rotten
  Tomatoes reviews with answers a rule decides (`sft_reviews`). Clients get
  flwr-datasets partitions (Dirichlet over the `kind` column when the data has
  one, else IID), each split into train and held out as the labelled tasks do;
- scores: the teacher-forced `loss` of the answer tokens, and exact match of the
  greedy answer (`spry.generation`: batched, KV cache, `max-new-tokens` at most),
  its first line compared after `normalise`, overall and per `kind`; `accuracy`
  is exact match, so the per-round table and plot show it.

A core task, like `classification`, not a package of its own: task packages build
on it (DeepInception fine-tunes with it and red-teams the result), and a task
package is loaded only by its name, never imported by another.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch

from ..config import ConfigError
from ..data import make_partitioner
from ..data.pairs import KIND_COLUMN, PairDataset, load_pairs
from ..generation import generate
from ..models import TrainableModel
from .base import ClientData, Rows
from .causal_lm import CausalLMOptions, CausalLMTask
from .sft_reviews import NAMES, review_questions

_TRAILING = string.punctuation + " \t"


def normalise(text: str) -> str:
    r"""The answer as exact match compares it.

    Its first line, stripped, case-folded, inner spaces single, without trailing
    punctuation ("Positive.\nReview: ..." == "positive"): a model that goes on
    after its answer is scored on the answer.
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return " ".join(first.casefold().split()).rstrip(_TRAILING)


@dataclass(frozen=True)
class SFTOptions(CausalLMOptions):
    """Where the pairs are, how a prompt is written, how answers are generated."""

    prompt_column: str = field(
        default="",
        metadata={"help": "the data's prompt column ('': prompt, instruction, ...)"},
    )
    response_column: str = field(
        default="",
        metadata={"help": "the data's response column ('': response, answer, ...)"},
    )
    template: str = field(
        default="{prompt}\nAnswer:",
        metadata={"help": "how a prompt is shown; the response follows after a space"},
    )
    max_new_tokens: int = field(
        default=8, metadata={"help": "tokens generated per answer at most"}
    )
    # 60 pairs (20 a kind): one central evaluation, the teacher-forced loss and
    # up to 8 generated tokens a pair, stays well under a minute on 2 CPU cores
    test_examples: int = field(
        default=60,
        metadata={"help": "central test pairs scored each round (0: the whole split)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if "{prompt}" not in self.template:
            raise ConfigError(
                f"`template` should contain {{prompt}}, got {self.template!r}"
            )
        try:
            self.template.format(prompt="")
        except (IndexError, KeyError, ValueError):
            raise ConfigError(
                f"`template` may hold only {{prompt}} (double other braces), "
                f"got {self.template!r}"
            ) from None
        self.require_at_least(1, "max_new_tokens")
        self.require_at_least(0, "test_examples")


class SFTTask(CausalLMTask):
    """A causal LM with LoRA fine-tuned on prompt -> response pairs (exact match)."""

    name: ClassVar[str] = "sft"
    summary: ClassVar[str] = (
        "supervised fine-tuning: LoRA on SmolLM2, prompt -> response pairs "
        "(JSONL/CSV/Parquet, HF id; offline review questions) (exact match, loss)"
    )
    Options: ClassVar[type[CausalLMOptions]] = SFTOptions

    @property
    def opts(self) -> SFTOptions:
        return self.options  # type: ignore[return-value]

    # -- data --------------------------------------------------------------------------

    @property
    def data(self) -> PairDataset:
        """The pairs, train capped by `max-train-examples`, test by both caps."""
        if not hasattr(self, "_data"):
            cfg = self.run.data
            if cfg.dataset.lower() in NAMES:
                full = review_questions(cfg.test_fraction)
            else:
                full = load_pairs(
                    cfg.dataset,
                    cfg.test_fraction,
                    self.opts.prompt_column,
                    self.opts.response_column,
                )
            caps = [c for c in (cfg.max_test_examples, self.opts.test_examples) if c]
            train, test = full.train, full.test
            if cfg.max_train_examples:
                train = train.select(range(min(cfg.max_train_examples, len(train))))
            if caps:
                test = test.select(range(min(min(caps), len(test))))
            self._data = PairDataset(train=train, test=test)
        return self._data

    def load_partition(self, partition_id: int) -> ClientData:
        if not hasattr(self, "_partitioner"):
            train = self.data.train
            cfg = self.run.data
            if KIND_COLUMN not in train.column_names:  # nothing to skew by
                cfg = dataclasses.replace(cfg, partitioner="iid")
            self._partitioner = make_partitioner(
                train, cfg, seed=self.run.runtime.seed, partition_by=KIND_COLUMN
            )
        partition = self._partitioner.load_partition(partition_id)
        return self.client_data(partition, partition_id)

    def test_data(self) -> Rows:
        return self.data.test

    def example(self, rows: Rows, index: int) -> tuple[str, str]:
        """(the prompt through the template, " " + the response)."""
        row = rows[index]  # type: ignore[index]
        prompt = self.opts.template.format(prompt=row["prompt"])
        return prompt, " " + str(row["response"]).strip()

    # -- scoring -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Teacher-forced `loss`; `exact-match` (= `accuracy`), overall and per kind."""
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "exact-match": 0.0, "num-examples": 0}
        size = self.run.client.eval_batch_size
        total, count = self.answer_loss(trainable, rows, device)
        pairs = [self.example(rows, i) for i in range(len(rows))]
        written = generate(
            trainable.model,
            trainable.tokenizer,
            [prompt for prompt, _ in pairs],
            max_new_tokens=self.opts.max_new_tokens,
            batch_size=size,
            max_prompt_tokens=max(1, self.run.model.max_length - 1),
            device=device,
        )
        answers = [answer for _, answer in pairs]
        hits = [
            normalise(w) == normalise(a) for w, a in zip(written, answers, strict=True)
        ]
        exact = sum(hits) / len(hits)
        scores: dict[str, float] = {
            "accuracy": exact,
            "exact-match": exact,
            "loss": total / max(count, 1),
            "num-examples": len(rows),
            "answer-tokens": count,
        }
        if isinstance(rows, datasets.Dataset) and KIND_COLUMN in rows.column_names:
            kinds = rows[KIND_COLUMN]
            for kind in sorted(set(kinds)):
                mine = [h for h, k in zip(hits, kinds, strict=True) if k == kind]
                scores[f"exact-match-{kind}"] = sum(mine) / len(mine)
        if rows is self.data.test:
            self._last_test_scores = scores
        return scores

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """The last central evaluation's exact match per kind, for the summary."""
        scores = getattr(self, "_last_test_scores", {})
        return {
            "sft-scores": {
                k: v
                for k, v in scores.items()
                if k.startswith("exact-match") or k == "loss"
            }
        }
