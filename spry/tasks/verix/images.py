"""Small image classification sets that ship offline, as `datasets.Dataset`s.

- `digits`: scikit-learn's bundled 1,797 8x8 handwritten digits (values 0-16,
  scaled to [0, 1]).
- `fashion-mnist`: 70k 28x28 images from Debian's `dataset-fashion-mnist` package
  (`apt-get install dataset-fashion-mnist`), read from its IDX gzip files.

Columns: `pixels` (H*W floats in [0, 1]) and `label` (ClassLabel), so the text
partitioners (flwr-datasets, by `label`) split them the same way. The train/test
split is fixed and independent of the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import datasets
import numpy as np

from ...data.sources import SPLIT_SEED, DataError, majority_rate
from ...vision.images import FASHION_MNIST_DIR, read_idx

FASHION_LABELS = (
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip


@dataclass(frozen=True)
class ImageDataset:
    """Train and fixed test split of an image set, and the images' shape."""

    train: datasets.Dataset
    test: datasets.Dataset
    shape: tuple[int, int]
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def majority_rate(self) -> float:
        return majority_rate(self.test["label"])


def _as_dataset(pixels: np.ndarray, labels: np.ndarray, names: tuple[str, ...]):
    features = datasets.Features(
        {
            "pixels": datasets.Sequence(datasets.Value("float32")),
            "label": datasets.ClassLabel(names=list(names)),
        }
    )
    return datasets.Dataset.from_dict(
        {"pixels": pixels.reshape(len(pixels), -1), "label": labels.tolist()},
        features=features,
    )


@lru_cache(maxsize=2)
def load_image_dataset(name: str, test_fraction: float = 0.2) -> ImageDataset:
    """`digits` or `fashion-mnist`, split once into train and a fixed test set."""
    if name == "digits":
        from sklearn.datasets import load_digits

        bunch = load_digits()
        full = _as_dataset(
            (bunch.images / 16.0).astype(np.float32),
            bunch.target,
            tuple(str(d) for d in range(10)),
        )
        split = full.train_test_split(
            test_size=test_fraction, seed=SPLIT_SEED, stratify_by_column="label"
        )
        return ImageDataset(
            split["train"], split["test"], (8, 8), full.features["label"].names
        )
    if name == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"fashion-mnist reads {FASHION_MNIST_DIR}: apt-get install "
                "--no-install-recommends dataset-fashion-mnist"
            )

        def part(prefix: str) -> datasets.Dataset:
            images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
            labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
            return _as_dataset(
                (images / 255.0).astype(np.float32), labels, FASHION_LABELS
            )

        return ImageDataset(part("train"), part("t10k"), (28, 28), FASHION_LABELS)
    raise DataError(f"unknown image dataset {name!r}; offline: digits, fashion-mnist")
