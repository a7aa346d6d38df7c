"""Build the offline CLIP once, cache it, and report how well it reads images.

No package ships CLIP weights, so the default vision-language model is made here
from offline parts: the real all-MiniLM-L6-v2 sentence encoder, locked, as the
text tower, and a small ViT image tower (plus its projection and CLIP's learnable
temperature) trained contrastively against that encoder's embeddings of captions
("a photo of a {name}", "a handwritten digit {name}", ...) of the offline image
sets' class names: Fashion-MNIST and scikit-learn's digits, two domains.

The loss is CLIP's symmetric InfoNCE (Radford et al. 2021, arxiv.org/abs/2103.00020,
Fig. 3) with the batch's texts being one caption per class of both sets (a
template drawn per class and step). Images of one class share a caption, so
"the matching pair" is a class, not a diagonal: image -> text is cross-entropy
over the classes' captions; text -> image is cross-entropy against the uniform
distribution over the batch's images of that class (the captions of classes
absent from the batch have no image to match and are left out of that half).

The text tower is locked, so every caption's embedding is computed once before
training; a step runs only the image tower. The trained tensors (image tower and
temperature; the text tower ships in its own package) go under
`$SPRY_CACHE/offline-clip/<key>/`, keyed by a digest of the config, with the
config and the report beside them; the next build with that config loads them.

    python -m spry.vision.build            # build (or load) and print the report
    python -m spry.vision.build --epochs 1 --max-train-per-set 2000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cache import cache_root
from .clip import OfflineClip, VisionLanguageModel, build_offline_clip_model
from .contrastive import (
    CLASS_NAMES,
    TEMPLATES,
    class_text_features,
    contrastive_loss,
    zero_shot_accuracy,
    zero_shot_classifier,
)
from .images import ImageSet, load_image_set
from .vit import ViTConfig

FORMAT_VERSION = 1  # bump when the stored layout or the training changes meaning
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class OfflineClipConfig:
    """Everything the build depends on; its digest names the cache entry.

    Parameters
    ----------
    vit : ViTConfig (default: ViTConfig())
        The image tower's shape.
    text_model : str (default: "all-MiniLM-L6-v2")
        The locked text tower: the offline name or a local sentence-encoder folder.
    image_sets : tuple[str, ...] (default: ("fashion-mnist", "digits"))
        The offline sets trained on (`spry.vision.images.IMAGE_SETS`).
    held_out_classes : tuple[str, ...] (default: ())
        Class names (of any set) the build never sees: their training images
        are left out and their captions are not among the texts, so their
        zero-shot accuracy (`ZeroShotReport.unseen_accuracy`) measures names the
        image tower never trained on, and a near-OOD split of them is unseen.
    max_train_per_set : int (default: 0)
        Train images drawn from each set (a seeded sample); 0 = all.
    max_test_per_set : int (default: 0)
        Held-out images scored per set; 0 = all.
    min_share : float (default: 0.2)
        Each set's least share of an epoch's images: a smaller set (the 1,437
        train digits beside 60k Fashion-MNIST images) is repeated up to it, so
        the tower does not learn one domain only.
    epochs : int (default: 3)
        Passes over the (rebalanced) training images.
    batch_size : int (default: 256)
    lr : float (default: 1e-3)
        AdamW's peak rate, after a linear warm-up, with cosine decay to zero.
    warmup_fraction : float (default: 0.05)
        Share of the steps spent warming up.
    weight_decay : float (default: 0.05)
    max_shift : int (default: 2)
        Random translation of each training image, up to this many pixels
        (images are small and the digits few: the one augmentation here).
    seed : int (default: 0)
    """

    vit: ViTConfig = field(default_factory=ViTConfig)
    text_model: str = "all-MiniLM-L6-v2"
    image_sets: tuple[str, ...] = ("fashion-mnist", "digits")
    held_out_classes: tuple[str, ...] = ()
    max_train_per_set: int = 0
    max_test_per_set: int = 0
    min_share: float = 0.2
    epochs: int = 3
    batch_size: int = 256
    lr: float = 1e-3
    warmup_fraction: float = 0.05
    weight_decay: float = 0.05
    max_shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.vit, dict):  # from a stored config.json
            object.__setattr__(self, "vit", ViTConfig(**self.vit))
        object.__setattr__(self, "image_sets", tuple(self.image_sets))
        object.__setattr__(self, "held_out_classes", tuple(self.held_out_classes))
        unknown = [s for s in self.image_sets if s not in TEMPLATES]
        if not self.image_sets or unknown:
            raise ValueError(
                f"`image_sets` should name some of {sorted(TEMPLATES)}, "
                f"got {self.image_sets}"
            )
        known = {n for s in self.image_sets if s in CLASS_NAMES for n in CLASS_NAMES[s]}
        strange = [n for n in self.held_out_classes if n not in known]
        if strange:
            raise ValueError(
                f"`held_out_classes` should name classes of {self.image_sets}, "
                f"got {strange}"
            )
        for s in self.image_sets:
            if s in CLASS_NAMES and set(CLASS_NAMES[s]) <= set(self.held_out_classes):
                raise ValueError(f"`held_out_classes` holds out all of {s}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` should be at least 1, got {self}")
        for name in ("max_train_per_set", "max_test_per_set", "max_shift"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` should be at least 0, got {self}")
        if not 0.0 <= self.min_share * len(self.image_sets) <= 1.0:
            raise ValueError(
                f"`min_share` {self.min_share} times {len(self.image_sets)} sets "
                "should be between 0 and 1"
            )
        if self.lr <= 0 or not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(
                f"`lr` should be positive and `warmup_fraction` in [0, 1), got {self}"
            )

    def key(self) -> str:
        """The cache entry's name: a digest of the config and the format."""
        text = json.dumps(
            {"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True, default=list
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ZeroShotReport:
    """How the built model reads held-out images, and what it cost.

    Parameters
    ----------
    accuracy : dict[str, float]
        Per image set: zero-shot accuracy on its held-out images, each image
        classified among its set's class names through the text tower (the
        class's templates' embeddings averaged, CLIP's prompt ensemble).
    test_images : dict[str, int]
        Held-out images scored per set.
    build_seconds : float
        Wall time of the training (and scoring) that made this model; the
        stored value when loaded from the cache.
    load_seconds : float
        This call's wall time.
    trained_parameters, total_parameters : int
        Image tower plus temperature; and with the locked text tower.
    size_bytes : int
        The cache entry's files on disk (the text tower ships in its package).
    cached : bool
        Whether this call loaded the model instead of training it.
    losses : list[float]
        The training loss, averaged over each tenth of the steps (at most 10).
    path : str
        The cache entry.
    unseen_accuracy : dict[str, float] (default: {})
        Per set with `held_out_classes`: zero-shot accuracy on the held-out
        images of those classes, among all the set's class names.
    """

    accuracy: dict[str, float]
    test_images: dict[str, int]
    build_seconds: float
    load_seconds: float
    trained_parameters: int
    total_parameters: int
    size_bytes: int
    cached: bool
    losses: list[float]
    path: str
    unseen_accuracy: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [
            f"offline CLIP at {self.path} "
            f"({'loaded from the cache' if self.cached else 'built'})"
        ]
        for name, acc in self.accuracy.items():
            out.append(
                f"  zero-shot accuracy {name}: {acc:.2%} "
                f"({self.test_images[name]} held-out images)"
            )
        for name, acc in self.unseen_accuracy.items():
            out.append(f"  zero-shot accuracy {name}, never-trained classes: {acc:.2%}")
        out += [
            f"  build time: {self.build_seconds:.1f} s "
            f"(this call {self.load_seconds:.1f} s)",
            f"  parameters: {self.trained_parameters:,} trained, "
            f"{self.total_parameters:,} with the locked text tower",
            f"  size on disk: {self.size_bytes / 2**20:.2f} MiB",
            "  loss by tenth of training: "
            + ", ".join(f"{loss:.3f}" for loss in self.losses),
        ]
        return out


def _subsample(n: int, limit: int, generator: torch.Generator) -> Tensor:
    if limit <= 0 or limit >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:limit].sort().values


def _epoch_order(
    sizes: Sequence[int], min_share: float, generator: torch.Generator
) -> Tensor:
    """Indices into the concatenated sets, small sets repeated up to `min_share`."""
    total = sum(sizes)
    parts, offset = [], 0
    for size in sizes:
        repeats = max(1, math.ceil(min_share * total / max(1, size)))
        parts.append((torch.arange(size) + offset).repeat(repeats))
        offset += size
    order = torch.cat(parts)
    return order[torch.randperm(len(order), generator=generator)]


def _shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Each image moved by up to `max_shift` pixels (padded with the background)."""
    if max_shift == 0:
        return images
    background = images.amin()  # normalized black
    side = images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4, value=float(background))
    dx, dy = torch.randint(0, 2 * max_shift + 1, (2, len(images)), generator=generator)
    rows = (dy[:, None] + torch.arange(side)[None]).view(-1, 1, side, 1)
    cols = (dx[:, None] + torch.arange(side)[None]).view(-1, 1, 1, side)
    batch = torch.arange(len(images)).view(-1, 1, 1, 1)
    channels = torch.arange(images.shape[1]).view(1, -1, 1, 1)
    return padded[batch, channels, rows, cols]  # (B, C, side, side)


class TrainingData(NamedTuple):
    """Per set: the train images drawn, their global class ids, the captions."""

    indices: list[Tensor]  # into the set's train images
    images: list[Tensor]
    labels: list[Tensor]  # global ids over the trained classes of all sets
    captions: list[Tensor]  # (trained classes, templates, D) per set


def training_data(
    model: VisionLanguageModel,
    config: OfflineClipConfig,
    sets: Sequence[ImageSet],
    generator: torch.Generator,
) -> TrainingData:
    """What the build trains on: `held_out_classes` left out, images and texts."""
    data = TrainingData([], [], [], [])
    held = set(config.held_out_classes)
    class_offset = 0
    for image_set in sets:
        kept = [c for c, n in enumerate(image_set.class_names) if n not in held]
        remap = torch.full((len(image_set.class_names),), -1, dtype=torch.long)
        remap[kept] = torch.arange(len(kept)) + class_offset
        seen = torch.nonzero(remap[image_set.train_labels] >= 0).flatten()
        keep = seen[_subsample(len(seen), config.max_train_per_set, generator)]
        data.indices.append(keep)
        data.images.append(image_set.train_images[keep])
        data.labels.append(remap[image_set.train_labels[keep]])
        data.captions.append(class_text_features(model, image_set.name)[kept])
        class_offset += len(kept)
    return data


def _train(
    model: OfflineClip,
    config: OfflineClipConfig,
    sets: Sequence[ImageSet],
    progress: bool,
) -> list[float]:
    """Train the image tower and temperature; the per-step losses."""
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(config.seed)
    data = training_data(model, config, sets, generator)
    images, labels, text_per_set = data.images, data.labels, data.captions
    sizes = [len(x) for x in images]
    all_images, all_labels = torch.cat(images), torch.cat(labels)
    # (classes of all sets, templates, D): the locked tower's captions, once
    templates = min(t.shape[1] for t in text_per_set)
    caption_features = torch.cat([t[:, :templates] for t in text_per_set])

    steps_per_epoch = math.ceil(
        len(_epoch_order(sizes, config.min_share, torch.Generator()))
        / config.batch_size
    )
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(config.warmup_fraction * total_steps))
    # CLIP's practice: no decay on gains, biases and the temperature (0-/1-D)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.ndim >= 2]},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / warmup
            if step < warmup
            else 0.5
            * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))
        ),
    )
    model.vision.train()
    losses: list[float] = []
    bar = tqdm(
        total=total_steps, desc="offline CLIP", unit="step", disable=not progress
    )
    for _ in range(config.epochs):
        order = _epoch_order(sizes, config.min_share, generator)
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            batch = _shift(all_images[index], config.max_shift, generator)
            pick = torch.randint(
                0, templates, (len(caption_features),), generator=generator
            )
            texts = caption_features[torch.arange(len(caption_features)), pick]
            loss = contrastive_loss(
                model.image_features(batch), texts, all_labels[index], model.logit_scale
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(
                loss=f"{losses[-1]:.3f}", scale=f"{model.logit_scale.item():.1f}"
            )
    bar.close()
    model.vision.eval()
    return losses


def _tenths(losses: Sequence[float]) -> list[float]:
    chunks = min(10, len(losses))
    if chunks == 0:
        return []
    size = len(losses) / chunks
    return [
        sum(losses[int(i * size) : int((i + 1) * size)])
        / max(1, int((i + 1) * size) - int(i * size))
        for i in range(chunks)
    ]


def _score(
    model: OfflineClip, config: OfflineClipConfig, sets: Sequence[ImageSet]
) -> tuple[dict[str, float], dict[str, int], dict[str, float]]:
    """Zero-shot accuracy per set; and on its never-trained classes, if any."""
    generator = torch.Generator().manual_seed(config.seed + 1)
    accuracy, counts, unseen = {}, {}, {}
    held = set(config.held_out_classes)
    for image_set in sets:
        keep = _subsample(
            len(image_set.test_images), config.max_test_per_set, generator
        )
        images, labels = image_set.test_images[keep], image_set.test_labels[keep]
        classifier = zero_shot_classifier(class_text_features(model, image_set.name))
        accuracy[image_set.name] = zero_shot_accuracy(model, images, labels, classifier)
        counts[image_set.name] = len(keep)
        held_ids = [c for c, n in enumerate(image_set.class_names) if n in held]
        if held_ids:
            mask = torch.isin(labels, torch.tensor(held_ids))
            unseen[image_set.name] = zero_shot_accuracy(
                model, images[mask], labels[mask], classifier
            )
    return accuracy, counts, unseen


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _parameters(model: OfflineClip) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trained, total


def cache_dir(config: OfflineClipConfig) -> Path:
    """Where the build with `config` is (or will be) stored."""
    return cache_root() / "offline-clip" / config.key()


def build_offline_clip(
    config: OfflineClipConfig | None = None, *, progress: bool = True
) -> tuple[OfflineClip, ZeroShotReport]:
    """The offline CLIP for `config`: from the cache, or trained and cached.

    Returns the model in eval mode (its text tower locked, `requires_grad`
    False everywhere but the image tower and temperature) and its report.
    """
    config = config or OfflineClipConfig()
    started = time.perf_counter()
    folder = cache_dir(config)
    torch.manual_seed(config.seed)  # the image tower's initial weights
    model = build_offline_clip_model(config.vit, config.text_model)
    trained, total = _parameters(model)
    if (folder / WEIGHTS_FILE).is_file() and (folder / REPORT_FILE).is_file():
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        # strict=False only for the text tower, which ships in its own package
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("text.") for k in missing):
            raise RuntimeError(
                f"{folder / WEIGHTS_FILE} does not fit this model: missing "
                f"{[k for k in missing if not k.startswith('text.')]}, "
                f"unexpected {unexpected}; delete the folder to rebuild"
            )
        model.eval()
        stored = json.loads((folder / REPORT_FILE).read_text())
        report = ZeroShotReport(
            **{
                **stored,
                "load_seconds": time.perf_counter() - started,
                "cached": True,
                "size_bytes": _size(folder),
                "path": str(folder),
            }
        )
        return model, report

    sets = [load_image_set(name) for name in config.image_sets]
    losses = _train(model, config, sets, progress)
    accuracy, counts, unseen = _score(model, config, sets)
    # Written to a temporary folder, then renamed: a build killed halfway leaves
    # no entry that a later call would take for a finished one.
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    torch.save(model.trainable_state(), partial / WEIGHTS_FILE)
    (partial / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2))
    elapsed = time.perf_counter() - started
    stored = {
        "accuracy": accuracy,
        "test_images": counts,
        "build_seconds": elapsed,
        "load_seconds": elapsed,
        "trained_parameters": trained,
        "total_parameters": total,
        "size_bytes": 0,
        "cached": False,
        "losses": _tenths(losses),
        "path": str(folder),
        "unseen_accuracy": unseen,
    }
    (partial / REPORT_FILE).write_text(json.dumps(stored, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    model.eval()
    return model, ZeroShotReport(**{**stored, "size_bytes": _size(folder)})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m spry.vision.build",
        description="Build the offline CLIP (or load it from $SPRY_CACHE) and "
        "print its zero-shot report.",
    )
    defaults = OfflineClipConfig()
    for f in fields(OfflineClipConfig):
        if f.name in ("vit", "image_sets", "held_out_classes"):
            continue
        value = getattr(defaults, f.name)
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(value), default=value
        )
    parser.add_argument("--image-sets", default=",".join(defaults.image_sets))
    parser.add_argument(
        "--held-out-classes",
        default="",
        help="comma-separated class names never trained on (e.g. 'shirt,bag')",
    )
    for f in fields(ViTConfig):
        value = getattr(defaults.vit, f.name)
        parser.add_argument(
            "--vit-" + f.name.replace("_", "-"), type=type(value), default=value
        )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def config_from_args(args: argparse.Namespace) -> OfflineClipConfig:
    values: dict[str, Any] = {
        f.name: getattr(args, f.name)
        for f in fields(OfflineClipConfig)
        if f.name not in ("vit", "image_sets", "held_out_classes")
    }
    vit = ViTConfig(
        **{f.name: getattr(args, "vit_" + f.name) for f in fields(ViTConfig)}
    )
    sets = tuple(s.strip() for s in args.image_sets.split(",") if s.strip())
    held = tuple(s.strip() for s in args.held_out_classes.split(",") if s.strip())
    return OfflineClipConfig(vit=vit, image_sets=sets, held_out_classes=held, **values)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"error: {error}")
        return 2
    _, report = build_offline_clip(config, progress=not args.no_progress)
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
