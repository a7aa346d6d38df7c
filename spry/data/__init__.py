"""Text classification data: offline sources, a fixed test split, client partitions."""

import datasets as _datasets

from .partitions import client_split, make_partitioner
from .sources import (
    OFFLINE_DATASETS,
    DataError,
    TextDataset,
    load_for,
    load_text_dataset,
)

_datasets.disable_progress_bars()  # per-client progress bars would flood the log

__all__ = [
    "OFFLINE_DATASETS",
    "DataError",
    "TextDataset",
    "client_split",
    "load_for",
    "load_text_dataset",
    "make_partitioner",
]
