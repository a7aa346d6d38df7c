"""Retrieval-augmented early exiting: similar examples' exit layers say where to stop.

RAEE: A Robust Retrieval-Augmented Early Exit(ing) Framework for Efficient Inference
[Huang et al., 2024; ICLR 2026]. Paper: arxiv.org/abs/2405.15198

RAEE is training-free: no exit classifier is learned. Instead a small database maps
the embeddings of labelled examples to the earliest layer whose exit predicted them
correctly (`earliest_correct_layer`). At inference a query's k nearest neighbours
vote for a layer, each neighbour weighted by the inverse of its distance, and the
backbone stops at the most probable layer.

This module holds the retrieval half (NumPy + faiss, no torch), so a client can build,
query and keep its database on disk cheaply. The backbone half (pooled hidden states
after each layer, and a forward pass that stops at a given layer) is
`layers`, beside it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

__all__ = [
    "DISTANCE_DELTA",
    "RetrievalDatabase",
    "earliest_correct_layer",
]

# Added to every neighbour's distance before inverting it, so that a query equal to a
# stored embedding (distance 0) gets a large finite weight (1e6) rather than inf/nan.
DISTANCE_DELTA = 1e-6

_INDEX_FILE = "index.faiss"
_LABELS_FILE = "exit_layers.npy"
_META_FILE = "meta.json"


def earliest_correct_layer(correct: np.ndarray) -> np.ndarray:
    """The earliest exit layer (1..L) that predicts each example correctly.

    Parameters
    ----------
    correct : np.ndarray
        (N, L) bool; ``correct[n, l - 1]`` is whether the exit after layer ``l``
        predicts example ``n`` correctly.

    Returns
    -------
    np.ndarray
        (N,) int64 layer numbers in 1..L. A row with no correct exit gets ``L``, the
        full model: no earlier exit does better on it, so exiting early would only
        save compute by committing to an exit already known to be wrong, and the
        database should not teach neighbours to do that.

    Examples
    --------
    >>> earliest_correct_layer(np.array([[0, 1, 1], [1, 0, 0], [0, 0, 0]], bool))
    array([2, 1, 3])
    """
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.shape[1] == 0:
        raise ValueError(
            f"earliest_correct_layer(correct): expected an (N, L) array with L >= 1, "
            f"got shape {correct.shape}"
        )
    correct = correct.astype(bool, copy=False)
    num_layers = correct.shape[1]
    first = correct.argmax(axis=1) + 1  # (N,) argmax gives the first True
    return np.where(correct.any(axis=1), first, num_layers).astype(np.int64)


class RetrievalDatabase:
    """Exact nearest-neighbour lookup from embeddings to exit layers.

    The index is faiss ``IndexFlatL2`` (exact, brute force): a client's database
    holds at most a few thousand examples, where exact search takes well under a
    millisecond per query and an approximate index would only add recall error.

    Parameters
    ----------
    embeddings : np.ndarray
        (N, D) float32 (other float dtypes are converted), N >= 1, all finite.
    exit_layers : np.ndarray
        (N,) int, each in 1..num_layers: the exit layer of each example.
    num_layers : int
        The backbone's number of layers L; the distribution has L columns.
    """

    def __init__(
        self, embeddings: np.ndarray, exit_layers: np.ndarray, *, num_layers: int
    ) -> None:
        embeddings = _as_matrix(embeddings, "embeddings")
        if embeddings.shape[0] == 0:
            raise ValueError(
                "RetrievalDatabase: the database is empty (0 embeddings); it needs at "
                "least one example to retrieve"
            )
        index = faiss.IndexFlatL2(embeddings.shape[1])
        index.add(embeddings)
        self._index = index
        self.num_layers = _check_num_layers(num_layers)
        self.exit_layers = _check_labels(exit_layers, embeddings.shape[0], num_layers)

    @property
    def dim(self) -> int:
        """The embedding dimension D."""
        return int(self._index.d)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __repr__(self) -> str:
        return (
            f"RetrievalDatabase(size={len(self)}, dim={self.dim}, "
            f"num_layers={self.num_layers})"
        )

    def distribution(self, queries: np.ndarray, k: int = 12) -> np.ndarray:
        """Inverse-distance-weighted distribution over exit layers, per query.

        With ``d_i`` the Euclidean distance to the i-th of the k nearest neighbours
        and ``w_i = 1 / (d_i + DISTANCE_DELTA)``::

            P(l) = sum_i w_i [exit_i == l] / sum_i w_i

        Parameters
        ----------
        queries : np.ndarray
            (M, D) float.
        k : int (default: 12)
            Neighbours per query; more than the database holds uses all of it.

        Returns
        -------
        np.ndarray
            (M, num_layers) float64; each row sums to 1, column ``l - 1`` is layer
            ``l``.
        """
        queries = _as_matrix(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(
                f"RetrievalDatabase.distribution(queries): expected queries of "
                f"dimension {self.dim}, got shape {queries.shape}"
            )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"`k` should be a positive integer, got {k!r}")
        num_queries, num_layers = queries.shape[0], self.num_layers
        if num_queries == 0:
            return np.zeros((0, num_layers))
        k = min(int(k), len(self))  # faiss pads missing neighbours with -1
        squared, ids = self._index.search(queries, k)  # (M, k) each
        # faiss returns squared L2; its BLAS path (many queries) can round an exact
        # match to a tiny negative, hence the clamp before the square root.
        distances = np.sqrt(np.maximum(squared.astype(np.float64), 0.0))
        weights = 1.0 / (distances + DISTANCE_DELTA)  # (M, k)
        layers = self.exit_layers[ids]  # (M, k) in 1..L
        # Scatter-add every weight into its (query, layer) cell in one bincount.
        cells = np.arange(num_queries)[:, None] * num_layers + (layers - 1)
        mass = np.bincount(
            cells.ravel(), weights=weights.ravel(), minlength=num_queries * num_layers
        ).reshape(num_queries, num_layers)
        return mass / weights.sum(axis=1, keepdims=True)

    def predict(self, queries: np.ndarray, k: int = 12) -> np.ndarray:
        """The most probable exit layer (1..num_layers) for each query.

        Ties go to the earliest layer. Exact ties need equal total weight on two
        layers, which with continuous distances means the neighbourhood gives no
        evidence either way; then the cheaper exit is the better bet, and it is
        also what ``argmax`` does (first maximum), so the rule is plain to check.

        Returns
        -------
        np.ndarray
            (M,) int64.
        """
        return self.distribution(queries, k).argmax(axis=1).astype(np.int64) + 1

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the database to the folder ``path`` (created if missing).

        Three files: ``index.faiss`` (faiss.write_index), ``exit_layers.npy`` and
        ``meta.json`` (``num_layers``, which the labels alone do not determine).
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._index, str(folder / _INDEX_FILE))
        np.save(folder / _LABELS_FILE, self.exit_layers)
        meta: dict[str, Any] = {"num_layers": self.num_layers}
        (folder / _META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RetrievalDatabase:
        """Read a database written by `save`, checking it as the constructor does."""
        folder = Path(path)
        missing = [
            name
            for name in (_INDEX_FILE, _LABELS_FILE, _META_FILE)
            if not (folder / name).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"RetrievalDatabase.load({str(folder)!r}): missing {missing}"
            )
        index = faiss.read_index(str(folder / _INDEX_FILE))
        if not isinstance(index, faiss.IndexFlatL2):
            raise ValueError(
                f"RetrievalDatabase.load: expected an IndexFlatL2, got "
                f"{type(index).__name__}"
            )
        meta = json.loads((folder / _META_FILE).read_text())
        num_layers = _check_num_layers(meta.get("num_layers"))
        labels = np.load(folder / _LABELS_FILE, allow_pickle=False)
        if index.ntotal == 0:
            raise ValueError(f"RetrievalDatabase.load: {str(folder)!r} is empty")
        db = cls.__new__(cls)
        db._index = index
        db.num_layers = num_layers
        db.exit_layers = _check_labels(labels, int(index.ntotal), num_layers)
        return db


def _as_matrix(array: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous float32 (rows, D) copy or view, as faiss requires."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] == 0:
        raise ValueError(
            f"`{name}` should be a 2-D (rows, dim) array with dim >= 1, got shape "
            f"{array.shape}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"`{name}` should be real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` has non-finite values (nan or inf)")
    return array


def _check_num_layers(num_layers: Any) -> int:
    if (
        isinstance(num_layers, bool)
        or not isinstance(num_layers, int | np.integer)
        or num_layers < 1
    ):
        raise ValueError(
            f"`num_layers` should be a positive integer, got {num_layers!r}"
        )
    return int(num_layers)


def _check_labels(labels: np.ndarray, size: int, num_layers: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (size,):
        raise ValueError(
            f"`exit_layers` should have shape ({size},), one per embedding, got "
            f"{labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"`exit_layers` should be integers, got dtype {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 1 or high > num_layers:
        raise ValueError(
            f"`exit_layers` should lie in 1..{num_layers}, got values in {low}..{high}"
        )
    return labels.astype(np.int64)
