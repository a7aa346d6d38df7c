"""SEP against CoOp as a client-side task: federated prompt tuning, base to new.

Yao et al., "SEP: Self-Enhanced Prompt Tuning for Visual-Language Model", 2024.
Paper: arxiv.org/abs/2405.15549; code: github.com/htyao89/SEP
CoOp (the baseline, `sep.method=coop`): Zhou et al., arxiv.org/abs/2109.01134.

- The model: the offline CLIP (`spry.vision.build`, built once and cached; the
  same default build CLIPScope uses) or, with `sep.clip=<name or folder>`, a
  transformers `CLIPModel` (images resized to its side, CLIP's normalization),
  frozen, with the prompt learner of `prompted.py`. Only prompts (and SEP's
  TFMs) are trainable tensors, so the run's engine (Spry's forward mode by
  default; backprop FedAvg, zero-order) differentiates `prompt_loss` with
  respect to them alone.
- The data: clients hold images of the *base* classes only (`classes.py`: the
  first half of Fashion-MNIST's and of the digits' classes), `sep.shots` train
  images per base class drawn from both sets' train splits, split among clients
  Dirichlet over the labels (the run's `partitioner`, `alpha`), so their class
  mixes differ. A training batch is classified among the 10 base classes.
- `evaluate` on the central test split (held-out images of all 20 classes,
  `sep.test-per-class` per class) returns CoOp/SEP's base-to-new numbers:
  `base-accuracy` (base images among base classes), `new-accuracy` (new images
  among new classes) and `harmonic-mean`; `accuracy` is the base accuracy (the
  one a client's held-out base images also give). Round 0 is zero-shot with the
  initial prompts (CoOp from "a photo of a"'s word embeddings).
- The per-round table (metrics.csv) keeps `accuracy` and `loss` only, so the
  server-side task also keeps each central evaluation's numbers in order
  (`evaluations`), and `finish` scores the initial (zero-shot) and the final
  prompts once more and writes both, with that history, to `sep.json`; its
  `sep` entry lands in summary.json, which the benchmark reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...config import ConfigError, RunConfig
from ...engines.base import Batch
from ...jsonfile import write_json
from ...models import TrainableModel
from ..base import LabelledDataTask, TaskOptions
from ..offline_clip import OfflineClipOptions
from .classes import ClassSplit, base_to_new_split, harmonic_mean
from .prompted import (
    METHODS,
    PromptConfig,
    PromptedClip,
    prompt_loss,
    trainable_names,
)

SELECTIONS = ("input", "batch")


@dataclass(frozen=True)
class SepOptions(OfflineClipOptions):
    """The method, the prompt learner, the CLIP and the data sizes."""

    method: str = field(default="sep", metadata={"help": "|".join(METHODS)})
    context_init: str = field(
        default="a photo of a",
        metadata={"help": "words starting the text context ('': random)"},
    )
    context_tokens: int = field(
        default=4, metadata={"help": "text context tokens when context-init is ''"}
    )
    visual_prompts: int = field(default=4, metadata={"help": "SEP: visual prompts"})
    tfm_hidden: int = field(default=256, metadata={"help": "SEP: TFM MLP width"})
    selection: str = field(
        default="input",
        metadata={"help": "SEP visual tokens chosen per input | per batch (code)"},
    )
    ensemble: bool = field(
        default=True, metadata={"help": "SEP: add the frozen features"}
    )
    text_consistency: float = field(
        default=8.0, metadata={"help": "SEP: text consistency weight"}
    )
    visual_consistency: float = field(
        default=6.0, metadata={"help": "SEP: image consistency weight"}
    )
    shots: int = field(
        default=64, metadata={"help": "train images per base class (0: all)"}
    )
    test_per_class: int = field(
        default=100, metadata={"help": "held-out images per class (0: all)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in METHODS:
            raise ConfigError(
                f"`method` should be one of {METHODS}, got {self.method!r}"
            )
        if self.selection not in SELECTIONS:
            raise ConfigError(
                f"`selection` should be one of {SELECTIONS}, got {self.selection!r}"
            )
        self.require_at_least(
            1,
            "context_tokens",
            "visual_prompts",
            "tfm_hidden",
        )
        self.require_at_least(
            0,
            "shots",
            "test_per_class",
            "text_consistency",
            "visual_consistency",
        )

    def prompt_config(self) -> PromptConfig:
        return PromptConfig(
            method=self.method,
            context_init=self.context_init,
            context_tokens=self.context_tokens,
            visual_prompts=self.visual_prompts,
            tfm_hidden=self.tfm_hidden,
            per_input_selection=self.selection == "input",
            ensemble=self.ensemble,
            text_consistency=self.text_consistency,
            visual_consistency=self.visual_consistency,
        )


@dataclass(frozen=True)
class BaseToNewImages:
    """Rows (`index` into the image tensors, `label` a global class id)."""

    train: datasets.Dataset
    test: datasets.Dataset
    train_images: Tensor
    test_images: Tensor
    split: ClassSplit

    def majority_rate(self) -> float:
        labels = self.test["label"]
        return max(labels.count(c) for c in set(labels)) / max(1, len(labels))


def _sample_per_class(
    labels: Tensor, classes: tuple[int, ...], limit: int, seed: int
) -> list[int]:
    """Up to `limit` indices per class of `classes` (all when 0), seeded, sorted."""
    generator = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for c in classes:
        index = (labels == c).nonzero().flatten()
        if 0 < limit < len(index):
            index = index[torch.randperm(len(index), generator=generator)[:limit]]
        chosen += index.tolist()
    return sorted(chosen)


class SepTask(LabelledDataTask):
    """Federated SEP (or CoOp) prompt tuning of a frozen CLIP, base to new."""

    name: ClassVar[str] = "sep"
    summary: ClassVar[str] = (
        "SEP prompt tuning (TFM at every layer of both towers) vs CoOp on the "
        "offline CLIP or a transformers CLIPModel: base, new and harmonic-mean "
        "accuracy"
    )
    Options = SepOptions
    # The authors' Adam rate (their configs' OPTIM.LR 0.0025) for the client step
    run_defaults: ClassVar[dict[str, Any]] = {
        "num-clients": 10,
        "clients-per-round": 5,
        "eval-clients-per-round": 0,
        "batch-size": 16,
        "lr": 0.0025,
    }
    loss = staticmethod(prompt_loss)  # type: ignore[assignment]

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        super().__init__(run, options)
        self._clip: Any = None
        self.evaluations: list[dict[str, float]] = []  # central, in order

    @property
    def opts(self) -> SepOptions:
        return self.options  # type: ignore[return-value]

    # -- the model -----------------------------------------------------------------

    def clip(self) -> Any:
        """The CLIP `sep.clip` names, built or loaded once per process."""
        if self._clip is None:
            self._clip = self.opts.vision_language_model()
            self._clip.eval().requires_grad_(False)
        return self._clip

    def build_model(self, device: str) -> TrainableModel:
        split = base_to_new_split()
        clip = self.clip()
        frozen = [split.caption(c) for c in range(len(split.names))]
        trainable = self.seeded_model(
            lambda: PromptedClip(
                clip, split.names, frozen, self.opts.prompt_config(), split.base
            ),
            device,
        )
        # seeded_model names every parameter; the CLIP's are frozen, not shared
        names = trainable_names(trainable.model)  # type: ignore[arg-type]
        return TrainableModel(model=trainable.model, tokenizer=None, names=names)

    # -- the data ------------------------------------------------------------------

    @cached_property
    def dataset(self) -> BaseToNewImages:  # type: ignore[override]
        from ...vision.images import load_image_set

        split = base_to_new_split()
        sets = [load_image_set(name) for name in dict.fromkeys(split.image_set)]
        offsets = np.cumsum([0] + [len(s.class_names) for s in sets[:-1]])

        def joined(part: str) -> tuple[Tensor, Tensor]:
            images = torch.cat([getattr(s, f"{part}_images") for s in sets])
            labels = torch.cat(
                [
                    getattr(s, f"{part}_labels") + int(offset)
                    for s, offset in zip(sets, offsets, strict=True)
                ]
            )
            return images, labels

        train_images, train_labels = joined("train")
        test_images, test_labels = joined("test")
        seed = self.run.runtime.seed
        train = _sample_per_class(train_labels, split.base, self.opts.shots, seed)
        test = _sample_per_class(
            test_labels, split.base + split.new, self.opts.test_per_class, seed=0
        )

        def rows(index: list[int], labels: Tensor) -> datasets.Dataset:
            return datasets.Dataset.from_dict(
                {"index": index, "label": labels[index].tolist()}
            )

        return BaseToNewImages(
            rows(train, train_labels),
            rows(test, test_labels),
            train_images,
            test_images,
            split,
        )

    def _images_for(self, rows: datasets.Dataset) -> Tensor:
        is_test = rows._fingerprint == self.dataset.test._fingerprint
        return self.dataset.test_images if is_test else self.dataset.train_images

    def batches(
        self,
        trainable: TrainableModel,
        rows: datasets.Dataset,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
        classes: tuple[int, ...] | None = None,
        images: Tensor | None = None,
    ) -> Iterator[Batch]:
        """Images with labels as positions in `classes` (default: the base ones).

        `images` is the tensor the rows' `index` points into (default: the test
        images for the test split, else the train images).
        """
        classes = self.dataset.split.base if classes is None else classes
        position = {c: i for i, c in enumerate(classes)}
        images = self._images_for(rows) if images is None else images
        index = torch.as_tensor(rows["index"], dtype=torch.long)
        labels = torch.as_tensor([position[y] for y in rows["label"]])
        order_t = torch.as_tensor(np.arange(len(rows)) if order is None else order)
        for start in range(0, len(order_t), batch_size):
            part = order_t[start : start + batch_size]
            yield {"images": images[index[part]], "labels": labels[part]}

    @torch.no_grad()
    def _accuracy(
        self,
        trainable: TrainableModel,
        rows: datasets.Dataset,
        classes: tuple[int, ...],
        device: str,
    ) -> tuple[float, float, int]:
        """Accuracy and mean loss of the rows of `classes`, among `classes`."""
        wanted = set(classes)
        keep = [i for i, y in enumerate(rows["label"]) if y in wanted]
        if not keep:
            return 0.0, 0.0, 0
        images = self._images_for(rows)  # before `select` changes the fingerprint
        subset = rows.select(keep)
        candidates = torch.tensor(classes, device=device)
        correct, loss_sum = 0, 0.0
        batch_size = self.run.client.eval_batch_size
        for batch in self.batches(
            trainable, subset, batch_size=batch_size, classes=classes, images=images
        ):
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = trainable.model(batch["images"], candidates)
            loss_sum += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
            correct += int((logits.argmax(-1) == batch["labels"]).sum())
        return correct / len(keep), loss_sum / len(keep), len(keep)

    def evaluate(
        self, trainable: TrainableModel, rows: datasets.Dataset, device: str = "cpu"
    ) -> dict[str, float]:
        """Base and new accuracy, each among its own classes, and their H."""
        split = self.dataset.split
        base, base_loss, n_base = self._accuracy(trainable, rows, split.base, device)
        new, _, n_new = self._accuracy(trainable, rows, split.new, device)
        metrics = {
            "accuracy": base,
            "loss": base_loss,
            "num-examples": n_base + n_new,
            "base-accuracy": base,
        }
        if n_new:  # the central test split; clients hold base classes only
            metrics |= {"new-accuracy": new, "harmonic-mean": harmonic_mean(base, new)}
        if rows._fingerprint == self.dataset.test._fingerprint:
            self.evaluations.append(dict(metrics))
        return metrics

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """Base, new and H of the initial and the final prompts; `sep.json`."""
        history = list(self.evaluations)
        final_state = trainable.state()
        keys = ("base-accuracy", "new-accuracy", "harmonic-mean", "loss")
        device = next(iter(trainable.parameters().values())).device.type
        initial = self._initial.get(device) or self.build_model(device).state()
        final = self.evaluate(trainable, self.test_data(), device)
        trainable.load(initial)
        zero_shot = self.evaluate(trainable, self.test_data(), device)
        trainable.load(final_state)
        split = self.dataset.split
        summary = {
            "method": self.opts.method,
            "zero-shot": {k: zero_shot[k] for k in keys},
            "final": {k: final[k] for k in keys},
            "evaluations": history,
            "base-classes": [split.names[c] for c in split.base],
            "new-classes": [split.names[c] for c in split.new],
            "train-images": len(self.dataset.train),
            "test-images": len(self.dataset.test),
            "trainable-parameters": sum(
                p.numel() for p in trainable.parameters().values()
            ),
        }
        write_json(results / "sep.json", summary)
        return {"sep": {k: v for k, v in summary.items() if k != "evaluations"}}
