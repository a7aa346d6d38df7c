"""Prompt-based classification on a causal LM, LoRA only (MeZO's setting).

Malladi et al., "Fine-Tuning Language Models with Just Forward Passes" (MeZO),
NeurIPS 2023, arxiv.org/abs/2305.17333: a classification set becomes next-word
prediction. Each sentence goes into a template ("Review: {text}", a newline,
"Sentiment:") and each class has a label word (" negative", " positive"); the
prediction is the word the model finds most likely next, and the loss is the
cross-entropy over the label words' logits at the prompt's last token. There is
no head: LoRA on the attention projections is all that trains, so the forward
gradients do all the learning (the paper's headline cases), and round 0 is the
model's zero-shot accuracy.

The model is the causal-LM base's (`spry.tasks.causal_lm`: SmolLM2-135M-Instruct
offline, LoRA on q_proj and v_proj), the data the classification task's (any
labelled set of the run's `dataset`, Dirichlet client partitions over its labels,
the fixed test split), so the encoder task and this one compare on the same
sentences.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...class_metrics import class_scores, confusion
from ...config import ConfigError, ConfigValue
from ...data import load_for
from ...data.sources import TextDataset
from ...engines.base import Batch
from ...models import TrainableModel
from ..base import LabelledDataTask, Rows
from ..causal_lm import CausalLMOptions, CausalLMTask
from .prompts import PromptTemplate, label_token_ids, pad_right
from .scoring import as_ids, label_word_logits, label_word_loss

if TYPE_CHECKING:
    from ...config import RunConfig
    from ..base import TaskOptions


@dataclass(frozen=True)
class LMClassificationOptions(CausalLMOptions):
    """The prompt and the label words.

    `chunk-tokens` (inherited) has nothing to chunk here: only the label words'
    logits are ever formed.
    """

    template: str = field(
        default="Review: {text}\nSentiment:",
        metadata={
            "help": "the prompt around each sentence, with {text} where it goes "
            "(\\n for a newline); the label word follows its end"
        },
    )
    label_words: str = field(
        default="",
        metadata={
            "help": "comma-separated, one per class in label order, each scored "
            "by its first token, after a space unless the template ends with one "
            "(default: the class names)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        PromptTemplate.parse(self.template)  # raises if {text} is missing
        if self.label_words.strip():
            words = self.words()
            if any(not w for w in words):
                raise ConfigError(
                    f"`label-words` should be comma-separated words, got "
                    f"{self.label_words!r}"
                )
            if len(set(words)) != len(words):
                raise ConfigError(
                    f"`label-words` should differ from each other, got {words}"
                )

    def words(self) -> tuple[str, ...]:
        """The given label words, stripped; () when the class names are wanted."""
        if not self.label_words.strip():
            return ()
        return tuple(w.strip() for w in self.label_words.split(","))


class LMClassificationTask(CausalLMTask, LabelledDataTask):
    """A causal LM with LoRA scores label words after a prompt; accuracy on a split."""

    name: ClassVar[str] = "lm-classification"
    summary: ClassVar[str] = (
        "prompt-based classification (MeZO): LoRA on SmolLM2, label words after "
        "a template, Rotten Tomatoes (accuracy, macro-F1)"
    )
    Options: ClassVar[type[CausalLMOptions]] = LMClassificationOptions
    # Rotten Tomatoes prompts: mean 31 tokens, 95th percentile 50; 64 cuts the
    # start of 0.3% of the sentences (the template's tail always stays).
    run_defaults: ClassVar[Mapping[str, ConfigValue]] = {
        **CausalLMTask.run_defaults,
        "max-length": 64,
    }

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        super().__init__(run, options)
        self.template = PromptTemplate.parse(self.opts.template)
        self._words: tuple[str, ...] | None = None  # set by the memory probe
        self._label_ids: Tensor | None = None

    @property
    def opts(self) -> LMClassificationOptions:
        return self.options  # type: ignore[return-value]

    @property
    def dataset(self) -> TextDataset:
        return load_for(self.run.data)  # cached by config

    # -- label words -------------------------------------------------------------------

    def label_words(self) -> tuple[str, ...]:
        """One word per class in label order: the option's, or the class names."""
        if self._words is not None:
            return self._words
        names = self.dataset.label_names
        words = self.opts.words() or tuple(names)
        if len(words) != len(names):
            raise ConfigError(
                f"`lm-classification.label-words` gives {len(words)} words "
                f"{list(words)} for the {len(names)} classes {list(names)} of "
                f"{self.run.data.dataset!r}: give one per class, in label order"
            )
        return words

    @property
    def label_ids(self) -> Tensor:
        """(C,) token ids scored for the classes; known once the model is built."""
        if self._label_ids is None:
            raise RuntimeError("build the model first: label ids need its tokenizer")
        return self._label_ids

    # -- the model and the loss --------------------------------------------------------

    def language_model(self, device: str) -> TrainableModel:
        """The causal LM with LoRA (the base's: the run's `model` and LoRA keys)."""
        return super().build_model(device)

    def build_model(self, device: str) -> TrainableModel:
        """The LM, and the label words' token ids from its tokenizer (checked)."""
        trainable = self.language_model(device)
        ids = label_token_ids(
            trainable.tokenizer, self.label_words(), self.template.word_prefix
        )
        self._label_ids = as_ids(ids)
        return trainable

    def loss(  # type: ignore[override]  (a method: it reads the label ids)
        self, model: nn.Module, batch: Batch
    ) -> tuple[Tensor, Any]:
        """Cross-entropy over the label words; the side output is their logits."""
        return label_word_loss(model, batch, self.label_ids)

    # -- batches -----------------------------------------------------------------------

    def encode(  # type: ignore[override]  (sentences and labels, not pairs)
        self, tokenizer: Any, texts: list[str], labels: list[int]
    ) -> dict[str, Tensor]:
        """One right-padded batch of prompts with their class labels."""
        rows = self.template.token_ids(tokenizer, texts, self.run.model.max_length)
        pad = tokenizer.pad_token_id
        batch = pad_right(rows, tokenizer.eos_token_id if pad is None else pad)
        batch["labels"] = torch.as_tensor(labels, dtype=torch.long)
        return batch

    def batches(
        self,
        trainable: TrainableModel,
        rows: Rows,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        texts, labels = rows["text"], rows["label"]  # type: ignore[index]
        index = np.arange(len(rows)) if order is None else order
        for start in range(0, len(index), batch_size):
            chosen = [int(i) for i in index[start : start + batch_size]]
            yield self.encode(
                trainable.tokenizer,
                [texts[i] for i in chosen],
                [labels[i] for i in chosen],
            )

    # -- scoring -----------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: Rows, device: str = "cpu"
    ) -> dict[str, float]:
        """Accuracy, macro-F1, balanced accuracy and mean loss over `rows`.

        The prediction is the label word with the highest likelihood. Rows go in
        order of length, so a batch pads to a similar length; the metrics do not
        depend on the order.
        """
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        num_classes = len(self.label_ids)
        by_length = np.argsort([len(t) for t in rows["text"]], kind="stable")  # type: ignore[index]
        matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        total_loss = 0.0
        batches = self.batches(
            trainable, rows, batch_size=self.run.client.eval_batch_size, order=by_length
        )
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = label_word_logits(trainable.model, batch, self.label_ids)
            labels = batch["labels"]
            total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            predicted = logits.argmax(-1)
            matrix += confusion(
                labels.cpu().numpy(), predicted.cpu().numpy(), num_classes
            )
        count = int(matrix.sum())
        return {
            "accuracy": float(np.trace(matrix)) / count,
            "loss": total_loss / count,
            "num-examples": count,
            **class_scores(matrix),
        }

    # -- memory planning: full-length prompts --------------------------------------

    def probe_context(self) -> dict[str, ConfigValue]:
        """The label words (the class names come from the whole data set)."""
        return {"label-words": json.dumps(list(self.label_words()))}

    def probe_inputs(
        self, device: str, context: Mapping[str, ConfigValue]
    ) -> tuple[TrainableModel, Batch]:
        """The LoRA model and `batch-size` prompts of `max-length` tokens.

        Prompts are padded to the longest of their batch, so a client's peak is at
        a batch of full-length ones; the probe does not read the data set.
        """
        self._words = tuple(json.loads(str(context["label-words"])))
        trainable = self.build_model(device)
        size, length = self.run.client.batch_size, self.run.model.max_length
        token = trainable.tokenizer.eos_token_id if trainable.tokenizer else 0
        ids = torch.full((size, length), int(token), dtype=torch.long, device=device)
        labels = torch.arange(size, device=device) % len(self.label_ids)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return trainable, {**batch, "labels": labels}
