"""VeriX as a task: train a small image classifier with Spry, then explain it, verified.

VeriX (Wu, Wu & Barrett, 2023) explains a prediction by the set of input features
that must stay fixed for the prediction to be invariant under any epsilon-bounded
perturbation of all the others, and proves it with a constraint solver. Here:

- clients train a ReLU MLP on their partition of an offline image set (sklearn's
  8x8 digits by default; Debian's Fashion-MNIST when installed) with the run's
  strategy and engine, Spry's forward gradients by default;
- after the last round the server explains the final model on the first
  `explain-images` test images (`explanation`): features ranked by forward-mode
  sensitivity, then one solver query per feature (Marabou, or z3 without it), each
  explanation re-verified sound by an independent query; masks are drawn as PNGs
  under `explanations/` in the results folder, with `explanations.json`.

Metrics (the paper's): explanation size, seconds per explanation, soundness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import ConfigError
from ...engines.base import Batch
from ...jsonfile import write_json
from ...models import TrainableModel
from ..base import LabelledDataTask, TaskOptions, tensor_batches
from .images import ImageDataset, load_image_dataset


@dataclass(frozen=True)
class VerixOptions(TaskOptions):
    """The image set, the network's shape, and how explanations are computed."""

    dataset: str = field(default="digits", metadata={"help": "digits|fashion-mnist"})
    hidden: str = field(
        default="32", metadata={"help": "comma-separated hidden layer widths"}
    )
    epsilon: float = field(
        default=0.1, metadata={"help": "perturbation bound of freed pixels (0-1)"}
    )
    explain_images: int = field(
        default=20, metadata={"help": "test images explained after the last round"}
    )
    solver: str = field(default="auto", metadata={"help": "marabou|z3|auto"})
    checker: str = field(
        default="same",
        metadata={"help": "solver of the soundness re-check: same|marabou|z3"},
    )
    check_minimal: bool = field(
        default=True,
        metadata={"help": "also check that no explanation feature can be freed"},
    )

    def __post_init__(self) -> None:
        if self.dataset not in ("digits", "fashion-mnist"):
            raise ConfigError(
                f"`dataset` should be digits or fashion-mnist, got {self.dataset!r}"
            )
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"`epsilon` should be in (0, 1], got {self.epsilon}")
        self.require_at_least(0, "explain_images")
        if self.solver not in ("marabou", "z3", "auto"):
            raise ConfigError(
                f"`solver` should be marabou, z3 or auto, got {self.solver!r}"
            )
        if self.checker not in ("same", "marabou", "z3"):
            raise ConfigError(
                f"`checker` should be same, marabou or z3, got {self.checker!r}"
            )
        try:
            widths = self.widths
        except ValueError:
            widths = []
        if not widths or min(widths) < 1:
            raise ConfigError(
                f"`hidden` should be positive widths like '32,32', got {self.hidden!r}"
            )

    @property
    def widths(self) -> list[int]:
        return [int(w) for w in self.hidden.split(",") if w.strip()]


