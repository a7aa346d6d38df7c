"""Pictures of VeriX explanations: the image in grey, its explanation in colour.

The figures are built on `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot: no GUI backend is touched and no global figure state is kept, so
this is safe in worker processes and tests.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from .explanation import Explanation

MAX_GRID = 64  # beyond this the panels are too small to read


def overlay(
    image: np.ndarray, explanation: Explanation, color: str = "red"
) -> np.ndarray:
    """RGB (H, W, 3) in [0, 1]: grey pixels, the explanation's pixels in `color`.

    Raises
    ------
    ValueError
        If the image is not (H, W) or its size is not the explanation's.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {image.shape}")
    n = len(explanation.features) + len(explanation.freed)
    if image.size != n:
        raise ValueError(
            f"image has {image.size} pixels but the explanation covers {n} features"
        )
    grey = np.clip(image, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3)
    mask = explanation.mask(image.shape)  # (H, W)
    # Blend rather than paint over, so the pixel's own intensity stays visible.
    rgb[mask] = 0.35 * rgb[mask] + 0.65 * np.asarray(to_rgb(color))
    return rgb


def _title(explanation: Explanation) -> str:
    n = len(explanation.features) + len(explanation.freed)
    return (
        f"label {explanation.label}: {explanation.size}/{n} px, "
        f"eps={explanation.epsilon:g}"
    )


def _draw(axes: Axes, image: np.ndarray, explanation: Explanation, title: str) -> None:
    axes.imshow(overlay(image, explanation), interpolation="nearest", vmin=0, vmax=1)
    axes.set_title(title, fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])


def save_mask_png(
    image: np.ndarray,
    explanation: Explanation,
    path: str | os.PathLike[str],
    title: str | None = None,
) -> str:
    """Write one image with its explanation overlaid as a PNG; return the path.

    Parameters
    ----------
    image : np.ndarray
        (H, W) grey levels in [0, 1], in the order of the flat feature indices.
    explanation : Explanation
        Its VeriX explanation.
    path : str | os.PathLike
        Where to write; parent folders are created.
    title : str | None (default: None)
        Defaults to the label, the explanation's size and epsilon.
    """
    figure = Figure(figsize=(3, 3), dpi=100)
    FigureCanvasAgg(figure)
    _draw(figure.add_subplot(), image, explanation, title or _title(explanation))
    return _save(figure, path)


def save_mask_grid(
    images: Sequence[np.ndarray],
    explanations: Sequence[Explanation],
    path: str | os.PathLike[str],
    titles: Sequence[str] | None = None,
) -> str:
    """Write up to `MAX_GRID` images with their explanations in one PNG grid."""
    if len(images) != len(explanations):
        raise ValueError(f"{len(images)} images but {len(explanations)} explanations")
    if not 0 < len(images) <= MAX_GRID:
        raise ValueError(f"need 1 to {MAX_GRID} images, got {len(images)}")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    columns = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    figure = Figure(figsize=(2.2 * columns, 2.3 * rows), dpi=100)
    FigureCanvasAgg(figure)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index < len(images):
            title = titles[index] if titles is not None else None
            _draw(
                axes,
                images[index],
                explanations[index],
                title or _title(explanations[index]),
            )
        else:
            axes.set_axis_off()
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Figure, path: str | os.PathLike[str]) -> str:
    target = os.fspath(path)
    folder = os.path.dirname(target)
    if folder:
        os.makedirs(folder, exist_ok=True)
    figure.savefig(target, format="png")
    return target
