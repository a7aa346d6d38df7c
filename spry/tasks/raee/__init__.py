"""RAEE: early exit guided by each client's private retrieval database.

Huang et al., "RAEE: A Robust Retrieval-Augmented Early Exit(ing) Framework for
Efficient Inference", 2024. Paper: arxiv.org/abs/2405.15198

Everything only RAEE uses lives here: the task (`task`), the retrieval database
(`retrieval`, faiss) and the per-layer views of the encoder (`layers`). Its
packages are the `raee` extra.
"""

from ..extras import require

require("raee", ("faiss",))  # faiss-cpu, the `raee` extra (pyproject.toml)

from .task import RaeeTask  # noqa: E402  (after the check: one line, no traceback)

__all__ = ["RaeeTask"]
