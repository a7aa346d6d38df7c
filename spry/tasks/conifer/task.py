"""Conifer: complex-constraint instruction tuning, easy to hard, with process feedback.

Sun et al., "Conifer: Improving Complex Constrained Instruction-Following Ability
of Large Language Models", 2024. Paper: arxiv.org/abs/2404.02823

What the paper does and what runs here:

- data: Conifer's instructions are GPT-4-written and refined; here they are drawn
  by the task (`instructions`): a short movie review with 1 to 5 verifiable
  constraints (`constraints`, IFEval's kinds), the level being their number, with
  a reference response built from Rotten Tomatoes sentences that meets every
  constraint by construction (`writer`, every reference checked). The data is
  fixed: the same instructions for every run seed. Clients get flwr-datasets
  partitions of the training instructions (IID by default, the run's partitioner
  over `level` otherwise).
- easy-to-hard (`order`): "curriculum" trains round r of R on the level r falls
  in (the rounds cut into five equal spans: level 1 first, level 5 last; with
  fewer than five rounds some levels are skipped); "shuffled" trains each round on
  as many of the client's instructions, all levels mixed: the same budget. A
  client with no instruction of a round's level uses its nearest level.
- process feedback (`feedback`): Conifer learns from feedback on where a response
  falls short of its constraints, written by GPT-4 (as we read the paper: from
  its data pipeline's refinement steps, and from judging responses of a model in
  training). Here the checkers write it: each training instruction of the round
  gets a second-stage example: the task, a failed attempt, the per-constraint
  verdicts written out (each restating its constraint), then the reference. The
  attempt comes from `feedback-source`: "generator" is closest to Conifer (the
  `generator`'s own response, by default the client's model, kept only if a
  checker rejects it), at the cost of generating every round on every client;
  "perturbed" (the default: it costs no generation, which a CPU client cannot
  spare) is the reference with one or two constraints deliberately broken
  (`writer.write_near_miss`, checked to fail exactly those).
- scores (`evaluate`): greedy responses (`spry.generation` through the
  `generator`; "local" is the model being scored) to `test-per-level` central test
  instructions per level, `max-new-tokens` at most, judged by the checkers:
  IFEval's prompt-level strict accuracy (every constraint met) and instruction-
  level strict accuracy (share of constraints met), overall and per level
  (`prompt-strict-level-3`); `accuracy` is prompt-level strict; `loss` is the
  teacher-forced loss of the reference responses. Round 0 scores the model before
  any training.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch

from ...config import ConfigError, ConfigValue, RunConfig
from ...data import make_partitioner
from ...engines.base import Batch
from ...generators import Generator
from ...models import TrainableModel
from ...seeding import STREAM_DATA, numpy_rng
from ..base import ClientData, Rows, TaskOptions
from ..causal_lm import CausalLMOptions, CausalLMTask, GeneratorOptions, own_writer
from .constraints import Constraint, dumps, loads, verdicts
from .instructions import LEVELS, Instruction
from .pairs import build_instructions
from .writer import write_near_miss

ORDERS = ("curriculum", "shuffled")
FEEDBACK_SOURCES = ("perturbed", "generator")
TRAIN_SEED, TEST_SEED = 0, 1  # the data's own seeds: the same for every run
NEAR_MISS_SEED = 2


def level_for_round(
    server_round: int, num_rounds: int, levels: int = len(LEVELS)
) -> int:
    """The curriculum's level in round `server_round` (1-based) of `num_rounds`."""
    done = min(max(server_round - 1, 0), num_rounds - 1)
    return 1 + done * levels // num_rounds


def feedback_prompt(
    task: str,
    attempt: str,
    constraints: Sequence[Constraint],
    passed: Sequence[bool],
) -> str:
    """The second-stage prompt: the task, a failed attempt, the checkers' verdicts.

    The verdict lines restate every constraint, so the instruction's own list of
    them is left out: the prompt stays within `max-length` more often.
    """
    checks = [
        f"- {c.describe()} {'Met.' if ok else 'NOT met.'}"
        for c, ok in zip(constraints, passed, strict=True)
    ]
    return "\n".join(
        [
            task,
            "A previous response:",
            attempt.strip(),
            "Checks of that response:",
            *checks,
            "Write a response that meets every constraint.",
        ]
    )


