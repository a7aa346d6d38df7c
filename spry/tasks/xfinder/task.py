"""The xFinder task: a causal LM fine-tuned federatedly to write an output's key answer.

Why a generative extractor (an `sft`-style causal LM) rather than a span extractor
on MiniLM: the key answer is often not a span of the output. An output that names
an option's text ("The review is negative.") has the key answer "B", a letter it
never writes; a refusal has the key answer "[No valid answer]"; "30,000 eggs" has
the key answer 30000; and a corrected output ("A... no wait, it is C") holds two
candidate spans, of which a span model must pick one by position alone. A model
that writes the answer can map, normalise and decline, as xFinder does (its
extractors are small causal LMs fine-tuned on KAF).

- data (`examples`): the task's own key-answer-finder set, training and held-out
  rows from different questions, held-out styles never seen in training; clients
  get flwr-datasets partitions of the training rows (Dirichlet over `kind`), each
  split into train and held out;
- model, batches, loss: the causal-LM base (SmolLM2-135M-Instruct offline, LoRA,
  only the key answer's tokens and EOS carry loss), the prompt `finder_prompt`;
- `evaluate`: the key answer generated greedily (`max-new-tokens`, 12), compared
  with `same_answer`: `accuracy` overall, `accuracy-<style>` and `accuracy-<kind>`,
  the teacher-forced `loss`, and `regex-accuracy`, OpenCompass's RegEx on the same
  rows (computed once per row set); `finish` keeps both per style for the summary,
  with the extractor's scores at the process's first evaluation (round 0: untrained).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch

from ...answers import extract_many, finder_prompt, same_answer
from ...data import make_partitioner
from ...data.pairs import KIND_COLUMN
from ...generators import (
    Generator,
    LocalGenerator,
    ScriptedGenerator,
)
from ...models import TrainableModel
from ..base import ClientData, Rows
from ..causal_lm import CausalLMOptions, CausalLMTask, GeneratorOptions, own_writer
from .examples import (
    HELD_OUT_STYLES,
    MODEL_STYLE,
    FinderSet,
    finder_set,
    model_rows,
    to_dataset,
)


@dataclass(frozen=True)
class XFinderOptions(GeneratorOptions):
    """How big the key-answer-finder set is and how key answers are generated."""

    train_questions: int = field(
        default=400, metadata={"help": "training questions (rows: x styles-per-q.)"}
    )
    styles_per_question: int = field(
        default=2, metadata={"help": "training styles each training question gets"}
    )
    # 24 questions x every style that fits (about 8.8 a question): 210 rows. Measured
    # with the untrained SmolLM2 (12 new tokens a row): 48 rows took 186 s on 2
    # CPU cores shared with other jobs (load 9); the benchmark uses 12 questions
    test_questions: int = field(
        default=24, metadata={"help": "held-out questions (each in every style)"}
    )
    data_seed: int = field(
        default=0, metadata={"help": "the set's seed (fixed across runs' seeds)"}
    )
    model_outputs: int = field(
        default=0,
        metadata={"help": "held-out questions also answered by `generator` (0: off)"},
    )
    generator_chat: bool = field(  # an instruct model asked plainly often stops
        default=True,
        metadata={"help": "ask `generator` in chat form (template / chat API)"},
    )
    max_new_tokens: int = field(
        default=12, metadata={"help": "tokens generated per key answer at most"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(
            1,
            "train_questions",
            "test_questions",
            "styles_per_question",
            "max_new_tokens",
        )
        self.require_at_least(0, "model_outputs")


class XFinderTask(CausalLMTask):
    """A causal LM with LoRA that learns to write the key answer of an output."""

    name: ClassVar[str] = "xfinder"
    summary: ClassVar[str] = (
        "xFinder: LoRA on SmolLM2 learns to extract the key answer from LLM outputs "
        "in many styles (extraction accuracy by style, vs OpenCompass's RegEx)"
    )
    Options: ClassVar[type[CausalLMOptions]] = XFinderOptions
    # prompts hold a question (a review of at most 20 words), four options and an
    # output: about 130 SmolLM2 tokens at most, so 192 never cuts one
    run_defaults = {**CausalLMTask.run_defaults, "max-length": 192}
    # The baselines at the rates sft's central probe found for this model and LoRA
    # (benchmarks/results/sft_probe.md): backprop 1e-2 beat 1e-3; MeZO diverged at
    # 0.02 and learnt at 0.005 with plain SGD. Not re-probed on this task.
    method_defaults = {
        **CausalLMTask.method_defaults,
        "fedavg": {"lr": 0.01},
        "fedmezo": {"client-optimizer": "sgd", "lr": 0.005},
    }

    @property
    def opts(self) -> XFinderOptions:
        return self.options  # type: ignore[return-value]

    # -- data --------------------------------------------------------------------------

    @property
    def finder(self) -> FinderSet:
        """The set, built once per process; training rows capped by the run."""
        if not hasattr(self, "_finder"):
            full = finder_set(
                train_questions=self.opts.train_questions,
                test_questions=self.opts.test_questions,
                styles_per_question=self.opts.styles_per_question,
                seed=self.opts.data_seed,
                test_fraction=self.run.data.test_fraction,
            )
            train = full.train
            if self.run.data.max_train_examples:
                cap = min(self.run.data.max_train_examples, len(train))
                train = train.select(range(cap))
            self._finder = dataclasses.replace(full, train=train)
        return self._finder

    def writer(self) -> Generator:
        """Who writes the "local-model" outputs (the `generator` option).

        "local": the untrained model (LoRA B starts at zero: the base model's own),
        in its chat template (`generator-chat`, on by default); an endpoint: its
        chat API or plain completions. Asked in plain text, a writer continues
        after "Response:".
        """

        def local() -> LocalGenerator:
            return own_writer(self.build_model("cpu"), self.run)()

        made = self.opts.make_generator(local)
        chats = self.opts.generator_chat and getattr(made, "chats", True)
        if chats or isinstance(made, ScriptedGenerator):
            return made
        return _suffixed(made, "\nResponse:")

    def load_partition(self, partition_id: int) -> ClientData:
        if not hasattr(self, "_partitioner"):
            self._partitioner = make_partitioner(
                self.finder.train,
                self.run.data,
                seed=self.run.runtime.seed,
                partition_by=KIND_COLUMN,
            )
        partition = self._partitioner.load_partition(partition_id)
        return self.client_data(partition, partition_id)

    def test_data(self) -> Rows:
        """The held-out rows, plus "local-model" rows when `model-outputs` > 0."""
        if not hasattr(self, "_test"):
            test = self.finder.test
            count = self.opts.model_outputs
            if count:
                questions = self.finder.test_questions[:count]
                writer = self.writer()
                rows, _ = model_rows(
                    questions, lambda ps: writer(ps, max_new_tokens=32)
                )
                test = datasets.concatenate_datasets([test, to_dataset(rows)])
            cap = self.run.data.max_test_examples
            self._test = test.select(range(min(cap, len(test)))) if cap else test
        return self._test

    def example(self, rows: Rows, index: int) -> tuple[str, str]:
        """(the finder prompt, " " + the key answer)."""
        row = rows[index]  # type: ignore[index]
        prompt = finder_prompt(row["question"], row["output"], row["options"])
        return prompt, " " + str(row["key"])

    # -- scoring -----------------------------------------------------------------------

    def regex_hits(self, rows: Rows) -> list[bool]:
        """Whether OpenCompass's RegEx gets each row's key answer (cached per rows)."""
        cache: dict[int, tuple[Rows, list[bool]]] = self.__dict__.setdefault(
            "_regex_cache", {}
        )
        if id(rows) not in cache:
            items = [_item(rows, i) for i in range(len(rows))]
            found = extract_many(items, method="regex")
            hits = [
                same_answer(f, rows[i]["key"], rows[i]["kind"])  # type: ignore[index]
                for i, f in enumerate(found)
            ]
            cache[id(rows)] = (rows, hits)  # the rows kept: their id stays theirs
        return cache[id(rows)][1]

    def extractor(self, trainable: TrainableModel, device: str = "cpu") -> Generator:
        """The extractor `evaluate` scores: `trainable`, greedy, batched."""
        return own_writer(trainable, self.run, device, fit_prompt=True)()

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Extraction accuracy overall (`accuracy`), per style and kind; the RegEx's."""
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        total, count = self.answer_loss(trainable, rows, device)
        extractor = self.extractor(trainable, device)
        items = [_item(rows, i) for i in range(len(rows))]
        found = extract_many(
            items,
            method="model",
            generator=extractor,
            max_new_tokens=self.opts.max_new_tokens,
        )
        hits = [
            same_answer(f, rows[i]["key"], rows[i]["kind"])  # type: ignore[index]
            for i, f in enumerate(found)
        ]
        regex = self.regex_hits(rows)
        scores: dict[str, float] = {
            "accuracy": sum(hits) / len(hits),
            "regex-accuracy": sum(regex) / len(regex),
            "loss": total / max(count, 1),
            "num-examples": len(rows),
            "answer-tokens": count,
        }
        for column in ("style", "kind"):
            labels = [rows[i][column] for i in range(len(rows))]  # type: ignore[index]
            scores.update(_by_group(hits, labels, "accuracy-"))
        if rows is self.test_data():
            styles = [rows[i]["style"] for i in range(len(rows))]  # type: ignore[index]
            self._last_test = {
                "extractor": _by_group(hits, styles, ""),
                "regex": _by_group(regex, styles, ""),
                "rows": {s: float(styles.count(s)) for s in sorted(set(styles))},
                "accuracy": scores["accuracy"],
                "regex-accuracy": scores["regex-accuracy"],
            }
            # the process's first central evaluation: the untrained extractor in a
            # fresh run (round 0), whose per-style scores metrics.csv does not keep
            self.__dict__.setdefault(
                "_first_test",
                {k: self._last_test[k] for k in ("extractor", "accuracy")},
            )
        return scores

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """The last central evaluation by style, extractor and RegEx (summary)."""
        last = getattr(self, "_last_test", None)
        if last is None:
            return {}
        styles = [*HELD_OUT_STYLES]
        if self.opts.model_outputs:
            styles.append(MODEL_STYLE)
        first = getattr(self, "_first_test", {})
        return {"xfinder": {**last, "first": first, "held-out-only-styles": styles}}


def _suffixed(generator: Generator, suffix: str) -> Generator:
    """`generator` continuing each prompt with `suffix` appended (plain text)."""

    def write(prompts: Sequence[str], *, max_new_tokens: int) -> list[str]:
        return generator([p + suffix for p in prompts], max_new_tokens=max_new_tokens)

    return write


def _item(rows: Rows, i: int) -> tuple[str, str, str, Sequence[str]]:
    row = rows[i]  # type: ignore[index]
    return row["question"], row["output"], row["kind"], tuple(row["options"])


def _by_group(hits: Sequence[bool], labels: Sequence[str], prefix: str) -> dict:
    groups: dict[str, list[bool]] = defaultdict(list)
    for hit, label in zip(hits, labels, strict=True):
        groups[label].append(hit)
    return {f"{prefix}{k}": sum(v) / len(v) for k, v in sorted(groups.items())}
