r"""MUSTARD as a federated task: synthesize, keep what the checker proves, fine-tune.

The kept set is built once per settings (and cached: `cache-dir`, default
`$SPRY_CACHE/mustard`, keyed by everything that changes it): `items` concept seeds
(`seeds`), one generated item each (`generator`: the task's model, an endpoint,
"module:function", or `templates`), each parsed and checked (`pipeline`); the
accepted ones are dealt to clients IID. A client fine-tunes LoRA on problem ->
solution pairs: the prompt "Problem: ...\nSolution:", the answer the informal
solution and its "Answer: ..." line, so the model learns to end with its answer.

Evaluation is MUSTARD's downstream metric: held-out word problems with numeric
answers (`word_problems`), the greedy output's final answer extracted by
`extractor` and compared exactly (`accuracy`), at round 0 and after training.
`finish` writes the kept set's accept/reject shares by reason and its diversity
(`mustard.json`) and every generated item with its verdict (`mustard-items.jsonl`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import torch

from ...cache import cache_root
from ...config import ConfigError, ConfigValue
from ...data import make_partitioner
from ...generation import generate
from ...generators import Generator, LocalGenerator, make_generator
from ...models import TrainableModel
from ..base import ClientData, Rows
from ..causal_lm import CausalLMOptions, CausalLMTask, GeneratorOptions
from .pipeline import mark_planted, summarize, synthesize
from .seeds import sample_seeds
from .templates import FALSE_RATE, TemplateWriter
from .word_problems import (
    LAST_NUMBER,
    MODEL,
    extract_answers,
    load_extractor,
    same_number,
    word_problems,
)

TEMPLATES = "templates"
CACHE_VERSION = 1  # bump when the records' content changes for the same settings


@dataclass(frozen=True)
class MustardOptions(GeneratorOptions):
    """Where items come from, how many, how they are checked and scored."""

    OWN_WRITERS: ClassVar[tuple[str, ...]] = (TEMPLATES,)

    items: int = field(default=96, metadata={"help": "items generated (seeds drawn)"})
    pair_share: float = field(
        default=0.5, metadata={"help": "share of seeds that are concept pairs"}
    )
    false_rate: float = field(
        default=FALSE_RATE,
        metadata={"help": "share of template items made false on purpose"},
    )
    generate_tokens: int = field(
        default=160, metadata={"help": "new tokens per generated item at most"}
    )
    checker_timeout_ms: int = field(
        default=2000, metadata={"help": "z3's limit per statement (then: unknown)"}
    )
    test_problems: int = field(
        default=45, metadata={"help": "held-out word problems scored centrally"}
    )
    max_new_tokens: int = field(
        default=40, metadata={"help": "tokens generated per word-problem answer"}
    )
    extractor: str = field(
        default=LAST_NUMBER,
        metadata={
            "help": "how answers are read: last-number, regex (OpenCompass's), "
            "model (xFinder's prompt to extractor-generator) or "
            "module:function(question, output) -> answer"
        },
    )
    extractor_generator: str = field(
        default="local",
        metadata={
            "help": "the model extractor: local (the evaluated model), a finished "
            "xfinder run's results folder, an http(s) API root or module:function"
        },
    )
    cache_dir: str = field(
        default="", metadata={"help": "where kept sets are cached ('': $SPRY_CACHE)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least(1, "items")
        for name in ("pair_share", "false_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                key = name.replace("_", "-")
                raise ConfigError(f"`{key}` should be in [0, 1], got {value}")
        self.require_at_least(
            1,
            "generate_tokens",
            "checker_timeout_ms",
            "max_new_tokens",
            "test_problems",
        )
        if self.extractor.strip() != MODEL:
            try:
                load_extractor(self.extractor)
            except ValueError as error:
                raise ConfigError(f"`extractor`: {error}") from None


def training_pair(row: Any) -> tuple[str, str]:
    """(prompt, answer) of a kept item or a word problem, as the model sees it."""
    prompt = f"Problem: {row['prompt']}\nSolution:"
    response = row.get("response") or f"Answer: {row['answer']}"
    return prompt, " " + str(response).strip()


class MustardTask(CausalLMTask):
    """LoRA fine-tuning on checker-kept synthetic problems (word-problem accuracy)."""

    name: ClassVar[str] = "mustard"
    summary: ClassVar[str] = (
        "MUSTARD: concept seeds -> generated problem + formal statement -> "
        "sympy/z3/lean checker -> fine-tune on what it keeps (word-problem accuracy)"
    )
    Options: ClassVar[type[CausalLMOptions]] = MustardOptions
    run_defaults: ClassVar[dict[str, ConfigValue]] = {
        **CausalLMTask.run_defaults,
        "partitioner": "iid",  # a small kept set: Dirichlet would leave clients empty
        "num-clients": 8,
        "clients-per-round": 4,
        # the kept items are few: clients train on all of theirs, and the score
        # that matters is the central word-problem accuracy
        "eval-clients-per-round": 0,
        "client-eval-fraction": 0.0,
        "max-length": 128,  # a problem, its solution and the answer line
    }

    @property
    def opts(self) -> MustardOptions:
        return self.options  # type: ignore[return-value]

    # -- the kept set ----------------------------------------------------------------

    def cache_key(self) -> str:
        """A hash of every setting the generated records depend on."""
        o = self.opts
        settings = {
            "version": CACHE_VERSION,
            "generator": o.generator.strip(),
            "generator-model": o.generator_model,
            "chat": o.generator_chat,
            "items": o.items,
            "pair-share": o.pair_share,
            "false-rate": o.false_rate if o.generator.strip() == TEMPLATES else None,
            "tokens": o.generate_tokens,
            "timeout": o.checker_timeout_ms,
            "seed": self.run.runtime.seed,
            "model": self.run.model.model if o.generator.strip() == "local" else None,
        }
        text = json.dumps(settings, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cache_path(self) -> Path:
        folder = Path(self.opts.cache_dir) if self.opts.cache_dir else cache_root()
        return folder / "mustard" / f"items-{self.cache_key()}.json"

    def make_generator(self) -> Generator:
        spec = self.opts.generator.strip()
        if spec == TEMPLATES:
            return TemplateWriter(
                seed=self.run.runtime.seed, false_rate=self.opts.false_rate
            )

        def local() -> LocalGenerator:
            trainable = self.build_model("cpu")  # the initial model, not a client's
            return LocalGenerator(trainable.model, trainable.tokenizer, batch_size=8)

        return self.opts.make_generator(local)

    def build_records(self) -> list[dict[str, Any]]:
        """Generate and check `items` items (no cache)."""
        seeds = sample_seeds(
            self.opts.items, seed=self.run.runtime.seed, pair_share=self.opts.pair_share
        )
        writer = self.make_generator()
        records = synthesize(
            writer,
            seeds,
            max_new_tokens=self.opts.generate_tokens,
            timeout_ms=self.opts.checker_timeout_ms,
        )
        if isinstance(writer, TemplateWriter):
            mark_planted(records, writer.planted)
        return records

    @property
    def records(self) -> list[dict[str, Any]]:
        """Every generated item with its verdict: built once, cached on disk.

        Processes of one run (the server, Ray workers) share the file; a lock makes
        the first build it and the others read it.
        """
        if not hasattr(self, "_records"):
            path = self.cache_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if path.exists():
                    records = json.loads(path.read_text())["records"]
                else:
                    records = self.build_records()
                    partial = path.with_suffix(f".{os.getpid()}.tmp")
                    partial.write_text(json.dumps({"records": records}))
                    partial.replace(path)
            self._records = records
        return self._records

    @property
    def kept(self) -> datasets.Dataset:
        """The accepted items as (prompt, response, answer, kind) rows."""
        if not hasattr(self, "_kept"):
            kept = [r for r in self.records if r["kept"]]
            if len(kept) < self.run.data.num_clients:
                raise ConfigError(
                    f"task 'mustard': the checker kept {len(kept)} of "
                    f"{len(self.records)} items from generator "
                    f"{self.opts.generator!r}, fewer than num-clients "
                    f"({self.run.data.num_clients}); generate more (`items`), use "
                    "fewer clients, or a stronger generator (templates, an endpoint)"
                )
            self._kept = datasets.Dataset.from_dict(
                {
                    "prompt": [r["problem"] for r in kept],
                    "response": [
                        f"{r['solution']}\nAnswer: {r['answer']}" for r in kept
                    ],
                    "answer": [r["answer"] for r in kept],
                    "kind": [r["areas"][0] for r in kept],
                }
            )
        return self._kept

    # -- data ----------------------------------------------------------------------

    def load_partition(self, partition_id: int) -> ClientData:
        if not hasattr(self, "_partitioner"):
            cfg = dataclasses.replace(self.run.data, partitioner="iid")
            self._partitioner = make_partitioner(
                self.kept, cfg, seed=self.run.runtime.seed
            )
        partition = self._partitioner.load_partition(partition_id)
        return self.client_data(partition, partition_id)

    def test_data(self) -> Rows:
        """The word problems; first builds the kept set (the server, before round 1).

        So the server generates and checks the items once and the clients read the
        cache, and a kept set too small to deal stops the run before any training.
        """
        _ = self.kept
        if not hasattr(self, "_test"):
            self._test = word_problems(
                self.opts.test_problems, seed=self.run.runtime.seed
            )
        return self._test

    def example(self, rows: Rows, index: int) -> tuple[str, str]:
        return training_pair(rows[index])  # type: ignore[index]

    # -- scoring -------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """`accuracy`: exact numeric match of the extracted answer; the answer loss."""
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        size = self.run.client.eval_batch_size
        total, count = self.answer_loss(trainable, rows, device)
        questions = [rows[i]["prompt"] for i in range(len(rows))]  # type: ignore[index]
        prompts = [self.example(rows, i)[0] for i in range(len(rows))]
        written = generate(
            trainable.model,
            trainable.tokenizer,
            prompts,
            max_new_tokens=self.opts.max_new_tokens,
            batch_size=size,
            max_prompt_tokens=max(1, self.run.model.max_length - 1),
            device=device,
        )
        outputs = [w.split("\nProblem:")[0] for w in written]
        answers = extract_answers(
            self.opts.extractor,
            questions,
            outputs,
            generator=self.answer_reader(trainable, device),
        )
        truth = [rows[i]["answer"] for i in range(len(rows))]  # type: ignore[index]
        hits = [same_number(a, t) for a, t in zip(answers, truth, strict=True)]
        scores: dict[str, float] = {
            "accuracy": sum(hits) / len(hits),
            "loss": total / max(count, 1),
            "answered": sum(a is not None for a in answers) / len(answers),
            "num-examples": len(rows),
        }
        if rows is self.test_data():
            kinds = [rows[i]["kind"] for i in range(len(rows))]  # type: ignore[index]
            for kind in sorted(set(kinds)):
                mine = [h for h, k in zip(hits, kinds, strict=True) if k == kind]
                scores[f"accuracy-{kind}"] = sum(mine) / len(mine)
            self._last_test_scores = scores
            self._last_outputs = list(zip(questions, written, truth, strict=True))
        return scores

    def answer_reader(self, trainable: TrainableModel, device: str) -> Generator | None:
        """The model extractor's generator (`extractor-generator`), when it is used.

        "local" is the evaluated model itself; another source (an xFinder run's
        folder, an endpoint) is built once per process.
        """
        if self.opts.extractor.strip() != MODEL:
            return None
        spec = self.opts.extractor_generator.strip()
        if spec == "local":
            return LocalGenerator(
                trainable.model,
                trainable.tokenizer,
                batch_size=self.run.client.eval_batch_size,
                device=device,
            )
        if not hasattr(self, "_answer_reader"):
            self._answer_reader = make_generator(spec)
        return self._answer_reader

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """The kept set's shares and diversity, every item's verdict, to `results`."""
        summary = summarize(self.records)
        summary["generator"] = self.opts.generator
        summary["last-test"] = getattr(self, "_last_test_scores", {})
        results.mkdir(parents=True, exist_ok=True)
        (results / "mustard.json").write_text(json.dumps(summary, indent=1))
        with open(results / "mustard-items.jsonl", "w") as out:
            for record in self.records:
                out.write(json.dumps(record) + "\n")
        outputs = getattr(self, "_last_outputs", [])
        if outputs:
            with open(results / "mustard-answers.jsonl", "w") as out:
                for question, written, truth in outputs:
                    row = {"question": question, "output": written, "answer": truth}
                    out.write(json.dumps(row) + "\n")
        return {"mustard": summary}