@dataclass(frozen=True)
class ConiferOptions(GeneratorOptions):
    """Curriculum, process feedback, data sizes and generation."""

    order: str = field(
        default="curriculum",
        metadata={"help": "curriculum (level 1 first, 5 last) or shuffled (mixed)"},
    )
    feedback: bool = field(
        default=True,
        metadata={"help": "add a process-feedback example per failed attempt"},
    )
    feedback_source: str = field(
        default="perturbed",
        metadata={
            "help": "failed attempts: perturbed (near-miss references, no "
            "generation) or generator (the `generator`'s responses)"
        },
    )
    template: str = field(
        default="{prompt}\nResponse:",
        metadata={"help": "how an instruction is shown; the response follows a space"},
    )
    train_per_level: int = field(
        default=40, metadata={"help": "training instructions per level (all clients)"}
    )
    test_per_level: int = field(
        default=8, metadata={"help": "central test instructions per level"}
    )
    max_new_tokens: int = field(
        default=96, metadata={"help": "tokens generated per response at most"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.order not in ORDERS:
            raise ConfigError(f"`order` should be one of {ORDERS}, got {self.order!r}")
        if self.feedback_source not in FEEDBACK_SOURCES:
            raise ConfigError(
                f"`feedback-source` should be one of {FEEDBACK_SOURCES}, "
                f"got {self.feedback_source!r}"
            )
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
        self.require_at_least(1, "train_per_level", "test_per_level", "max_new_tokens")


def instruction_rows(
    made: Sequence[tuple[Instruction, str]], near_miss_seed: int
) -> datasets.Dataset:
    """One row per instruction: prompt, reference, level, constraints, a near miss."""
    rows: dict[str, list[Any]] = {
        "prompt": [], "task": [], "response": [], "level": [], "constraints": [],
        "attempt": [], "broken": [],
    }  # fmt: skip
    for index, (instruction, reference) in enumerate(made):
        rng = np.random.default_rng([near_miss_seed, index])
        attempt, broken = write_near_miss(instruction, 1 + int(rng.integers(2)), rng)
        rows["prompt"].append(instruction.text())
        rows["task"].append(instruction.task)
        rows["response"].append(reference)
        rows["level"].append(instruction.level)
        rows["constraints"].append(dumps(instruction.constraints))
        rows["attempt"].append(attempt)
        rows["broken"].append(json.dumps(list(broken)))
    return datasets.Dataset.from_dict(rows)


@lru_cache(maxsize=4)
def instruction_split(split: str, per_level: int, seed: int) -> datasets.Dataset:
    """Instruction rows over the Rotten Tomatoes `split` ("train" or "test").

    A function of its arguments only (cached: a worker builds it once).
    """
    from ...data import load_text_dataset

    source = load_text_dataset("rotten-tomatoes")
    part = source.train if split == "train" else source.test
    made = build_instructions(
        list(part["text"]),
        [source.label_names[label] for label in part["label"]],
        per_level=per_level,
        seed=seed,
    )
    return instruction_rows(made, NEAR_MISS_SEED + seed)


class ConiferTask(CausalLMTask):
    """Instruction tuning on multi-constraint instructions (IFEval strict accuracy)."""

    name: ClassVar[str] = "conifer"
    summary: ClassVar[str] = (
        "Conifer: LoRA instruction tuning on 1-5 verifiable constraints, easy to "
        "hard, with process feedback (IFEval prompt/instruction strict accuracy)"
    )
    Options: ClassVar[type[CausalLMOptions]] = ConiferOptions
    run_defaults: ClassVar[Mapping[str, ConfigValue]] = {
        **CausalLMTask.run_defaults,
        "max-length": 256,  # a feedback example: instruction, attempt, checks, reply
        "partitioner": "iid",  # every client holds every level
        # 200 training instructions: 20 a client, 4 a level (8 pairs a round with
        # their feedback), rather than 2 a client over the run's default 100
        "num-clients": 10,
        "clients-per-round": 10,
        "client-eval-fraction": 0.0,  # clients train on all; the server scores
        "eval-clients-per-round": 0,
        "batch-size": 4,
    }

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        super().__init__(run, options)
        # the pairs of the round a client is training (epochs and warm-up reuse them)
        self._round_cache: dict[tuple[int, int], list[tuple[str, str]]] = {}
        self._test_scores: list[dict[str, float]] = []  # central evaluations, in order

    @property
    def opts(self) -> ConiferOptions:
        return self.options  # type: ignore[return-value]

    # -- data --------------------------------------------------------------------------

    @property
    def data(self) -> tuple[datasets.Dataset, datasets.Dataset]:
        """(train, test) instruction rows, interleaved by level, capped as asked."""
        if not hasattr(self, "_data"):
            train = instruction_split("train", self.opts.train_per_level, TRAIN_SEED)
            test = instruction_split("test", self.opts.test_per_level, TEST_SEED)
            cfg = self.run.data
            if cfg.max_train_examples:
                train = train.select(range(min(cfg.max_train_examples, len(train))))
            if cfg.max_test_examples:
                test = test.select(range(min(cfg.max_test_examples, len(test))))
            self._data = (train, test)
        return self._data

    def load_partition(self, partition_id: int) -> ClientData:
        if not hasattr(self, "_partitioner"):
            self._partitioner = make_partitioner(
                self.data[0], self.run.data, seed=self.run.runtime.seed,
                partition_by="level",
            )  # fmt: skip
        partition = self._partitioner.load_partition(partition_id)
        return self.client_data(partition, partition_id)

    def test_data(self) -> Rows:
        return self.data[1]

    def prompt(self, instruction: str) -> str:
        return self.opts.template.format(prompt=instruction)

    def example(self, rows: Rows, index: int) -> tuple[str, str]:
        """(the instruction through the template, " " + the reference response)."""
        row = rows[index]  # type: ignore[index]
        return self.prompt(row["prompt"]), " " + str(row["response"])

    # -- the curriculum and the feedback examples --------------------------------------

    def round_rows(
        self, rows: datasets.Dataset, partition_id: int, server_round: int
    ) -> list[int]:
        """The instructions (row indices) a client trains on in `server_round`.

        Curriculum: those of the round's level. Shuffled: as many, drawn from all
        levels by (seed, round, client).
        """
        levels = np.asarray(rows["level"]) if len(rows) else np.zeros(0, dtype=int)
        if len(levels) == 0:
            return []
        wanted = level_for_round(server_round, self.run.runtime.num_server_rounds)
        present = sorted(set(levels.tolist()))
        level = min(present, key=lambda lv: (abs(lv - wanted), lv))
        at_level = np.flatnonzero(levels == level)
        if self.opts.order == "curriculum":
            return [int(i) for i in at_level]
        rng = numpy_rng(self.run.runtime.seed, STREAM_DATA, server_round, partition_id)
        chosen = rng.choice(len(levels), size=len(at_level), replace=False)
        return sorted(int(i) for i in chosen)

    def generator(self, trainable: TrainableModel, device: str = "cpu") -> Generator:
        """The option's generator; "local" is `trainable` itself, greedy."""
        local = own_writer(trainable, self.run, device, fit_prompt=True)
        return self.opts.make_generator(local)

    def feedback_pairs(
        self,
        trainable: TrainableModel,
        rows: datasets.Dataset,
        chosen: Sequence[int],
        device: str = "cpu",
    ) -> list[tuple[str, str]]:
        """One (feedback prompt, reference) pair per failed attempt at `chosen`."""
        picked = rows.select(chosen)
        if self.opts.feedback_source == "perturbed":
            attempts = list(picked["attempt"])
        else:
            attempts = self.generator(trainable, device)(
                [self.prompt(p) for p in picked["prompt"]],
                max_new_tokens=self.opts.max_new_tokens,
            )
        pairs = []
        for row, attempt in zip(picked, attempts, strict=True):
            constraints = loads(row["constraints"])
            passed = verdicts(constraints, attempt.strip())
            if all(passed):  # nothing to correct
                continue
            answer = " " + str(row["response"])
            prompt = self.fitted_feedback(
                trainable.tokenizer, row["task"], attempt, constraints, passed, answer
            )
            if prompt is not None:
                pairs.append((prompt, answer))
        return pairs

    def fitted_feedback(
        self,
        tokenizer: Any,
        task: str,
        attempt: str,
        constraints: Sequence[Constraint],
        passed: Sequence[bool],
        answer: str,
    ) -> str | None:
        """The feedback prompt, its attempt shortened until prompt and answer fit.

        `encode` keeps a long example's answer and cuts its prompt's start, which
        here is the task and the attempt: 8 of 80 feedback examples lost 37-180
        tokens so at max-length 256. The verdicts still describe the whole attempt.
        None when even an empty attempt leaves no room (the pair is skipped).
        """

        def size(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        room = self.run.model.max_length - size(answer) - 1  # 1: end-of-sequence
        words = attempt.split()
        shown = attempt
        while True:
            prompt = self.prompt(feedback_prompt(task, shown, constraints, passed))
            over = size(prompt) - room
            if over <= 0:
                return prompt
            if not words:
                return None
            words = words[: max(len(words) - max(over // 2, 1), 0)]
            shown = " ".join(words) + " [...]"

    def round_pairs(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        device: str,
    ) -> list[tuple[str, str]]:
        """The round's (prompt, response) pairs: instructions, then feedback."""
        key = (partition_id, server_round)
        cache = self._round_cache
        if key not in cache:
            rows = self.partition(partition_id).train
            chosen = self.round_rows(rows, partition_id, server_round)
            pairs = [self.example(rows, i) for i in chosen]
            if self.opts.feedback and chosen:
                pairs += self.feedback_pairs(trainable, rows, chosen, device)
            cache.clear()  # one round at a time: a worker sees many clients
            cache[key] = pairs
        return cache[key]

    def train_batches(
        self,
        trainable: TrainableModel,
        partition_id: int,
        server_round: int,
        epoch: int,
        device: str = "cpu",
    ) -> Iterator[Batch]:
        """The round's pairs, shuffled by (seed, round, client, epoch), batched."""
        pairs = self.round_pairs(trainable, partition_id, server_round, device)
        order = numpy_rng(
            self.run.runtime.seed, STREAM_DATA, server_round, partition_id, epoch
        ).permutation(len(pairs))
        size = self.run.client.batch_size
        for start in range(0, len(order), size):
            chunk = [pairs[int(i)] for i in order[start : start + size]]
            batch = self.encode(trainable.tokenizer, chunk)
            yield {k: v.to(device) for k, v in batch.items()}

    # -- scoring -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Teacher-forced `loss`; IFEval strict accuracies overall and per level."""
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        total, count = self.answer_loss(trainable, rows, device)
        written = self.generator(trainable, device)(
            [self.prompt(rows[i]["prompt"]) for i in range(len(rows))],  # type: ignore[index]
            max_new_tokens=self.opts.max_new_tokens,
        )
        judged = [
            (int(rows[i]["level"]), verdicts(loads(rows[i]["constraints"]), w.strip()))  # type: ignore[index]
            for i, w in enumerate(written)
        ]
        if rows is self.data[1]:
            self._last_responses = [
                {"level": level, "prompt": rows[i]["prompt"], "response": w, "met": met}  # type: ignore[index]
                for i, (w, (level, met)) in enumerate(zip(written, judged, strict=True))
            ]
        scores: dict[str, float] = {
            **strict_accuracies(judged),
            "loss": total / max(count, 1),
            "num-examples": len(rows),
            "answer-tokens": count,
        }
        scores["accuracy"] = scores["prompt-strict"]
        if rows is self.data[1]:
            self._test_scores.append(scores)
        return scores

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """Strict accuracies of the central evaluations, for the summary.

        The per-round table keeps only `accuracy` and `loss`; the summary gets the
        last evaluation's scores by level (`conifer-scores`) and every central
        evaluation of this server process in order (`conifer-evaluations`): the
        first is round 0, the model before training, unless the run was resumed.
        The last evaluation's responses and verdicts go to `responses.jsonl`.
        """
        if results is not None and getattr(self, "_last_responses", None):
            with open(results / "responses.jsonl", "w") as out:
                for line in self._last_responses:
                    out.write(json.dumps(line) + "\n")
        kept = [
            {k: v for k, v in s.items() if "strict" in k or k == "loss"}
            for s in self._test_scores
        ]
        return {
            "conifer-scores": kept[-1] if kept else {},
            "conifer-evaluations": kept,
        }


def strict_accuracies(judged: Sequence[tuple[int, Sequence[bool]]]) -> dict[str, float]:
    """IFEval's prompt- and instruction-level strict accuracy, overall and by level.

    `judged` holds (level, per-constraint verdicts) per response. Prompt level:
    the share of responses meeting every constraint; instruction level: the share
    of all constraints met.
    """
    scores: dict[str, float] = {}
    groups: dict[str, list[Sequence[bool]]] = {"": [v for _, v in judged]}
    for level in sorted({lv for lv, _ in judged}):
        groups[f"-level-{level}"] = [v for lv, v in judged if lv == level]
    for suffix, group in groups.items():
        met = sum(sum(v) for v in group)
        asked = sum(len(v) for v in group)
        scores[f"prompt-strict{suffix}"] = sum(all(v) for v in group) / len(group)
        scores[f"instruction-strict{suffix}"] = met / asked if asked else 0.0
    return scores


__all__ = ["ConiferOptions", "ConiferTask", "level_for_round", "strict_accuracies"]
