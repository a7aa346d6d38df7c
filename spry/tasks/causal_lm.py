"""The base of the language-model tasks: a causal LM with LoRA, trained on answers.

Instruction tuning, answer extraction, theorem synthesis, code optimization: each
fine-tunes a causal LM to write an answer after a prompt. What they share is here,
so each task says only where its examples come from and how it scores them:

- the model: `spry.models.causal_lm.build_causal_lm` on the run's `model` (the
  offline SmolLM2-135M-Instruct by default, `run_defaults`), LoRA on `lora-targets`,
  frozen weights in `frozen-dtype`, LoRA A drawn from the run's seed;
- batches of (prompt, answer) pairs, `max-length` tokens at most, in which only the
  answer's tokens (and the end-of-sequence after it) are predicted: the prompt's
  labels are `IGNORE`, so it conditions the answer but is not learnt;
- the loss: `spry.language_modeling.causal_lm_loss`, the mean next-token
  cross-entropy over those positions, `chunk-tokens` positions through the output
  layer at a time so the full logits (batch x tokens x vocabulary) never exist.

A subclass defines `load_partition` and `test_data` (rows with `prompt` and
`answer` columns, or its own `example`), and usually its paper's `evaluate`; the
one here scores teacher-forced answer tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..config import ConfigError, ConfigValue
from ..engines.base import Batch
from ..generators import Generator, LocalGenerator, check_generator_spec, make_generator
from ..language_modeling import IGNORE, causal_lm_loss, next_token_labels
from ..models import TrainableModel
from ..models.causal_lm import DEFAULT_CAUSAL_LM, DEFAULT_TARGETS, build_causal_lm
from .base import Rows, Task, TaskOptions


@dataclass(frozen=True)
class CausalLMOptions(TaskOptions):
    """Settings every language-model task has; a task's own Options extend these."""

    chunk_tokens: int = field(
        default=64,
        metadata={"help": "positions per output-layer chunk of the loss (0: all)"},
    )

    def __post_init__(self) -> None:
        self.require_at_least(0, "chunk_tokens")


