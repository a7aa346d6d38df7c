"""The offline image sets a vision-language model here is trained and scored on.

Two sets ship without a network, so the image tower sees two domains:
- `fashion-mnist`: 70k 28x28 grey clothing images from Debian's
  `dataset-fashion-mnist` package, read from its IDX gzip files (60k train, the
  10k `t10k` file held out);
- `digits`: scikit-learn's bundled 1,797 8x8 handwritten digits, upsampled to
  28x28 (bilinear, `torch.nn.functional.interpolate`) so both sets share one
  image size; a fixed stratified 20% is held out.

Pixels are scaled to [0, 1] and then normalized with one mean and standard
deviation (`PIXEL_MEAN`, `PIXEL_STD`, Fashion-MNIST's), as CLIP normalizes with
its training set's statistics. Images are `(N, 1, 28, 28)` float32 tensors.

The class names are what the text tower reads, so they are words a sentence
encoder knows ("ankle boot", "seven"), not file labels ("ankle-boot", "7").
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SIZE = 28
# Fashion-MNIST's pixel mean and standard deviation (of [0, 1] pixels, train set).
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
HELD_OUT_FRACTION = 0.2  # digits: the fixed stratified share held out
SPLIT_SEED = 0  # the digits split, independent of any run's seed

FASHION_CLASSES = (
    "t-shirt", "trousers", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
DIGIT_CLASSES = (
    "zero", "one", "two", "three", "four",
    "five", "six", "seven", "eight", "nine",
)  # fmt: skip
IMAGE_SETS = ("fashion-mnist", "digits")


class ImageSetError(ValueError):
    """An image set is unknown or its files are missing; the message says why."""


@dataclass(frozen=True)
class ImageSet:
    """One image set's train and held-out images, normalized, with its class names.

    Parameters
    ----------
    name : str
        `fashion-mnist` or `digits`.
    train_images, test_images : Tensor
        `(N, 1, 28, 28)` float32, normalized with `PIXEL_MEAN`/`PIXEL_STD`.
    train_labels, test_labels : Tensor
        `(N,)` int64 class indices into `class_names`.
    class_names : tuple[str, ...]
        What the text tower reads for each class.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims, big-endian sizes, uint8 data)."""
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    dims = data[3]
    shape = tuple(
        int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)
    )
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def normalize(pixels: Tensor) -> Tensor:
    """`(N, H, W)` pixels in [0, 1] -> `(N, 1, 28, 28)` normalized float32."""
    images = pixels.to(torch.float32).unsqueeze(1)  # (N, 1, H, W)
    if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        images = F.interpolate(
            images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
        )
    return (images - PIXEL_MEAN) / PIXEL_STD


def _fashion_mnist() -> ImageSet:
    if not FASHION_MNIST_DIR.is_dir():
        raise ImageSetError(
            f"fashion-mnist reads {FASHION_MNIST_DIR}, which is missing: "
            "apt-get install --no-install-recommends dataset-fashion-mnist"
        )

    def part(prefix: str) -> tuple[Tensor, Tensor]:
        images = read_idx(FASHION_MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_MNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        pixels = torch.from_numpy(images.astype(np.float32) / 255.0)
        return normalize(pixels), torch.from_numpy(labels.astype(np.int64))

    train_images, train_labels = part("train")
    test_images, test_labels = part("t10k")
    return ImageSet(
        "fashion-mnist",
        train_images,
        train_labels,
        test_images,
        test_labels,
        FASHION_CLASSES,
    )


def _digits() -> ImageSet:
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise ImageSetError(
            "digits ship inside scikit-learn, which is not installed: "
            'pip install -e ".[clipscope]" (or any extra with scikit-learn)'
        ) from None

    bunch = load_digits()
    pixels = (bunch.images / 16.0).astype(np.float32)  # values 0..16
    train_x, test_x, train_y, test_y = train_test_split(
        pixels,
        bunch.target,
        test_size=HELD_OUT_FRACTION,
        random_state=SPLIT_SEED,
        stratify=bunch.target,
    )
    return ImageSet(
        "digits",
        normalize(torch.from_numpy(train_x)),
        torch.from_numpy(train_y.astype(np.int64)),
        normalize(torch.from_numpy(test_x)),
        torch.from_numpy(test_y.astype(np.int64)),
        DIGIT_CLASSES,
    )


@lru_cache(maxsize=len(IMAGE_SETS))
def load_image_set(name: str) -> ImageSet:
    """The named offline image set (`IMAGE_SETS`), read once per process."""
    if name == "fashion-mnist":
        return _fashion_mnist()
    if name == "digits":
        return _digits()
    raise ImageSetError(f"unknown image set {name!r}; offline: {', '.join(IMAGE_SETS)}")
