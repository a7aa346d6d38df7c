"""CLIPScope as a client-side task: the class prior from counts clients share.

Fu et al., "CLIPScope: Enhancing Zero-Shot OOD Detection with Bayesian Scoring",
WACV 2025. Paper: arxiv.org/abs/2405.14737; code: github.com/fu1001hao/CLIPScope

The vision-language model is the offline CLIP (`spry.vision.build`, built once
and cached) or a transformers `CLIPModel` (`clipscope.clip=<name or folder>`).
Clients hold Fashion-MNIST train images of the pair's ID classes, Dirichlet
over labels by default, so their class mixes differ.

- The rounds: CLIPScope trains nothing; the federation's rounds train the one
  tensor its score is sensitive to and that the framework can federate, the
  logit scale (`log_scale`, CLIP's temperature), by cross-entropy over the ID
  captions on the clients' images (a temperature calibration). The image and
  text towers stay frozen; image features are computed once per client.
- After the last round each client shares only how many of its images the
  model assigns to each ID class (`report`); the server sums the counts
  (`merge_reports`), the smoothed sum is the class prior p(c).
- `finish` mines OOD labels from WordNet in the model's text space and scores
  the held-out ID/OOD pair with MSP, energy and CLIPScope's variants (with and
  without mined labels; the clients' prior and a uniform one; online), writing
  `clipscope.json` and `clipscope-scores.png` into the results folder.

A caveat of the offline model: for `fashion-near` it is built with the
near-OOD classes held out (`OfflineClipConfig.held_out_classes`: neither their
images nor their captions are trained on), but for `fashion-vs-digits` its image
tower was trained on the digits too, so that OOD side is not unseen the way
ImageNet's OOD sets are unseen by CLIP.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ConfigError, RunConfig
from ...engines.base import Batch
from ...jsonfile import write_json
from ...models import TrainableModel
from ...vision.clip import MAX_LOGIT_SCALE, VisionLanguageModel
from ..base import LabelledDataTask, TaskOptions, tensor_batches
from ..offline_clip import OfflineClipOptions
from .detector import ID_TEMPLATE, embed_texts, mine_from_wordnet
from .evaluation import (
    METHODS,
    NEAR_OOD_CLASSES,
    OODPair,
    compare,
    ood_pairs,
    plot_score_distributions,
)

PAIRS = ("fashion-vs-digits", "fashion-near")


@dataclass(frozen=True)
class ClipscopeOptions(OfflineClipOptions):
    """The pair, the model, the mining and what `finish` scores."""

    pair: str = field(default="fashion-vs-digits", metadata={"help": "|".join(PAIRS)})
    num_nearest: int = field(
        default=100, metadata={"help": "mined labels nearest to the ID classes"}
    )
    num_farthest: int = field(
        default=100, metadata={"help": "mined labels farthest from the ID classes"}
    )
    percentile: float = field(
        default=5.0, metadata={"help": "percentile of -cos over ID classes (0-100)"}
    )
    wordnet_candidates: int = field(
        default=0, metadata={"help": "WordNet nouns drawn for mining (0: all)"}
    )
    train_images: int = field(
        default=0, metadata={"help": "ID train images split among clients (0: all)"}
    )
    max_images: int = field(
        default=2000, metadata={"help": "held-out images scored per side (0: all)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pair not in PAIRS:
            raise ConfigError(f"`pair` should be one of {PAIRS}, got {self.pair!r}")
        self.require_at_least(
            0,
            "num_nearest",
            "num_farthest",
            "wordnet_candidates",
            "train_images",
            "max_images",
        )
        if not 0.0 <= self.percentile <= 100.0:
            raise ConfigError(
                f"`percentile` should be in [0, 100], got {self.percentile}"
            )


class TemperatureHead(nn.Module):
    """ID logits from frozen image features: exp(log_scale) * cos(image, class).

    `log_scale` starts at the vision-language model's own (a `(1,)` copy: a
    tensor of one element travels in Flower records like any other);
    `finish` writes the trained value back into the model before scoring.
    """

    def __init__(self, log_scale: float, id_features: Tensor) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor([log_scale]))
        self.register_buffer("id_features", id_features)

    def forward(self, image_features: Tensor) -> Tensor:
        scale = self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()
        return scale * image_features @ self.id_features.T  # (B, C)


def temperature_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    logits = model(batch["features"])
    return F.cross_entropy(logits, batch["labels"]), logits


@dataclass(frozen=True)
class IdImages:
    """Rows (`index` into the image tensors, `label`) of the ID classes."""

    train: datasets.Dataset
    test: datasets.Dataset
    train_images: Tensor
    test_images: Tensor
    class_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    def majority_rate(self) -> float:
        labels = self.test["label"]
        return max(labels.count(c) for c in set(labels)) / max(1, len(labels))


class ClipscopeTask(LabelledDataTask):
    """Zero-shot OOD detection; clients share prediction counts for the prior."""

    name: ClassVar[str] = "clipscope"
    summary: ClassVar[str] = (
        "CLIPScope zero-shot OOD detection: WordNet-mined labels, the class prior "
        "from clients' prediction counts (AUROC, FPR95 vs MSP and energy)"
    )
    Options = ClipscopeOptions
    # One scalar trains: a few tangents are cheap, a plain server average
    run_defaults: ClassVar[dict[str, Any]] = {
        "num-clients": 10,
        "clients-per-round": 5,
        "eval-clients-per-round": 5,
        "num-tangents": 4,
        "server-optimizer": "avg",
        "lr": 0.01,
    }
    has_report: ClassVar[bool] = True
    loss = staticmethod(temperature_loss)  # type: ignore[assignment]

    def __init__(self, run: RunConfig, options: TaskOptions) -> None:
        super().__init__(run, options)
        self._clip: VisionLanguageModel | None = None
        self._features: dict[str, Tensor] = {}
        self._counts: np.ndarray | None = None

    @property
    def opts(self) -> ClipscopeOptions:
        return self.options  # type: ignore[return-value]

    # -- the model -----------------------------------------------------------------

    def clip(self) -> VisionLanguageModel:
        """The vision-language model, built (or loaded) once per process."""
        if self._clip is None:
            self._clip = self.opts.vision_language_model(self.unseen_classes())
            self._clip.eval().requires_grad_(False)
        return self._clip

    def unseen_classes(self) -> tuple[str, ...]:
        """Classes the offline CLIP must never train on: the near-OOD ones."""
        if self.opts.pair != "fashion-near":
            return ()
        from ...vision.images import FASHION_CLASSES

        return tuple(FASHION_CLASSES[c] for c in NEAR_OOD_CLASSES)

    def text_key(self) -> str:
        """Names the model's text space for the noun-feature cache."""
        if self.opts.clip == "offline":
            return "offline:all-MiniLM-L6-v2"  # the locked text tower's space
        return f"transformers:{self.opts.clip}"

    def log_scale(self) -> nn.Parameter:
        clip = self.clip()
        if hasattr(clip, "log_scale"):
            return clip.log_scale  # type: ignore[no-any-return]
        return clip.model.logit_scale  # type: ignore[no-any-return,union-attr]

    def build_model(self, device: str) -> TrainableModel:
        id_features = embed_texts(
            self.clip(), [ID_TEMPLATE.format(n) for n in self.dataset.class_names]
        )
        head = TemperatureHead(float(self.log_scale()), id_features)
        return TrainableModel(
            model=head.to(device).eval(),
            tokenizer=None,
            names={"log_scale": "log_scale"},
        )

    # -- the data ------------------------------------------------------------------

    @cached_property
    def pair(self) -> OODPair:
        far, near = ood_pairs(self.opts.max_images, NEAR_OOD_CLASSES, seed=0)
        return far if self.opts.pair == "fashion-vs-digits" else near

    @cached_property
    def dataset(self) -> IdImages:  # type: ignore[override]
        from ...vision.images import load_image_set

        fashion = load_image_set("fashion-mnist")
        excluded = set(NEAR_OOD_CLASSES) if self.opts.pair == "fashion-near" else set()
        id_classes = [c for c in range(10) if c not in excluded]
        remap = {c: i for i, c in enumerate(id_classes)}

        def rows(labels: Tensor, limit: int) -> datasets.Dataset:
            index = [i for i, y in enumerate(labels.tolist()) if y in remap]
            if 0 < limit < len(index):
                generator = torch.Generator().manual_seed(self.run.runtime.seed)
                keep = torch.randperm(len(index), generator=generator)[:limit]
                index = [index[i] for i in sorted(keep.tolist())]
            return datasets.Dataset.from_dict(
                {
                    "index": index,
                    "label": [remap[int(labels[i])] for i in index],
                }
            )

        return IdImages(
            rows(fashion.train_labels, self.opts.train_images),
            rows(fashion.test_labels, self.opts.max_images),
            fashion.train_images,
            fashion.test_images,
            tuple(fashion.class_names[c] for c in id_classes),
        )

    def image_features(self, rows: datasets.Dataset, images: Tensor) -> Tensor:
        """`(N, D)` frozen image features of `rows`, once per rows per process."""
        key = rows._fingerprint
        if key not in self._features:
            index = torch.as_tensor(rows["index"], dtype=torch.long)
            clip = self.clip()
            with torch.no_grad():
                parts = [
                    clip.image_features(images[index[i : i + 512]]).float()
                    for i in range(0, len(index), 512)
                ]
            self._features[key] = torch.cat(parts) if parts else torch.zeros(0, 1)
        return self._features[key]

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
    ) -> Iterator[Batch]:
        features = self.image_features(rows, self._images_for(rows))
        labels = torch.as_tensor(rows["label"], dtype=torch.long)
        yield from tensor_batches(
            {"features": features, "labels": labels}, batch_size, order
        )

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: datasets.Dataset, device: str = "cpu"
    ) -> dict[str, float]:
        """Zero-shot accuracy among the ID class names, and the loss."""
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        batch = next(self.batches(trainable, rows, batch_size=len(rows)))
        loss, logits = temperature_loss(trainable.model, batch)
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return {
            "accuracy": float(accuracy),
            "loss": float(loss),
            "num-examples": len(rows),
            "logit-scale": float(trainable.model.log_scale.exp()),  # type: ignore[arg-type]
        }

    # -- what clients share, and the server's merge ----------------------------------

    @torch.no_grad()
    def report(
        self, trainable: TrainableModel, partition_id: int, device: str = "cpu"
    ) -> dict[str, float]:
        """How many of this client's images the model assigns to each ID class."""
        from .prior import prediction_counts

        data = self.partition(partition_id)
        counts = np.zeros(self.dataset.num_labels, dtype=np.int64)
        for rows in (data.train, data.held_out):
            if len(rows):
                features = self.image_features(rows, self.dataset.train_images)
                counts += prediction_counts(
                    trainable.model(features), self.dataset.num_labels
                )
        return {f"predicted-{c}": float(n) for c, n in enumerate(counts)}

    def merge_reports(self, reports: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """The clients' counts summed; kept for `finish`'s class prior."""
        from .prior import merge_counts

        names = self.dataset.class_names
        shares = [
            np.array([int(r.get(f"predicted-{c}", 0)) for c in range(len(names))])
            for r in reports
        ]
        if not shares:
            return {}
        self._counts = merge_counts(shares)
        merged = {
            f"predicted-{n}": float(k) for n, k in zip(names, self._counts, strict=True)
        }
        return {**merged, "images": float(self._counts.sum())}

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """Mine WordNet, score the pair with every method, write JSON and picture."""
        clip = self.clip()
        with torch.no_grad():  # score at the scale the federation trained
            self.log_scale().fill_(float(trainable.model.log_scale))
        pair = self.pair
        mined = mine_from_wordnet(
            clip,
            pair.id_names,
            num_nearest=self.opts.num_nearest,
            num_farthest=self.opts.num_farthest,
            percentile=self.opts.percentile,
            max_candidates=self.opts.wordnet_candidates,
            seed=self.run.runtime.seed,
            text_key=self.text_key(),
        )
        result = compare(
            clip,
            pair,
            mined,
            num_clients=self.run.data.num_clients,
            counts=self._counts,
            seed=self.run.runtime.seed,
        )
        plot_score_distributions([result], results / "clipscope-scores.png")
        summary = {
            "pair": pair.name,
            "id-classes": list(pair.id_names),
            "id-images": len(pair.id_images),
            "ood-images": len(pair.ood_images),
            "prior-source": "clients" if self._counts is not None else "simulated",
            "prior": result.prior.tolist(),
            "logit-scale": float(clip.logit_scale),
            "mined-nearest": list(mined.nearest),
            "mined-farthest": list(mined.farthest),
            **{m: result.metrics[m] for m in METHODS},
        }
        write_json(results / "clipscope.json", summary)
        brief = {k: v for k, v in summary.items() if not k.startswith("mined-")}
        return {"clipscope": brief}