def image_classifier(pixels: int, widths: list[int], num_labels: int) -> nn.Sequential:
    """Flatten -> (Linear -> ReLU) per width -> `classifier`: what a solver reads."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    width_in = pixels
    for i, width in enumerate(widths, start=1):
        layers[f"hidden{i}"] = nn.Linear(width_in, width)
        layers[f"relu{i}"] = nn.ReLU()
        width_in = width
    layers["classifier"] = nn.Linear(width_in, num_labels)
    return nn.Sequential(layers)


def image_loss(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    logits = model(batch["pixels"])
    return F.cross_entropy(logits, batch["labels"]), logits


class VerixTask(LabelledDataTask):
    """An image classifier trained with Spry, explained with verified masks."""

    name: ClassVar[str] = "verix"
    summary: ClassVar[str] = (
        "VeriX: a ReLU MLP on offline digits (Spry), verified explanations "
        "(explanation size, seconds per explanation, soundness)"
    )
    Options = VerixOptions
    # 1,437 training digits: 20 clients of ~70; a small MLP trains with several
    # tangents and local epochs cheaply, and a plain average on the server
    run_defaults: ClassVar[dict[str, Any]] = {
        "num-clients": 20,
        "clients-per-round": 5,
        "eval-clients-per-round": 5,
        "num-tangents": 8,
        "server-optimizer": "avg",
        "local-epochs": 5,
        "lr": 0.003,
    }
    loss = staticmethod(image_loss)  # type: ignore[assignment]

    @property
    def opts(self) -> VerixOptions:
        return self.options  # type: ignore[return-value]

    @property
    def dataset(self) -> ImageDataset:
        return load_image_dataset(self.opts.dataset)

    def build_model(self, device: str) -> TrainableModel:
        height, width = self.dataset.shape
        return self.seeded_model(
            lambda: image_classifier(
                height * width, self.opts.widths, self.dataset.num_labels
            ),
            device,
        )

    def batches(
        self,
        trainable: TrainableModel,
        rows: datasets.Dataset,
        *,
        batch_size: int,
        order: np.ndarray | None = None,
    ) -> Iterator[Batch]:
        pixels, labels = _arrays(rows)
        columns = {
            "pixels": torch.from_numpy(pixels),
            "labels": torch.from_numpy(labels),
        }
        yield from tensor_batches(columns, batch_size, order)

    @torch.no_grad()
    def evaluate(
        self, trainable: TrainableModel, rows: datasets.Dataset, device: str = "cpu"
    ) -> dict[str, float]:
        if len(rows) == 0:
            return {"accuracy": 0.0, "loss": 0.0, "num-examples": 0}
        pixels, labels = _arrays(rows)
        batch = {
            "pixels": torch.from_numpy(pixels).to(device),
            "labels": torch.from_numpy(labels).to(device),
        }
        loss, logits = image_loss(trainable.model, batch)
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean()
        return {
            "accuracy": float(accuracy),
            "loss": float(loss),
            "num-examples": len(rows),
        }

    def finish(self, trainable: TrainableModel, results: Path) -> dict[str, Any]:
        """Explain the final model on the first test images; masks under `results`."""
        if not self.opts.explain_images:
            return {}
        from .explanation import explain, verify
        from .masks import save_mask_grid, save_mask_png
        from .solvers import make_solver

        net = trainable.model.cpu().eval()
        solver = make_solver(self.opts.solver)
        checker = (
            solver if self.opts.checker == "same" else make_solver(self.opts.checker)
        )
        pixels, labels = _arrays(self.test_data())
        count = min(self.opts.explain_images, len(labels))
        out = results / "explanations"
        out.mkdir(exist_ok=True)
        shape = self.dataset.shape
        records, images, explanations = [], [], []
        for i in range(count):
            x = torch.from_numpy(pixels[i])
            with torch.no_grad():
                predicted = int(net(x[None]).argmax(-1))
            explanation = explain(
                net, x, predicted, self.opts.epsilon, solver, checker=checker
            )
            minimal = self.opts.check_minimal and verify(
                net, x, explanation, solver, minimality=True
            )
            image = pixels[i].reshape(shape)
            save_mask_png(
                image,
                explanation,
                out / f"{i:03d}-pred{predicted}.png",
                title=f"test {i}: predicted {predicted}, true {labels[i]}",
            )
            images.append(image)
            explanations.append(explanation)
            records.append(
                {
                    "index": i,
                    "true-label": int(labels[i]),
                    "minimal": bool(minimal),
                    **_jsonable(asdict(explanation)),
                }
            )
        if images:
            save_mask_grid(images[:25], explanations[:25], results / "explanations.png")
        write_json(out / "explanations.json", records, indent=1)
        sizes = [len(e.features) for e in explanations]
        seconds = [e.seconds for e in explanations]
        return {
            "verix": {
                "solver": type(solver).__name__,
                "checker": type(checker).__name__,
                "epsilon": self.opts.epsilon,
                "explained": count,
                "sound": sum(bool(e.verified) for e in explanations),
                "minimal": sum(r["minimal"] for r in records)
                if self.opts.check_minimal
                else None,
                "mean-explanation-size": float(np.mean(sizes)) if sizes else 0.0,
                "explanation-size-fraction": (
                    float(np.mean(sizes)) / (shape[0] * shape[1]) if sizes else 0.0
                ),
                "mean-seconds-per-explanation": float(np.mean(seconds))
                if seconds
                else 0.0,
                "prediction-correct": sum(
                    r["label"] == r["true-label"] for r in records
                ),
            }
        }


def _arrays(rows: datasets.Dataset) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(rows["pixels"], dtype=np.float32).reshape(len(rows), -1)
    return pixels, np.asarray(rows["label"], dtype=np.int64)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in values.items()
    }
