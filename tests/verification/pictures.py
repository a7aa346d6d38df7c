"""Read back what a VeriX mask PNG shows: the colour of each image cell.

The PNG is a matplotlib figure: a title, then the image drawn in an axes framed by
black spines. The frame is found from the picture itself (the first and last rows
and columns that are dark across the frame), and each cell is read at its centre,
so a test can compare what was drawn with the explanation it should show.
"""

from __future__ import annotations

import matplotlib.image
import numpy as np

DARK = 0.35  # a channel maximum below this is a spine (or a black pixel)


def _frame(dark: np.ndarray) -> tuple[int, int]:
    counts = dark.sum(axis=1)
    full = np.flatnonzero(counts >= 0.95 * counts.max())
    return int(full[0]), int(full[-1])


def read(path) -> np.ndarray:
    """The PNG's (rows, columns, 3) RGB in [0, 1]."""
    return matplotlib.image.imread(path)[..., :3]


def cells(rgb: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W, 3): the colour at the centre of each cell of the one image in `rgb`."""
    dark = rgb.max(axis=-1) < DARK
    top, bottom = _frame(dark)
    left, right = _frame(dark[top : bottom + 1].T)
    rows = top + (np.arange(shape[0]) + 0.5) * (bottom - top) / shape[0]
    cols = left + (np.arange(shape[1]) + 0.5) * (right - left) / shape[1]
    return rgb[np.round(rows).astype(int)][:, np.round(cols).astype(int)]


def highlighted(colours: np.ndarray) -> np.ndarray:
    """Cells drawn in the explanation's red (grey cells have R = G = B)."""
    return colours[..., 0] - colours[..., 1] > 0.3


def panels(rgb: np.ndarray, rows: int, columns: int) -> list[np.ndarray]:
    """A grid figure cut into its `rows` x `columns` panels, row by row."""
    height, width = rgb.shape[0] // rows, rgb.shape[1] // columns
    return [
        rgb[r * height : (r + 1) * height, c * width : (c + 1) * width]
        for r in range(rows)
        for c in range(columns)
    ]