@dataclass(frozen=True)
class GeneratorOptions(CausalLMOptions):
    """A language-model task that also writes text: who writes it, checked early.

    `generator` is any spec `spry.generators.make_generator` builds ("local": the
    task's model; an OpenAI-compatible API root; module:function; a finished
    run's results folder) or one of the task's own writers (`OWN_WRITERS`).
    """

    OWN_WRITERS: ClassVar[tuple[str, ...]] = ()

    generator: str = field(
        default="local",
        metadata={
            "help": "who writes text: local (the task's model), an OpenAI-compatible "
            "http(s) API root, module:function, or a finished run's folder"
        },
    )
    generator_model: str = field(
        default="default", metadata={"help": "the model name an endpoint serves"}
    )
    generator_chat: bool = field(
        default=False,
        metadata={"help": "ask in chat form (the model's template / chat API)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_generator_spec(self.generator, also=self.OWN_WRITERS)
        except ValueError as error:
            raise ConfigError(f"`generator` {error}") from None

    def make_generator(
        self,
        local: Callable[[], LocalGenerator],
        spec: str | None = None,
        *,
        chat: bool | None = None,
    ) -> Generator:
        """The generator `spec` (else `generator`) names; `local()` builds ours.

        `chat` (else `generator-chat`): whether it is asked in chat form.
        """
        return make_generator(
            self.generator if spec is None else spec,
            local=local,
            model=self.generator_model,
            chat=self.generator_chat if chat is None else chat,
        )


def own_writer(
    trainable: TrainableModel,
    run: Any,
    device: str = "cpu",
    *,
    fit_prompt: bool = False,
) -> Callable[[], LocalGenerator]:
    """`trainable` as the "local" generator: greedy, batched as the run evaluates.

    Built only when asked for, so a run that writes with an endpoint never pays
    for it. With `fit_prompt`, prompts are cut to the run's `max-length` less the
    token to write; otherwise the whole prompt goes in (a conversation keeps its
    system turn).
    """

    def build() -> LocalGenerator:
        if trainable.tokenizer is None:
            raise ConfigError(
                "a local generator needs the task's model (generator=local)"
            )
        return LocalGenerator(
            trainable.model,
            trainable.tokenizer,
            batch_size=run.client.eval_batch_size,
            max_prompt_tokens=max(1, run.model.max_length - 1) if fit_prompt else 0,
            device=device,
        )

    return build


def frozen_writer(run: Any, device: str) -> TrainableModel:
    """The run's causal LM as a writer only: eval mode, no trainable tensors.

    For tasks whose rounds share text, not weights (SOAP, Introspective Tips):
    its LoRA starts at zero, so it writes as the base model does, and with no
    trainable names the core sends nothing for it.
    """
    cfg = run.model
    built = build_causal_lm(
        cfg.model, seed=run.runtime.seed, device=device, dtype=cfg.frozen_dtype
    )
    built.model.eval()
    return TrainableModel(model=built.model, tokenizer=built.tokenizer, names={})


class CausalLMTask(Task):
    """A causal LM with LoRA that learns to answer prompts (abstract: no data)."""

    Options: ClassVar[type[TaskOptions]] = CausalLMOptions
    run_defaults: ClassVar[Mapping[str, ConfigValue]] = {
        "model": DEFAULT_CAUSAL_LM,
        "lora-targets": ",".join(DEFAULT_TARGETS),
    }
    # Spry without a head: every trained weight gets a forward estimate. The
    # central probe's winner on a slice (benchmarks/results/lm_probe.md, and
    # sft_probe.md for sft): LoRA-FA (B only: half the dimension), K = 8 tangents
    # in one vmapped pass, plain SGD at lr 3; a linear decay keeps the learning once
    # it is made (compare_lm.md: without it, 84.6% at round 10, 79.2% at 30).
    # Measured federated on both LM tasks: compare_lm.md, compare_sft.md.
    method_defaults: ClassVar[Mapping[str, Mapping[str, ConfigValue]]] = {
        "spry": {
            "lora-fa": True,
            "num-tangents": 8,
            "client-optimizer": "sgd",
            "lr": 3.0,
            "lr-decay": "linear",
        }
    }

    # -- the model and the loss --------------------------------------------------------

    def build_model(self, device: str) -> TrainableModel:
        cfg = self.run.model
        return build_causal_lm(
            cfg.model,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            targets=cfg.target_modules,
            seed=self.run.runtime.seed,
            device=device,
            dtype=cfg.frozen_dtype,
            lora_dropout=cfg.lora_dropout,
            train_lora=cfg.train_lora,
            lora_fa=cfg.lora_fa,
            lora_b_init=cfg.lora_b_init,
        )

    def loss(  # type: ignore[override]  (a method: it reads `chunk-tokens`)
        self, model: nn.Module, batch: Batch
    ) -> tuple[Tensor, Any]:
        """Mean cross-entropy of the answer tokens; the side output is their count."""
        chunk = self.options.chunk_tokens  # type: ignore[attr-defined]
        return causal_lm_loss(model, batch, chunk_tokens=chunk)

    # -- examples and batches ----------------------------------------------------------

    def example(self, rows: Rows, index: int) -> tuple[str, str]:
        """Row `index` of `rows` as (prompt, answer); default: those two columns."""
        row = rows[index]  # type: ignore[index]
        return str(row["prompt"]), str(row["answer"])

    def encode(
        self, tokenizer: Any, pairs: Sequence[tuple[str, str]]
    ) -> dict[str, Tensor]:
        """One right-padded batch; labels are `IGNORE` but on answer tokens.

        Each sequence is prompt + answer + end-of-sequence, `max-length` tokens at
        most: a long prompt loses its start, so the answer is always kept.
        """
        limit = self.run.model.max_length
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        rows: list[tuple[list[int], list[int]]] = []
        for prompt, answer in pairs:
            asked = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            said = tokenizer(answer, add_special_tokens=False)["input_ids"]
            said = [*said, eos][:limit]
            room = limit - len(said)
            asked = asked[-room:] if room > 0 else []
            rows.append((asked, said))
        width = max((len(a) + len(s) for a, s in rows), default=0)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for i, (asked, said) in enumerate(rows):
            n = len(asked) + len(said)
            ids[i, :n] = torch.as_tensor(asked + said)
            mask[i, :n] = 1
            labels[i, len(asked) : n] = torch.as_tensor(said)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def batches(
        self,
        trainable: TrainableModel,
        rows: Rows,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        index = np.arange(len(rows)) if order is None else order
        for start in range(0, len(index), batch_size):
            chosen = index[start : start + batch_size]
            pairs = [self.example(rows, int(i)) for i in chosen]
            yield self.encode(trainable.tokenizer, pairs)

    # -- scoring -----------------------------------------------------------------------

    @torch.no_grad()
    def answer_loss(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> tuple[float, int]:
        """(summed teacher-forced loss of the answer tokens of `rows`, their count)."""
        total, count = 0.0, 0
        batches = self.batches(
            trainable, rows, batch_size=self.run.client.eval_batch_size
        )
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, n = self.loss(trainable.model, batch)
            total += float(loss) * int(n)
            count += int(n)
        return total, count

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Teacher-forced answer tokens: `accuracy` (argmax right) and mean `loss`.

        A second forward gives the argmax (the loss never holds all logits); tasks
        with a metric of their own (exact match of a generated answer) override it.
        """
        total, correct, count = 0.0, 0, 0
        batches = self.batches(
            trainable, rows, batch_size=self.run.client.eval_batch_size
        )
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, n = self.loss(trainable.model, batch)
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            predicted = trainable.model(**inputs).logits[:, :-1].argmax(-1)
            labels = next_token_labels(batch)
            correct += int(((predicted == labels) & (labels != IGNORE)).sum())
            total += float(loss) * int(n)
            count += int(n)
        if count == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        return {
            "accuracy": correct / count,
            "loss": total / count,
            "num-examples": len(rows),
            "answer-tokens": count,
        }

    # -- memory planning: every position an answer token, at full length ------------

    def probe_inputs(
        self, device: str, context: Mapping[str, ConfigValue]
    ) -> tuple[TrainableModel, Batch]:
        """The LoRA model and `batch-size` sequences of `max-length` answer tokens."""
        trainable = self.build_model(device)
        shape = (self.run.client.batch_size, self.run.model.max_length)
        token = trainable.tokenizer.eos_token_id if trainable.tokenizer else 0
        ids = torch.full(shape, int(token), dtype=torch.long, device=device)
        mask = torch.ones_like(ids)
        return trainable, {"input_ids": ids, "attention_mask": mask, "labels": ids}
